"""The hierarchy stage's files: one subject's encoding rows, best layers, T_max, scores and per-target depths.

Paths are templates relative to the run folder `results/{run}` (`brainprop.run.Run.path`).
`encoding`, `best_layers`, `tmax` and `hierarchy` hold the rows of the contract tables of the
same names (`brainprop.contract.TABLES`) for one dataset × model × subject; `target_depths`
holds one row per signal × fMRI target (`TARGET_DEPTH_COLUMNS`). Every other stage reads them
through the functions here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..contract import TABLES
from ..io import CorruptFileError, read_table, write_table

__all__ = [
    "BEST_LAYERS",
    "ENCODING",
    "HIERARCHY",
    "SUBJECT_TABLES",
    "TARGET_DEPTHS",
    "TARGET_DEPTH_COLUMNS",
    "TARGET_DEPTH_TYPES",
    "TMAX",
    "load_subject_table",
    "load_subject_tables",
    "load_target_depths",
    "save_subject_table",
]

ENCODING = "hierarchy/{dataset}/{model}/{subject}/encoding.parquet"
BEST_LAYERS = "hierarchy/{dataset}/{model}/{subject}/best_layers.parquet"
TMAX = "hierarchy/{dataset}/{model}/{subject}/tmax.parquet"
HIERARCHY = "hierarchy/{dataset}/{model}/{subject}/hierarchy.parquet"
TARGET_DEPTHS = "hierarchy/{dataset}/{model}/{subject}/target_depths.parquet"

# Per-subject tables that are rows of a contract table of the same name.
SUBJECT_TABLES = ("encoding", "best_layers", "tmax", "hierarchy")
# Columns (and dtypes) of the per-target depth table: one row per signal × fMRI target.
# atlas, roi, hemi and roi_distance_mm come from the brain stage's target table; p and q are the
# map threshold's at the best layer (brainprop.hierarchy.scores.target_thresholds), passes is q <= stats.map_fdr.
TARGET_DEPTH_TYPES = {
    "dataset": str, "model": str, "subject": str, "signal": str, "target": np.int64,
    "best_layer_index": np.int64, "best_depth": np.float64, "best_r": np.float64,
    "weighted_depth": np.float64, "n_layers": np.int64, "excluded": bool,
    "atlas": str, "roi": str, "hemi": str, "roi_distance_mm": np.float64,
    "p": np.float64, "q": np.float64, "passes": bool,
}  # fmt: skip
TARGET_DEPTH_COLUMNS = tuple(TARGET_DEPTH_TYPES)


def _checked(path: str | os.PathLike, table: pd.DataFrame, columns: Sequence[str], what: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise CorruptFileError(f"{path}: {what} lacks columns {missing}; expected {list(columns)}", path)
    return table


def save_subject_table(path: str | os.PathLike, table: pd.DataFrame) -> None:
    """Write one subject's rows of a contract table (encoding, best_layers, tmax, hierarchy) or its depths."""
    write_table(path, table)


def load_subject_table(path: str | os.PathLike, kind: str) -> pd.DataFrame:
    """Read one subject's rows of the contract table `kind` (one of `SUBJECT_TABLES`)."""
    if kind not in SUBJECT_TABLES:
        raise ValueError(f"kind={kind!r}; expected one of {list(SUBJECT_TABLES)}")
    return _checked(path, read_table(path), list(TABLES[kind]), f"{kind} table")


def load_subject_tables(paths: Sequence[str | os.PathLike], kind: str) -> pd.DataFrame:
    """Rows of the contract table `kind` from several subjects' files, concatenated in order."""
    return pd.concat([load_subject_table(p, kind) for p in paths], ignore_index=True)


def load_target_depths(path: str | os.PathLike) -> pd.DataFrame:
    """Read a per-target depth table written by the hierarchy rule (columns `TARGET_DEPTH_COLUMNS`)."""
    return _checked(path, read_table(path), TARGET_DEPTH_COLUMNS, "per-target depth table")
