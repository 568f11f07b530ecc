"""Joint models (METHOD.md §4): activations and gradients of one layer fitted together by banded ridge.

Each signal's unique variance per target is R²_joint − R² of the other signal alone, both
held-out and fold-averaged on the same folds and the same per-band penalty grid
(`brainprop._banded.banded_ridge_cv`). The summary table has one row per fMRI ROI and
hemisphere (plus `both`) or MEG time point, like the encoding stage's, and feeds the E test.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ._banded import banded_ridge_cv
from ._ridge import Fold, check_folds, ridge_cv
from .files import JOINT_SUMMARY_COLUMNS

__all__ = [
    "JOINT_ALPHAS",
    "JOINT_SIGNALS",
    "JOINT_TARGET_COLUMNS",
    "joint_encode",
    "joint_encode_shared",
    "summarize_joint",
]

# Default per-band grid: logspace(0, 8, 5), 25 penalty pairs (docs/method.md, "Joint models").
JOINT_ALPHAS: tuple[float, ...] = tuple(np.logspace(0, 8, 5).tolist())
# The two bands, in this order.
JOINT_SIGNALS = ("act", "grad")

# Per-target table: joint R², each signal's R² alone and unique variance; `excluded` targets NaN.
JOINT_TARGET_COLUMNS = ("target", "r_joint", "r2_joint", "r2_act", "r2_grad", "unique_act", "unique_grad", "excluded")
_MEASURES = ("r2_joint", "r2_act", "r2_grad", "unique_act", "unique_grad")
_TARGET_INFO = ("target", "modality", "atlas", "roi", "hemi", "roi_distance_mm", "time")

log = logging.getLogger(__name__)


def _nonconstant(X: np.ndarray, name: str) -> np.ndarray:
    """Keep-mask of the non-constant columns of X (zero gradients, dead units), which must be finite."""
    if X.ndim != 2:
        raise ValueError(f"{name} features must be 2-D (n_images, n_features), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(
            f"{name} features have {np.count_nonzero(~np.isfinite(X))} non-finite values; "
            "expected finite features (check the extraction of this layer)"
        )
    return np.ptp(X, axis=0) > 0


def joint_encode(
    X_act: np.ndarray,
    X_grad: np.ndarray,
    Y: np.ndarray,
    folds: Sequence[Fold],
    alphas: Sequence[float] = JOINT_ALPHAS,
) -> tuple[pd.DataFrame, dict]:
    """Joint ridge of one layer's activations and gradients, and each signal's unique variance.

    Parameters
    ----------
    X_act, X_grad : (n_images, n_features_j) features of the same layer, rows in Y's order.
    Y : (n_images, n_targets) responses.
    folds : the dataset's outer (train, test) folds, as for `encode`.
    alphas : per-band penalty grid; every pair (α_act, α_grad) is tried per target.

    Returns
    -------
    per_target : one row per target (columns `JOINT_TARGET_COLUMNS` minus `target`, in Y's
        column order); targets NaN or constant anywhere are excluded (NaN, `excluded` True).
    counts : dropped feature columns and excluded targets, for the log.

    A band whose columns are all constant (e.g. a gradient that is exactly zero) carries no
    information: the joint model is then the other band alone, its unique variance is 0 and its
    R² alone counts as 0.
    """
    X_act, X_grad, Y = np.asarray(X_act), np.asarray(X_grad), np.asarray(Y)
    if Y.ndim != 2 or X_act.shape[0] != Y.shape[0] or X_grad.shape[0] != Y.shape[0]:
        raise ValueError(
            f"features {X_act.shape} and {X_grad.shape} and targets {Y.shape} need the same number of images (rows)"
        )
    folds = check_folds(folds, Y.shape[0])
    keep = [_nonconstant(X_act, "activation"), _nonconstant(X_grad, "gradient")]
    if not (keep[0].any() or keep[1].any()):
        raise ValueError("activation and gradient features are all constant; nothing to fit")
    finite = np.isfinite(Y).all(axis=0)
    with np.errstate(invalid="ignore"):
        used = finite & (np.ptp(np.where(finite, Y, 0.0), axis=0) > 0)
    if not used.any():
        raise ValueError(f"all {Y.shape[1]} targets are constant or contain NaN; nothing to fit")
    Yu = Y if used.all() else Y[:, used]
    bands = [X[:, k] for X, k in zip((X_act, X_grad), keep)]
    if keep[0].any() and keep[1].any():
        res = banded_ridge_cv(bands, Yu, folds, alphas)
        r_joint, r2_joint = res.r, res.r2
        r2_single = [res.single[0].r2, res.single[1].r2]
    else:
        alive = 0 if keep[0].any() else 1
        single = ridge_cv(bands[alive], Yu, folds, np.unique(np.asarray(alphas, dtype=np.float64)))
        r_joint, r2_joint = single.r, single.r2
        # A band without information predicts nothing: its R² alone counts as 0.
        r2_single = [single.r2, single.r2]
        r2_single[1 - alive] = np.zeros(single.r2.shape)
    values = {
        "r_joint": r_joint,
        "r2_joint": r2_joint,
        "r2_act": r2_single[0],
        "r2_grad": r2_single[1],
        # unique variance of a signal = R²_joint − R²(other signal alone); 0 for an empty band
        "unique_act": r2_joint - r2_single[1] if keep[0].any() else np.zeros_like(r2_joint),
        "unique_grad": r2_joint - r2_single[0] if keep[1].any() else np.zeros_like(r2_joint),
    }
    out = {}
    for name, v in values.items():
        full = np.full(Y.shape[1], np.nan)
        full[used] = v
        out[name] = full
    per_target = pd.DataFrame(out).assign(excluded=~np.isfinite(out["r2_joint"]))
    counts = {
        "n_images": int(Y.shape[0]),
        "n_folds": len(folds),
        "n_pairs": int(np.unique(alphas).size ** 2),
        "n_features_act": int(X_act.shape[1]),
        "n_features_act_dropped": int((~keep[0]).sum()),
        "n_features_grad": int(X_grad.shape[1]),
        "n_features_grad_dropped": int((~keep[1]).sum()),
        "n_targets": int(Y.shape[1]),
        "n_targets_excluded": int(per_target["excluded"].sum()),
    }
    return per_target, counts


def joint_encode_shared(
    X_act: np.ndarray,
    X_grad: np.ndarray,
    Ys: Sequence[np.ndarray],
    folds: Sequence[Fold],
    alphas: Sequence[float] = JOINT_ALPHAS,
) -> list[tuple[pd.DataFrame, dict]]:
    """`joint_encode` of several subjects who saw the images of X in the same order, in one fit.

    Targets are fitted independently (each takes its own penalty pair), so the subjects' targets
    go through one banded fit side by side: one kernel eigendecomposition per fold and penalty
    ratio for all of them. Returns one (per_target, counts) per subject, each equal to a separate
    `joint_encode` call.
    """
    Ys = [np.asarray(Y) for Y in Ys]
    if any(Y.ndim != 2 for Y in Ys):
        raise ValueError(f"every subject's targets must be 2-D (n_images, n_targets); got {[Y.shape for Y in Ys]}")
    per_target, counts = joint_encode(X_act, X_grad, np.concatenate(Ys, axis=1), folds, alphas)
    out, start = [], 0
    for Y in Ys:
        part = per_target.iloc[start : start + Y.shape[1]].reset_index(drop=True)
        start += Y.shape[1]
        out.append((part, counts | {"n_targets": int(Y.shape[1]), "n_targets_excluded": int(part["excluded"].sum())}))
    return out


def _means(part: pd.DataFrame) -> dict:
    """Means of the measures over a group's used targets, with the counts."""
    used = part[~part["excluded"]]
    row = {m: float(used[m].mean()) if len(used) else np.nan for m in _MEASURES}
    return row | {"n_targets": len(used), "n_excluded": len(part) - len(used)}


