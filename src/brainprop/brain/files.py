"""The brain stage's files: subject folders, the dataset check report, plant features and the planted truth.

Paths are templates relative to the run folder `results/{run}` (`brainprop.run.Run.path`).
A subject folder holds `Y.npy` (n_images, n_targets) float32, `targets.parquet` (one row per
column of Y: columns `TARGET_COLUMNS`) and `samples.parquet` (image_id and group of each row of
Y, plus n_trials for real data; its metadata `y_sha256` is the SHA-256 of Y.npy, which `load_y`
checks once per job). The plant folder is an extract folder (`brainprop.features.files`)
of the simulation's source model under the plant pooling. Every other stage reads these files
through the functions here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import (
    CorruptFileError,
    check_sha256,
    file_sha256,
    load_array,
    read_provenance,
    read_table,
    save_array,
    write_table,
)

__all__ = [
    "CHECK",
    "PLANT",
    "SAMPLES",
    "TARGETS",
    "TARGET_COLUMNS",
    "TRUTH",
    "TRUTH_COLUMNS",
    "Y",
    "load_check",
    "load_samples",
    "load_subject",
    "load_targets",
    "load_truth",
    "load_y",
    "save_check",
    "save_subject",
    "save_truth",
]

CHECK = "brain/{dataset}/check.parquet"
PLANT = "brain/{dataset}/plant"
Y = "brain/{dataset}/{subject}/Y.npy"
TARGETS = "brain/{dataset}/{subject}/targets.parquet"
SAMPLES = "brain/{dataset}/{subject}/samples.parquet"
TRUTH = "truth/{dataset}.parquet"

# One row per column of Y.
TARGET_COLUMNS = (
    "target", "modality", "atlas", "roi", "hemi", "x", "y", "z", "roi_distance_mm", "sensor", "time", "noise_ceiling",
)  # fmt: skip
TRUTH_COLUMNS = ("dataset", "subject", "source_model", "kind", "roi", "signal", "depth", "latency_s")


def _require(path: str | os.PathLike, table: pd.DataFrame, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise CorruptFileError(f"{path}: {what} lacks columns {missing}; expected {list(columns)}", path)
    return table


def save_subject(paths, Y: np.ndarray, targets: pd.DataFrame, samples: pd.DataFrame) -> None:
    """Write one subject's folder; `paths` has Y, targets and samples (the brain rule's outputs)."""
    if Y.shape != (len(samples), len(targets)):
        raise ValueError(f"Y has shape {Y.shape}; expected ({len(samples)} samples, {len(targets)} targets)")
    save_array(paths.Y, np.ascontiguousarray(Y, dtype=np.float32))
    write_table(paths.targets, targets)
    write_table(paths.samples, samples, metadata={"y_sha256": file_sha256(paths.Y)})


def load_y(path: str | os.PathLike, samples: str | os.PathLike | None = None) -> np.ndarray:
    """A subject's (n_images, n_targets) responses, memory-mapped; checked against the SHA-256 that the
    brain rule recorded in the subject's `samples` table (once per file per job) when it is given."""
    if samples is not None:
        check_sha256(path, read_provenance(samples).get("y_sha256"), path, "brain rule")
    return load_array(path, mmap=True)


def load_targets(path: str | os.PathLike) -> pd.DataFrame:
    """A subject's target table (columns `TARGET_COLUMNS`, one row per column of Y)."""
    return _require(path, read_table(path), TARGET_COLUMNS, "target table")


def load_samples(path: str | os.PathLike) -> pd.DataFrame:
    """A subject's samples: the image id (and group) of each row of Y."""
    return _require(path, read_table(path), ("image_id",), "samples table")


def load_subject(folder: str | Path) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Read a subject folder: (Y, target table, samples)."""
    folder = Path(folder)
    Y = load_y(folder / "Y.npy", folder / "samples.parquet")
    return Y, load_targets(folder / "targets.parquet"), load_samples(folder / "samples.parquet")


def save_check(path: str | os.PathLike, report: pd.DataFrame) -> None:
    """Write a dataset check report (subject, item, path, status, detail)."""
    write_table(path, report)


def load_check(path: str | os.PathLike) -> pd.DataFrame:
    """Read a dataset check report; the check rule writes one only when every file was found."""
    report = _require(path, read_table(path), ("subject", "item", "path", "status"), "check report")
    bad = report[report["status"] != "found"]
    if len(bad):
        raise CorruptFileError(f"{path}: the data check lists {len(bad)} problems; rerun the check rule")
    return report


def save_truth(path: str | os.PathLike, truth: pd.DataFrame) -> None:
    """Write a simulated dataset's planted truth (columns `TRUTH_COLUMNS`)."""
    write_table(path, truth)


def load_truth(path: str | os.PathLike) -> pd.DataFrame:
    """Read a planted truth table (METHOD.md §7)."""
    return _require(path, read_table(path), TRUTH_COLUMNS, "truth table")
