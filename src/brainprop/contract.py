"""The results contract: the columns and types of every run table, and their validation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["OPTIONAL_TABLES", "PROVENANCE_KEYS", "TABLES", "ContractError", "validate_results", "validate_table"]

# kind of each column: "str", "int", "float"; extra columns are allowed.
TABLES: dict[str, dict[str, str]] = {
    "encoding": {
        "dataset": "str",
        "modality": "str",
        "model": "str",
        "timm_name": "str",
        "signal": "str",
        "layer": "str",
        "layer_index": "int",
        "depth": "float",
        "subject": "str",
        "atlas": "str",
        "roi": "str",
        "hemi": "str",
        "roi_distance_mm": "float",
        "time": "float",
        "r": "float",
        "r_normalized": "float",
        "noise_ceiling": "float",
        "n_targets": "int",
        "n_excluded": "int",
    },
    "best_layers": {
        "dataset": "str",
        "model": "str",
        "signal": "str",
        "subject": "str",
        "atlas": "str",
        "roi": "str",
        "hemi": "str",
        "best_layer_index": "int",
        "best_depth": "float",
        "best_r": "float",
    },
    "tmax": {
        "dataset": "str",
        "model": "str",
        "signal": "str",
        "subject": "str",
        "layer_index": "int",
        "depth": "float",
        "t_max_s": "float",
        "peak_r": "float",
    },
    "hierarchy": {
        "dataset": "str",
        "modality": "str",
        "model": "str",
        "signal": "str",
        "subject": "str",
        "score": "str",
        "atlas": "str",
        "value": "float",
        "n_used": "int",
        "n_excluded": "int",
    },
    "tests": {
        "dataset": "str",
        "modality": "str",
        "model": "str",
        "signal": "str",
        "test": "str",
        "level": "str",
        "reference": "str",
        "method": "str",
        "alternative": "str",
        "statistic": "float",
        "effect": "float",
        "ci_low": "float",
        "ci_high": "float",
        "p": "float",
        "p_min": "float",
        "p_fdr": "float",
        "family": "str",
        "n_subjects": "int",
        "n_significant_subjects": "int",
    },
    "cka": {
        "model": "str",
        "imageset": "str",
        "signal": "str",
        "layer_a": "str",
        "layer_b": "str",
        "cka": "float",
    },
    "comparisons": {
        "dataset": "str",
        "modality": "str",
        "comparison": "str",
        "measure": "str",
        "model_a": "str",
        "signal_a": "str",
        "model_b": "str",
        "signal_b": "str",
        "statistic": "float",
        "effect": "float",
        "ci_low": "float",
        "ci_high": "float",
        "p": "float",
        "p_min": "float",
        "p_fdr": "float",
        "family": "str",
        "n_subjects": "int",
        "rank": "int",
    },
    "sensitivity": {
        "dataset": "str",
        "modality": "str",
        "model": "str",
        "signal": "str",
        "test": "str",
        "level": "str",
        "choice": "str",
        "value": "str",
        "method": "str",
        "alternative": "str",
        "statistic": "float",
        "effect": "float",
        "ci_low": "float",
        "ci_high": "float",
        "p": "float",
        "p_min": "float",
        "p_fdr": "float",
        "family": "str",
        "n_subjects": "int",
        "n_significant_subjects": "int",
    },
}
# Tables a run writes when its stages ran; checked when present, not required.
OPTIONAL_TABLES = {"comparisons", "sensitivity"}

# Allowed values of categorical columns.
VALUES: dict[tuple[str, str], set[str]] = {
    ("encoding", "modality"): {"fmri", "meg"},
    ("encoding", "hemi"): {"lh", "rh", "both", ""},
    ("hierarchy", "score"): {"spatial", "temporal"},
    ("hierarchy", "unit"): {"roi", "target", "layer", "time"},  # an extra column (docs/results.md)
    ("tests", "test"): {"T1", "T2", "S1a", "S1b", "E"},
    ("tests", "alternative"): {"less", "greater", "two-sided"},
    # what an E row compares the signal with (METHOD.md §4); "" for T1, T2, S1a, S1b
    ("tests", "reference"): {"", "stack", "same_layer"},
    ("comparisons", "comparison"): {"act_vs_grad", "models", "rank"},
    ("sensitivity", "test"): {"T1", "T2", "S1a", "S1b", "E"},
    ("sensitivity", "choice"): {
        "default",
        "tmax_threshold",
        "exclude",
        "atlas",
        "pooling",
        "loss",
        "grad_normalize",
        "nuisance",
        "reference",
    },
    ("sensitivity", "reference"): {"", "stack", "same_layer"},
}

PROVENANCE_KEYS = ("contract_version", "config_hash", "git_commit", "packages", "weights", "seeds")


class ContractError(ValueError):
    """A results table does not follow the contract."""


def _kind_ok(series: pd.Series, kind: str) -> bool:
    if kind == "str":
        return pd.api.types.is_string_dtype(series) or pd.api.types.is_object_dtype(series)
    if kind == "int":
        return pd.api.types.is_integer_dtype(series)
    return pd.api.types.is_float_dtype(series)


def validate_table(name: str, table: pd.DataFrame) -> list[str]:
    """Return the contract violations of one table (empty when it conforms)."""
    problems = []
    for column, kind in TABLES[name].items():
        if column not in table.columns:
            problems.append(f"{name}: missing column '{column}' ({kind})")
        elif not _kind_ok(table[column], kind):
            problems.append(f"{name}: column '{column}' has dtype {table[column].dtype}, expected {kind}")
        elif kind == "str" and table[column].isna().any():
            problems.append(f"{name}: column '{column}' has missing values; use '' for not applicable")
    for (tname, column), allowed in VALUES.items():
        if tname == name and column in table.columns:
            bad = set(table[column].dropna().unique()) - allowed
            if bad:
                problems.append(f"{name}: column '{column}' has {sorted(bad)}, allowed {sorted(allowed)}")
    if name in ("encoding", "tmax") and "depth" in table.columns and len(table):
        d = table["depth"]
        if ((d < 0) | (d > 1)).any():
            problems.append(f"{name}: depth outside [0, 1]")
    return problems


def validate_results(tables_dir: str | Path) -> list[str]:
    """Check every contract table in `tables_dir` (columns, types, values, provenance, contract version).

    Every problem is one line of the returned list (empty when all conforms); an unreadable table
    is a problem, not an exception.
    """
    from . import CONTRACT_VERSION
    from .io import CorruptFileError, read_provenance, read_table

    tables_dir = Path(tables_dir)
    if not tables_dir.is_dir():
        return [f"{tables_dir}: not a folder; expected results/{{run}} or its tables/ folder"]
    rerun = "rebuild the tables with this brainprop by running the run's snakemake command with `--forcerun tables`"
    problems = []
    for name in TABLES:
        path = tables_dir / f"{name}.parquet"
        if not path.exists():
            if name not in OPTIONAL_TABLES:
                problems.append(f"{path}: missing")
            continue
        try:
            table, meta = read_table(path), read_provenance(path)
        except CorruptFileError as err:
            problems.append(f"{path}: unreadable ({err.problem}); {rerun}")
            continue
        problems += [f"{path}: {p}" for p in validate_table(name, table)]
        missing = [k for k in PROVENANCE_KEYS if k not in meta]
        if missing:
            problems.append(f"{path}: provenance metadata lacks {missing}")
        version = meta.get("contract_version")
        if version is not None and str(version) != CONTRACT_VERSION:
            problems.append(
                f"{path}: written under results contract version {version!r}, this brainprop reads version "
                f"{CONTRACT_VERSION!r} (docs/results.md); {rerun}"
            )
    return problems