def summarize_joint(per_target: pd.DataFrame, targets: pd.DataFrame) -> pd.DataFrame:
    """Per fMRI ROI × hemisphere (lh, rh and pooled `both`) and per MEG time: mean measures and counts.

    `per_target` comes from `joint_encode`, `targets` is the brain stage's target table in the
    same order (columns `target`, `modality`, `atlas`, `roi`, `hemi`, `roi_distance_mm`, `time`).
    """
    missing = [c for c in _TARGET_INFO if c not in targets.columns]
    if missing:
        raise ValueError(f"targets lacks columns {missing}; expected {list(_TARGET_INFO)}")
    if len(targets) != len(per_target):
        raise ValueError(f"targets has {len(targets)} rows but the joint fit {len(per_target)} targets")
    table = pd.concat(
        [
            targets[list(_TARGET_INFO)].reset_index(drop=True),
            per_target.drop(columns="target", errors="ignore").reset_index(drop=True),
        ],
        axis=1,
    )
    rows = []
    fmri = table[table["modality"] == "fmri"]
    for (atlas, roi), part in fmri.groupby(["atlas", "roi"], sort=True):
        groups = [(h, part[part["hemi"] == h]) for h in ("lh", "rh") if (part["hemi"] == h).any()]
        for hemi, sel in groups + [("both", part)]:
            rows.append(
                {
                    "modality": "fmri",
                    "atlas": atlas,
                    "roi": roi,
                    "hemi": hemi,
                    "roi_distance_mm": float(sel["roi_distance_mm"].mean()),
                    "time": np.nan,
                }
                | _means(sel)
            )
    meg = table[table["modality"] == "meg"]
    for time, part in meg.groupby("time", sort=True):
        rows.append(
            {"modality": "meg", "atlas": "", "roi": "", "hemi": "", "roi_distance_mm": np.nan, "time": float(time)}
            | _means(part)
        )
    out = pd.DataFrame(rows, columns=list(JOINT_SUMMARY_COLUMNS))
    return out.astype(
        {c: str for c in ("modality", "atlas", "roi", "hemi")}
        | {c: np.float64 for c in ("roi_distance_mm", "time", *_MEASURES)}
        | {"n_targets": np.int64, "n_excluded": np.int64}
    )
