"""The brain stage: subject folders (targets aligned to the manifest), the dataset readers and the simulation."""
