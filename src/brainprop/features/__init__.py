"""The features stage: selected layers, activations and gradients of every layer, their CKA.

Light to import (no torch): the file formats are in `files`, the layer similarity in `cka`;
extraction itself (`extract`, `models`, `layers`, `pooling`, `projection`, `losses`,
`learning_rules`) needs torch and timm.
"""
