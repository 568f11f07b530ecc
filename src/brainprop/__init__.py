"""brainprop: do backpropagated gradients of vision models map onto the brain's hierarchy?"""

__version__ = "0.1.0"
CONTRACT_VERSION = "1"
