"""The features stage's files: layer tables, extract folders of feature matrices, CKA tables.

Paths are templates relative to the run folder `results/{run}` (`brainprop.run.Run.path`).
An extract folder holds `{signal}/{layer_index:02d}.npy` float32 (or float16) matrices of shape
(n_images, dim) in manifest order, `output.npy` (n_images, n_out): the model output the loss
reads (logits or embedding; the last band of the forward stack, docs/method.md "Joint models"),
`nuisance.parquet`: per image its id, the model's `confidence` (max softmax of the loss's
scores), their `entropy` (nats) and `grad_norm_{layer_index:02d}`, the L2 norm of each layer's
unpooled backprop gradient (NaN where the extraction computed no loss or no `grad`), and
`samples.parquet` with the image ids of the rows and, in its metadata, the SHA-256 of every
matrix (`sha256`, written last). Every other stage reads these files through the functions here;
`load_features` checks a matrix against its recorded SHA-256 the first time a process opens it
(once per file per job), so a file changed or damaged after the extract rule wrote it stops its
reader with a message naming the folder to recompute.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import CorruptFileError, check_sha256, load_array, read_provenance, read_table, write_table

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


def _recorded_sha256(out_dir: str | Path, path: Path) -> str | None:
    """The SHA-256 of one matrix as the extract rule recorded it in the folder's samples.parquet (None: none)."""
    samples = Path(out_dir) / _SAMPLES
    if not samples.is_file():
        raise CorruptFileError(
            f"{samples}: missing, so the extract folder {out_dir} is incomplete; expected the samples table the "
            "extract rule writes last",
            out_dir,
        )
    sums = read_provenance(samples, output=out_dir).get("sha256")
    return None if sums is None else sums.get(path.relative_to(out_dir).as_posix(), "(none recorded)")


def load_features(out_dir: str | Path, signal: str, layer_index: int, mmap: bool = True) -> np.ndarray:
    """Read one layer's (n_images, dim) features written by the extract rule, checked against its SHA-256."""
    path = feature_path(out_dir, signal, layer_index)
    if path.is_file():
        check_sha256(path, _recorded_sha256(out_dir, path), out_dir, "extract rule")
    else:
        raise CorruptFileError(
            f"{path}: missing from the extract folder {out_dir}; expected every layer's matrix the extract rule wrote",
            out_dir,
        )
    array = load_array(path, mmap=mmap, output=out_dir)
    if array.ndim != 2:
        raise CorruptFileError(f"{path}: expected a matrix (n_images, dim), got shape {array.shape}", out_dir)
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


def save_samples(
    out_dir: str | Path, samples: pd.DataFrame, metadata: dict | None = None, sha256: dict[str, str] | None = None
) -> None:
    """Write the image ids (and groups) of the feature rows of an extract folder, with its matrices' SHA-256.

    `sha256` maps each matrix's path relative to the folder (`act/00.npy`) to its digest; write
    it after the matrices, as the folder's last file.
    """
    meta = dict(metadata or {})
    if sha256 is not None:
        meta["sha256"] = dict(sorted(sha256.items()))
    write_table(Path(out_dir) / _SAMPLES, samples, metadata=meta)


def load_samples(out_dir: str | Path) -> pd.DataFrame:
    """Image ids (and groups) in the row order of the feature matrices."""
    return read_table(Path(out_dir) / _SAMPLES, output=out_dir)


def save_layers(path: str | Path, layers: pd.DataFrame, metadata: dict | None = None) -> None:
    """Write a layer table (columns `LAYER_COLUMNS`)."""
    write_table(path, layers, metadata)


def load_layers(path: str | Path) -> pd.DataFrame:
    """Read a `layers.parquet` written by the layers rule."""
    table = read_table(path)
    missing = [c for c in LAYER_COLUMNS if c not in table.columns]
    if missing:
        raise CorruptFileError(f"{path}: layer table lacks columns {missing}; expected {list(LAYER_COLUMNS)}", path)
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
