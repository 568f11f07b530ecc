"""The run's tables: concatenation of the stage outputs with provenance metadata."""

from __future__ import annotations

import importlib.metadata
import logging
import subprocess
from pathlib import Path

import pandas as pd

from .. import CONTRACT_VERSION
from ..config import config_hash
from ..contract import validate_table

__all__ = ["provenance", "run_table"]

log = logging.getLogger(__name__)

_PACKAGES = (
    "brainprop",
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
    "pyarrow",
    "torch",
    "timm",
    "mne",
    "nilearn",
    "snakemake",
)


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def provenance(config: dict, models: dict, seed: int) -> dict:
    """Provenance metadata every run table carries (ARCHITECTURE.md, results contract).

    Beside the contract's keys: `alpha` (stats.alpha) and `deviations` (where the config departs
    from the reference study, `brainprop.deviations.run_deviations`), which `brainprop summary` prints.
    """
    from ..deviations import run_deviations

    return {
        "contract_version": CONTRACT_VERSION,
        "config_hash": config_hash(config),
        "git_commit": _git_commit(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "weights": models,
        "seeds": {"seed": seed},
        "alpha": float(config.get("stats", {}).get("alpha", 0.05)),
        "deviations": run_deviations(config).to_dict("records"),
    }


def run_table(name: str, parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The run's contract table `name` from its stage parts, in order, checked against the contract."""
    table = pd.concat(parts, ignore_index=True)
    problems = validate_table(name, table)
    if problems:
        raise ValueError(f"table {name} breaks the results contract: {problems}")
    log.info("%s: %d rows", name, len(table))
    return table
