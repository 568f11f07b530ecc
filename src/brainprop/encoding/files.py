"""The encoding stage's files: a dataset's folds, per-target scores, summaries and joint-model summaries.

Paths are templates relative to the run folder `results/{run}` (`brainprop.run.Run.path`).
Per-target scores (`SCORES`, columns `SCORE_COLUMNS`) carry their identity (dataset, model,
signal, layer_index, subject) and the fit's counts as Parquet metadata; summaries (`SUMMARY`) are
rows of the contract's encoding table; joint summaries (`JOINT`) have `JOINT_SUMMARY_COLUMNS`
beside the identity columns. Every other stage reads these files through the functions here.
"""

from __future__ import annotations

import os

import pandas as pd

from ..io import CorruptFileError, read_provenance, read_table, write_table

__all__ = [
    "FOLDS",
    "FOLD_COLUMNS",
    "JOINT",
    "JOINT_SUMMARY_COLUMNS",
    "SCORES",
    "SCORE_COLUMNS",
    "SUMMARY",
    "SUMMARY_COLUMNS",
    "load_folds",
    "load_joint_summary",
    "load_score_counts",
    "load_score_identity",
    "load_summary",
    "load_target_scores",
    "save_folds",
    "save_joint_summary",
    "save_summary",
    "save_target_scores",
]

FOLDS = "encoding/{dataset}/folds.parquet"
SCORES = "encoding/{dataset}/{model}/{signal}/{layer}/{subject}.targets.parquet"
SUMMARY = "encoding/{dataset}/{model}/{signal}/{layer}/{subject}.summary.parquet"
JOINT = "joint/{dataset}/{model}/{layer}/{subject}.summary.parquet"

FOLD_COLUMNS = ("image_id", "group", "fold")
# Per-target table: one row per target of the subject, NaN scores for excluded targets. p and q are
# the target null's (image permutations of the held-out predictions; Benjamini–Hochberg over the
# fit's targets), NaN where encoding.target_null.permutations is 0.
SCORE_COLUMNS = ("target", "r", "r2", "alpha", "r_normalized", "excluded", "p", "q")
# Summary table: the results contract's encoding table minus identity columns.
SUMMARY_COLUMNS = (
    "modality", "atlas", "roi", "hemi", "roi_distance_mm", "time",
    "r", "r_normalized", "noise_ceiling", "n_targets", "n_excluded", "n_significant",
)  # fmt: skip
# n_significant: the group's used targets with q <= encoding.target_null.fdr (float: NaN without the null).
# Joint summary (beside the identity columns dataset, model, layer, layer_index, depth, subject).
# `reference`: what the gradients were fitted against (stack | same_layer); the `act` columns are its.
JOINT_SUMMARY_COLUMNS = (
    "reference", "modality", "atlas", "roi", "hemi", "roi_distance_mm", "time",
    "r2_joint", "r2_act", "r2_grad", "unique_act", "unique_grad", "n_targets", "n_excluded",
)  # fmt: skip
_IDENTITY = ("dataset", "model", "signal", "layer_index", "subject")


def _checked(path: str | os.PathLike, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    table = read_table(path)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise CorruptFileError(f"{path}: {what} lacks columns {missing}; expected {list(columns)}", path)
    return table


def save_folds(path: str | os.PathLike, folds: pd.DataFrame) -> None:
    """Write a dataset's outer folds (image_id, group, fold: the test fold of each image)."""
    write_table(path, folds)


def load_folds(path: str | os.PathLike) -> pd.DataFrame:
    """Read a dataset's outer folds written by the folds rule."""
    return _checked(path, FOLD_COLUMNS, "folds table")


def save_target_scores(path: str | os.PathLike, scores: pd.DataFrame, identity: dict, counts: dict) -> None:
    """Write one fit's per-target scores with its identity and counts as metadata."""
    missing = [k for k in _IDENTITY if k not in identity]
    if missing:
        raise ValueError(f"per-target scores need identity keys {list(_IDENTITY)}; missing {missing}")
    write_table(path, scores, {"identity": {k: identity[k] for k in _IDENTITY}, "counts": counts})


def load_target_scores(path: str | os.PathLike) -> pd.DataFrame:
    """Read a per-target score table written by the encode rule (columns `SCORE_COLUMNS`)."""
    return _checked(path, SCORE_COLUMNS, "per-target scores")


def load_score_identity(path: str | os.PathLike) -> dict:
    """The dataset, model, signal, layer_index and subject of a per-target score file."""
    meta = read_provenance(path)
    identity = meta.get("identity")
    if not isinstance(identity, dict) or any(k not in identity for k in _IDENTITY):
        raise CorruptFileError(f"{path}: per-target scores lack their identity metadata {list(_IDENTITY)}", path)
    return identity


def load_score_counts(path: str | os.PathLike) -> dict:
    """The counts of a per-target score file's fit (n_images, n_folds, n_features, excluded targets, …)."""
    counts = read_provenance(path).get("counts")
    if not isinstance(counts, dict) or "n_images" not in counts:
        raise CorruptFileError(
            f"{path}: per-target scores lack their counts metadata (n_images, …). "
            "Delete the file and rerun snakemake to recompute it."
        )
    return counts


def save_summary(path: str | os.PathLike, summary: pd.DataFrame) -> None:
    """Write one fit's summary rows (the contract's encoding columns)."""
    write_table(path, summary)


def load_summary(path: str | os.PathLike) -> pd.DataFrame:
    """Read one fit's summary rows written by the encode rule."""
    return _checked(path, (*SUMMARY_COLUMNS, "signal", "layer_index", "depth", "subject"), "encoding summary")


def save_joint_summary(path: str | os.PathLike, summary: pd.DataFrame, counts: dict) -> None:
    """Write one joint fit's summary rows with its counts as metadata."""
    write_table(path, summary, {"counts": counts})


def load_joint_summary(path: str | os.PathLike) -> pd.DataFrame:
    """Read one joint fit's summary rows written by the joint rule."""
    return _checked(path, (*JOINT_SUMMARY_COLUMNS, "dataset", "model", "layer_index", "subject"), "joint summary")
