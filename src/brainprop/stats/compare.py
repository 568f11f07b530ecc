"""Model comparisons (METHOD.md §6): activations vs gradients within a model, and models against each other.

Both read the per-subject statistics of the group stage (`brainprop.stats.group.subject_statistics`)
and compare them paired over subjects with an exact two-sided Wilcoxon signed-rank test:

- `act_vs_grad`: per dataset × model, the gradients' temporal and spatial scores minus the
  activations' (T1 and S1a statistics of both signals). Family `{dataset}/act_vs_grad`.
- `models`: per dataset and backprop test (T1, T2, S1a, S1b of the gradients), every pair of
  models, on the statistic signed so that larger means closer to what backpropagation predicts
  (T1 flipped, the others as they are). Family `{dataset}/models` (METHOD.md: cross-model
  comparisons form one family per dataset), control variants included.
- `rank`: per dataset and test, each model's mean signed statistic and its rank (1 = closest to
  the backprop signature); descriptive, no p.
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pandas as pd

from .inference import bh_fdr, bootstrap_ci, wilcoxon_exact
from .registry import PREDICTIONS

__all__ = ["COMPARISON_COLUMNS", "compare_models"]

COMPARISON_COLUMNS = {
    "dataset": str,
    "modality": str,
    "comparison": str,
    "measure": str,
    "model_a": str,
    "signal_a": str,
    "model_b": str,
    "signal_b": str,
    "statistic": np.float64,
    "effect": np.float64,
    "ci_low": np.float64,
    "ci_high": np.float64,
    "p": np.float64,
    "p_min": np.float64,
    "p_fdr": np.float64,
    "family": str,
    "n_subjects": np.int64,
    "rank": np.int64,
}
_SIGN = {test: (-1.0 if alternative == "less" else 1.0) for test, alternative in PREDICTIONS.items()}
_ACT_VS_GRAD = {"T1": "temporal_score", "S1a": "spatial_score"}
_REQUIRED = ("dataset", "modality", "model", "signal", "test", "level", "subject", "statistic")


def _paired(a: pd.Series, b: pd.Series, seed: int, tag: str, n_boot: int, alpha: float) -> tuple:
    """Wilcoxon (two-sided) and bootstrap CI of a − b over the subjects both have (finite)."""
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    diff = both["a"].to_numpy(np.float64) - both["b"].to_numpy(np.float64)
    w, p, pmin, n = wilcoxon_exact(diff, "two-sided")
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(tag.encode())]))
    low, high = bootstrap_ci(diff, n_boot, rng, level=1.0 - alpha)
    return w, float(diff.mean()) if n else float("nan"), low, high, p, pmin, n


def _series(per_subject: pd.DataFrame, model: str, signal: str, test: str) -> pd.Series:
    rows = per_subject[
        (per_subject["model"] == model)
        & (per_subject["signal"] == signal)
        & (per_subject["test"] == test)
        & (per_subject["level"] == "")
    ]
    return rows.set_index("subject")["statistic"].astype(np.float64)


def compare_models(per_subject: pd.DataFrame, seed: int, n_boot: int = 2000, alpha: float = 0.05) -> pd.DataFrame:
    """The comparisons table of one dataset's (or several datasets') per-subject statistics.

    Returns one row per comparison (columns `COMPARISON_COLUMNS`): `effect` is the mean over
    subjects of a − b, `statistic` the Wilcoxon W, [ci_low, ci_high] the (1 − alpha) bootstrap
    interval, p exact two-sided, p_fdr Benjamini–Hochberg within `family`; `rank` is −1
    except on `rank` rows.
    """
    missing = [c for c in _REQUIRED if c not in per_subject.columns]
    if missing:
        raise ValueError(f"per-subject statistics lack columns {missing}; expected {list(_REQUIRED)}")
    rows = []
    for dataset, data in per_subject.groupby("dataset", sort=True):
        models = sorted(set(data["model"]))
        for model in models:
            for test, measure in _ACT_VS_GRAD.items():
                act, grad = _series(data, model, "act", test), _series(data, model, "grad", test)
                if len(act) and len(grad):
                    modality = data.loc[data["test"] == test, "modality"].iloc[0]
                    res = _paired(grad, act, seed, f"{dataset}/{model}/{test}", n_boot, alpha)
                    rows.append(
                        (
                            dataset,
                            modality,
                            "act_vs_grad",
                            measure,
                            model,
                            "grad",
                            model,
                            "act",
                            *res[:6],
                            np.nan,
                            f"{dataset}/act_vs_grad",
                            res[6],
                            -1,
                        )
                    )
        for test, sign in _SIGN.items():
            signed = {m: sign * _series(data, m, "grad", test) for m in models}
            signed = {m: s for m, s in signed.items() if s.notna().any()}
            if not signed:
                continue
            modality = data.loc[data["test"] == test, "modality"].iloc[0]
            measure = f"{test}_signed"
            means = pd.Series({m: float(s.mean()) for m, s in signed.items()})
            ranks = means.rank(ascending=False, method="min")
            for m in sorted(signed):
                rows.append(
                    (
                        dataset,
                        modality,
                        "rank",
                        measure,
                        m,
                        "grad",
                        "",
                        "",
                        np.nan,
                        means[m],
                        np.nan,
                        np.nan,
                        np.nan,
                        np.nan,
                        np.nan,
                        f"{dataset}/models",
                        int(signed[m].notna().sum()),
                        int(ranks[m]),
                    )
                )
            for a, b in itertools.combinations(sorted(signed), 2):
                res = _paired(signed[a], signed[b], seed, f"{dataset}/{test}/{a}/{b}", n_boot, alpha)
                rows.append(
                    (
                        dataset,
                        modality,
                        "models",
                        measure,
                        a,
                        "grad",
                        b,
                        "grad",
                        *res[:6],
                        np.nan,
                        f"{dataset}/models",
                        res[6],
                        -1,
                    )
                )
    out = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS)).astype(COMPARISON_COLUMNS)
    tested = out["comparison"] != "rank"
    for idx in out[tested].groupby("family").groups.values():
        out.loc[idx, "p_fdr"] = bh_fdr(out.loc[idx, "p"].to_numpy())
    return out.reset_index(drop=True)
