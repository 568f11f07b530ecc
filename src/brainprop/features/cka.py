"""Layer × layer similarity of a model's features (linear CKA, METHOD.md §6 identifiability)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .files import load_features, load_layers

__all__ = ["cka_table", "linear_cka"]


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    """Linear CKA between two (n_images, d) feature matrices (Kornblith et al. 2019), in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a - a.mean(0)
    b = b - b.mean(0)
    if a.shape[1] + b.shape[1] > 2 * a.shape[0]:
        # Wide features: the same quantities from (n_images, n_images) Gram matrices.
        ka, kb = a @ a.T, b @ b.T
        cross, denom = float((ka * kb).sum()), float(np.linalg.norm(ka) * np.linalg.norm(kb))
    else:
        cross = float(np.linalg.norm(a.T @ b, "fro") ** 2)
        denom = float(np.linalg.norm(a.T @ a, "fro") * np.linalg.norm(b.T @ b, "fro"))
    return cross / denom if denom > 0 else float("nan")


def cka_table(features_dir: str | Path, layers_path: str | Path, signals: Sequence[str]) -> pd.DataFrame:
    """Layer x layer linear CKA of each signal: columns signal, layer_a, layer_b, cka."""
    layers = load_layers(layers_path)
    names = list(layers["layer"])
    rows = []
    for signal in signals:
        mats = [np.asarray(load_features(features_dir, signal, int(k))) for k in layers["layer_index"]]
        # A constant layer (e.g. zero gradients) has no CKA, not even with itself.
        cka = np.diag([1.0 if np.ptp(m, axis=0).any() else np.nan for m in mats])
        for i in range(len(mats)):
            for j in range(i + 1, len(mats)):
                cka[i, j] = cka[j, i] = linear_cka(mats[i], mats[j])
        rows += [(signal, names[i], names[j], float(cka[i, j])) for i in range(len(mats)) for j in range(len(mats))]
    return pd.DataFrame(rows, columns=["signal", "layer_a", "layer_b", "cka"])
