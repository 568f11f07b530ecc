"""The features stage's files: layer tables, extract folders of feature matrices, CKA tables.

An extract folder holds `{signal}/{layer_index:02d}.npy` float32 (or float16) matrices of shape
(n_images, dim) in manifest order, and `samples.parquet` with the image ids of the rows.
Every other stage reads them through the functions here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..io import load_array, read_table


def feature_path(out_dir: str | Path, signal: str, layer_index: int) -> Path:
    """Path of one layer's feature matrix inside an extract output folder."""
    return Path(out_dir) / signal / f"{layer_index:02d}.npy"


def load_features(out_dir: str | Path, signal: str, layer_index: int, mmap: bool = True) -> np.ndarray:
    """Read one layer's (n_images, dim) features written by the extract rule."""
    array = load_array(feature_path(out_dir, signal, layer_index), mmap=mmap)
    if array.ndim != 2:
        raise ValueError(f"{feature_path(out_dir, signal, layer_index)}: expected (n_images, dim), got {array.shape}")
    return array


def load_samples(out_dir: str | Path) -> pd.DataFrame:
    """Image ids (and groups) in the row order of the feature matrices."""
    return read_table(Path(out_dir) / "samples.parquet")


def load_layers(path: str | Path) -> pd.DataFrame:
    """Read a `layers.parquet` written by the layers rule."""
    return read_table(path)
