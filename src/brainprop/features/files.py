"""The features stage's files: layer tables, extract folders of feature matrices, CKA tables.

Paths are templates relative to the run folder `results/{run}` (`brainprop.run.Run.path`).
An extract folder holds `{signal}/{layer_index:02d}.npy` float32 (or float16) matrices of shape
(n_images, dim) in manifest order, `output.npy` (n_images, n_out): the model output the loss
reads (logits or embedding; the last band of the forward stack, docs/method.md "Joint models"),
`nuisance.parquet`: per image its id, the model's `confidence` (max softmax of the loss's
scores), their `entropy` (nats) and `grad_norm_{layer_index:02d}`, the L2 norm of each layer's
unpooled backprop gradient (NaN where the extraction computed no loss or no `grad`), and
`samples.parquet` with the image ids of the rows. Every other stage reads these files through
the functions here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import CorruptFileError, load_array, read_table, write_table

__all__ = [
    "CKA",
    "EXTRACT",
    "LAYERS",
    "LAYER_COLUMNS",
    "NUISANCE_FIXED",
    "PREFETCH",
    "feature_path",
    "layer_row",
    "load_cka",
    "load_features",
    "load_layers",
    "load_nuisance",
    "load_output",
    "load_samples",
    "nuisance_columns",
    "output_path",
    "save_cka",
    "save_layers",
    "save_nuisance",
    "save_prefetch",
    "save_samples",
]

LAYERS = "features/{model}/layers.parquet"
EXTRACT = "features/{model}/{imageset}/extract"
CKA = "features/{model}/{imageset}/cka.parquet"
PREFETCH = "prefetch.parquet"

# Columns of a layer table: one row per selected layer, in depth order.
LAYER_COLUMNS = ("layer", "layer_index", "ordinal", "depth", "dim")
_SAMPLES = "samples.parquet"
_OUTPUT = "output.npy"
_NUISANCE = "nuisance.parquet"
# The nuisance table's per-image columns before the per-layer gradient norms (`nuisance_columns`).
NUISANCE_FIXED = ("confidence", "entropy")


def feature_path(out_dir: str | Path, signal: str, layer_index: int) -> Path:
    """Path of one layer's feature matrix inside an extract output folder."""
    return Path(out_dir) / signal / f"{layer_index:02d}.npy"


def load_features(out_dir: str | Path, signal: str, layer_index: int, mmap: bool = True) -> np.ndarray:
    """Read one layer's (n_images, dim) features written by the extract rule."""
    array = load_array(feature_path(out_dir, signal, layer_index), mmap=mmap)
    if array.ndim != 2:
        raise ValueError(f"{feature_path(out_dir, signal, layer_index)}: expected (n_images, dim), got {array.shape}")
    return array


def output_path(out_dir: str | Path) -> Path:
    """Path of the model-output matrix inside an extract output folder."""
    return Path(out_dir) / _OUTPUT


def load_output(out_dir: str | Path, mmap: bool = True) -> np.ndarray:
    """Read the (n_images, n_out) model output (logits or embedding, what the loss reads) of an extract folder."""
    array = load_array(output_path(out_dir), mmap=mmap)
    if array.ndim != 2:
        raise CorruptFileError(f"{output_path(out_dir)}: expected (n_images, n_out), got {array.shape}; rerun extract")
    return array


def nuisance_columns(n_layers: int) -> list[str]:
    """Value columns of a nuisance table: confidence, entropy, then grad_norm_00 … of each layer."""
    return [*NUISANCE_FIXED, *(f"grad_norm_{k:02d}" for k in range(n_layers))]


def save_nuisance(out_dir: str | Path, image_ids: Sequence[str], values: np.ndarray) -> None:
    """Write the per-image nuisance table of an extract folder from (n_images, 2 + n_layers) values."""
    values = np.asarray(values, dtype=np.float64)
    table = pd.DataFrame(values, columns=nuisance_columns(values.shape[1] - len(NUISANCE_FIXED)))
    table.insert(0, "image_id", [str(i) for i in image_ids])
    write_table(Path(out_dir) / _NUISANCE, table)


def load_nuisance(out_dir: str | Path) -> pd.DataFrame:
    """The per-image nuisance table of an extract folder (rows in the feature matrices' order)."""
    path = Path(out_dir) / _NUISANCE
    table = read_table(path)
    missing = [c for c in ("image_id", *NUISANCE_FIXED) if c not in table.columns]
    if missing:
        raise CorruptFileError(f"{path}: nuisance table lacks columns {missing}. Delete it and rerun snakemake.")
    return table


def save_samples(out_dir: str | Path, samples: pd.DataFrame, metadata: dict | None = None) -> None:
    """Write the image ids (and groups) of the feature rows of an extract folder."""
    write_table(Path(out_dir) / _SAMPLES, samples, metadata=metadata)


def load_samples(out_dir: str | Path) -> pd.DataFrame:
    """Image ids (and groups) in the row order of the feature matrices."""
    return read_table(Path(out_dir) / _SAMPLES)


def save_layers(path: str | Path, layers: pd.DataFrame, metadata: dict | None = None) -> None:
    """Write a layer table (columns `LAYER_COLUMNS`)."""
    write_table(path, layers, metadata)


def load_layers(path: str | Path) -> pd.DataFrame:
    """Read a `layers.parquet` written by the layers rule."""
    table = read_table(path)
    missing = [c for c in LAYER_COLUMNS if c not in table.columns]
    if missing:
        raise CorruptFileError(
            f"{path}: layer table lacks columns {missing}; expected {list(LAYER_COLUMNS)}. "
            "Delete it and rerun snakemake."
        )
    return table


def layer_row(layers: pd.DataFrame, layer_index: int) -> pd.Series:
    """The row of one selected layer (its module name and depth) by its index."""
    rows = layers.set_index("layer_index")
    if layer_index not in rows.index:
        raise ValueError(f"layer index {layer_index} is not among the selected layers {rows.index.tolist()}")
    return rows.loc[layer_index]


def save_prefetch(path: str | Path, table: pd.DataFrame) -> None:
    """Write the prefetch rule's table: where each pretrained model's weights were found or fetched."""
    write_table(path, table)


def save_cka(path: str | Path, table: pd.DataFrame) -> None:
    """Write a CKA table (columns model, imageset, signal, layer_a, layer_b, cka)."""
    write_table(path, table)


def load_cka(path: str | Path) -> pd.DataFrame:
    """Read a CKA table written by the cka rule."""
    return read_table(path)
