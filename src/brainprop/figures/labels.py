"""The words on figures: axis labels, level names, score labels, figure names and learning-rule names."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "DEPTH_LABEL",
    "PREDICTION_TEXT",
    "ROI_LEVEL_NAMES",
    "RULE_NAMES",
    "SCORE_TEST_OF",
    "VALUE_LABELS",
    "ci_name",
    "distance_label",
    "figure_name",
    "score_label",
]

ROI_LEVEL_NAMES = ("early", "intermediate", "high")


VALUE_LABELS = {"r": "Pearson r", "r_normalized": "noise-normalised r"}


DEPTH_LABEL = "layer depth (0 = first, 1 = last)"


# Test rows that carry each hierarchy score's group mean and bootstrap CI (tests.parquet).
SCORE_TEST_OF = {"spatial": "S1a", "temporal": "T1"}


def figure_name(dataset: str, rows: pd.DataFrame) -> str:
    """'dataset · model' when `rows` hold one model, else the dataset."""
    models = rows["model"].unique()
    return f"{dataset} · {models[0]}" if len(models) == 1 else dataset


def score_label(
    hier: pd.DataFrame, model: str, signal: str, score: str, tests: pd.DataFrame | None = None, alpha: float = 0.05
) -> str:
    """Legend text for one signal: its mean ± SEM hierarchy score over subjects, and the tests' CI."""
    rows = hier[(hier["model"] == model) & (hier["signal"] == signal) & (hier["score"] == score)]
    values = rows["value"].to_numpy(dtype="float64")
    values = values[np.isfinite(values)]
    if values.size == 0:
        return f"{signal}: {score} score n/a"
    sem = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else np.nan
    spread = f" ± {sem:.2f}" if np.isfinite(sem) else ""
    ci = ""
    if tests is not None:
        row = tests[(tests["model"] == model) & (tests["signal"] == signal) & (tests["test"] == SCORE_TEST_OF[score])]
        if len(row) == 1 and np.isfinite(row[["ci_low", "ci_high"]].to_numpy(dtype="float64")).all():
            ci = f"\n{ci_name(alpha)} [{row['ci_low'].iloc[0]:+.2f}, {row['ci_high'].iloc[0]:+.2f}]"
    return f"{signal}: {score} score {values.mean():+.2f}{spread} (n={values.size}){ci}"


def distance_label(distance: pd.Series) -> str:
    """X-axis label naming the reference ROI when one ROI sits at 0 mm."""
    reference = distance.index[distance.to_numpy() == 0.0]
    name = reference[0] if len(reference) == 1 else "the reference ROI"
    return f"ROI centroid distance from {name} (mm)"


RULE_NAMES = {"grad": "backprop", "fa": "feedback align.", "sign": "sign-symmetric", "dfa": "direct FA"}


PREDICTION_TEXT = {"less": "< 0", "greater": "> 0", "zero": "≈ 0"}


def ci_name(alpha: float) -> str:
    """Name of the tests table's bootstrap interval, whose level is 1 − `stats.alpha`."""
    return f"{100 * (1 - alpha):g}% CI"
