"""The statistics stage's files: tests and per-subject statistics, comparisons, sensitivity, calibration, run tables.

Paths are templates relative to the run folder `results/{run}` (`brainprop.run.Run.path`).
`TESTS` holds one dataset × model's rows of the contract's tests table (plus `base_model`,
`variant`); `SUBJECT_STATS` the per-subject statistics behind them (`SUBJECT_STAT_COLUMNS`);
`COMPARISONS` and `SENSITIVITY` rows of the contract tables of those names; `TABLE` the run's
contract tables (`brainprop.contract.TABLES`). Every other stage reads them through the
functions here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd

from ..contract import TABLES
from ..io import CorruptFileError, read_table, write_table

__all__ = [
    "CALIBRATION",
    "COMPARISONS",
    "SENSITIVITY",
    "SUBJECT_STATS",
    "SUBJECT_STAT_COLUMNS",
    "TABLE",
    "TESTS",
    "load_calibration",
    "load_comparisons",
    "load_run_table",
    "load_sensitivity",
    "load_subject_stats",
    "load_tests",
    "save_calibration",
    "save_comparisons",
    "save_run_table",
    "save_sensitivity",
    "save_subject_stats",
    "save_tests",
]

TESTS = "group/{dataset}/{model}/tests.parquet"
SUBJECT_STATS = "group/{dataset}/{model}/subjects.parquet"
COMPARISONS = "compare/{dataset}/comparisons.parquet"
SENSITIVITY = "sensitivity/{dataset}/{model}.parquet"
CALIBRATION = "calibration/{dataset}/calibration.parquet"
TABLE = "tables/{name}.parquet"

SUBJECT_STAT_COLUMNS = (
    "dataset", "modality", "model", "signal", "test", "level", "measure", "alternative", "family", "subject",
    "statistic", "p_perm",
)  # fmt: skip


def _checked(path: str | os.PathLike, columns: Sequence[str], what: str) -> pd.DataFrame:
    table = read_table(path)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise CorruptFileError(f"{path}: {what} lacks columns {missing}; expected {list(columns)}", path)
    return table


def save_tests(path: str | os.PathLike, tests: pd.DataFrame) -> None:
    """Write one dataset × model's test rows."""
    write_table(path, tests)


def load_tests(path: str | os.PathLike) -> pd.DataFrame:
    """Read one dataset × model's test rows written by the group rule."""
    return _checked(path, list(TABLES["tests"]), "tests table")


def save_subject_stats(path: str | os.PathLike, stats: pd.DataFrame) -> None:
    """Write one dataset × model's per-subject statistics."""
    write_table(path, stats)


def load_subject_stats(path: str | os.PathLike) -> pd.DataFrame:
    """Read one dataset × model's per-subject statistics written by the group rule."""
    return _checked(path, SUBJECT_STAT_COLUMNS, "per-subject statistics")


def save_comparisons(path: str | os.PathLike, table: pd.DataFrame) -> None:
    """Write one dataset's model comparisons."""
    write_table(path, table)


def load_comparisons(path: str | os.PathLike) -> pd.DataFrame:
    """Read one dataset's model comparisons written by the compare rule."""
    return _checked(path, list(TABLES["comparisons"]), "comparisons table")


def save_sensitivity(path: str | os.PathLike, table: pd.DataFrame) -> None:
    """Write one dataset × model's sensitivity rows."""
    write_table(path, table)


def load_sensitivity(path: str | os.PathLike) -> pd.DataFrame:
    """Read one dataset × model's sensitivity rows written by the sensitivity rule."""
    return _checked(path, list(TABLES["sensitivity"]), "sensitivity table")


def save_calibration(path: str | os.PathLike, table: pd.DataFrame) -> None:
    """Write a simulated dataset's calibration table."""
    write_table(path, table)


def load_calibration(path: str | os.PathLike) -> pd.DataFrame:
    """Read a calibration table written by the calibration rule."""
    return read_table(path)


def save_run_table(path: str | os.PathLike, table: pd.DataFrame, provenance: dict) -> None:
    """Write one of the run's contract tables with its provenance metadata."""
    write_table(path, table, provenance)


def load_run_table(path: str | os.PathLike, name: str) -> pd.DataFrame:
    """Read the run's contract table `name` (columns of `brainprop.contract.TABLES[name]`)."""
    if name not in TABLES:
        raise ValueError(f"name={name!r}; expected one of {sorted(TABLES)}")
    return _checked(path, list(TABLES[name]), f"{name} table")
