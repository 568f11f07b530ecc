"""Encoding: cross-validated ridge from one layer's features to one subject's targets, summarised per ROI or time."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from ._ridge import Fold, RidgeCVResult, TargetNull, check_folds, ridge_cv, ridge_cv_shared
from .files import SUMMARY_COLUMNS
from .folds import make_folds

__all__ = [
    "DEFAULT_ALPHAS",
    "NoUsableTargetsError",
    "RidgeEncoder",
    "TARGET_COLUMNS",
    "TargetNull",
    "encode",
    "encode_shared",
]

log = logging.getLogger(__name__)


# METHOD.md §4: 10 penalties log-spaced from 1e0 to 1e8.
DEFAULT_ALPHAS: tuple[float, ...] = tuple(np.logspace(0, 8, 10).tolist())


# Columns of the brain stage's target table that encoding reads, one row per column of Y.
TARGET_COLUMNS = ("target", "modality", "atlas", "roi", "hemi", "roi_distance_mm", "time", "noise_ceiling")


_FMRI_HEMIS = ("lh", "rh")


class RidgeEncoder:
    """Cross-validated ridge encoding model (scikit-learn conventions).

    Parameters
    ----------
    alphas : candidate penalties, chosen per target by leave-one-out in each training split.
    n_folds : outer cross-validation folds.
    seed : random state of the fold shuffle.
    groups : (n_images,) group keys kept within one fold, or None.

    Attributes
    ----------
    scores_ : (n_targets,) held-out Pearson r averaged over folds.
    r2_ : (n_targets,) held-out R² averaged over folds.
    alphas_ : (n_folds, n_targets) chosen penalties.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((100, 5))
    >>> Y = X[:, :2] + 0.1 * rng.standard_normal((100, 2))
    >>> bool((RidgeEncoder().fit(X, Y).scores_ > 0.9).all())
    True
    """

    def __init__(
        self,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        n_folds: int = 5,
        seed: int = 0,
        groups: np.ndarray | None = None,
    ):
        self.alphas = alphas
        self.n_folds = n_folds
        self.seed = seed
        self.groups = groups

    def get_params(self, deep: bool = True) -> dict:
        """Constructor arguments, as scikit-learn's `get_params` returns them."""
        return {"alphas": self.alphas, "n_folds": self.n_folds, "seed": self.seed, "groups": self.groups}

    def fit(self, X: np.ndarray, Y: np.ndarray) -> RidgeEncoder:
        """Score X -> Y by cross-validation; X (n_images, n_features), Y (n_images,[ n_targets])."""
        Y = np.asarray(Y)
        Y = Y[:, None] if Y.ndim == 1 else Y
        folds = make_folds(len(Y), self.groups, self.n_folds, self.seed)
        result = ridge_cv(X, Y, folds, self.alphas)
        self.scores_, self.r2_, self.alphas_ = result.r, result.r2, result.alpha
        return self


def _check_inputs(X: np.ndarray, Y: np.ndarray, targets: pd.DataFrame, folds: Sequence[Fold]) -> None:
    """Raise a ValueError naming the first inconsistency between features, targets and folds."""
    if X.ndim != 2 or Y.ndim != 2:
        raise ValueError(f"X and Y must be 2-D, got shapes {X.shape} and {Y.shape}")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} images but Y has {Y.shape[0]}; expected the same manifest rows")
    if len(targets) != Y.shape[1]:
        raise ValueError(f"targets has {len(targets)} rows but Y has {Y.shape[1]} columns; expected one row per target")
    missing = [c for c in TARGET_COLUMNS if c not in targets.columns]
    if missing:
        raise ValueError(f"targets lacks columns {missing}; expected {list(TARGET_COLUMNS)}")
    for column in ("modality", "atlas", "roi", "hemi"):
        if targets[column].isna().any():
            raise ValueError(f"targets column '{column}' has missing values; expected '' where not applicable")
    unknown = sorted(set(targets["modality"]) - set(_SUMMARIES))
    if unknown:
        raise ValueError(f"targets has modality {unknown}; expected one of {sorted(_SUMMARIES)}")
    if X.shape[0] < len(folds):
        raise ValueError(f"{X.shape[0]} images cannot be split into {len(folds)} folds")
    check_folds(folds, X.shape[0])
    bad = np.flatnonzero(~np.isfinite(X).all(axis=0))
    if bad.size:
        raise ValueError(
            f"features have non-finite values (NaN or inf) in {bad.size} columns, first column {bad[0]}; "
            "expected finite features (check the extraction of this layer)"
        )


def _column_flags(Y: np.ndarray, step: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per column of Y: any non-finite value, and constant (max == min); in column chunks."""
    nonfinite = np.zeros(Y.shape[1], dtype=bool)
    constant = np.zeros(Y.shape[1], dtype=bool)
    for start in range(0, Y.shape[1], step):
        block = Y[:, start : start + step]
        nonfinite[start : start + step] = ~np.isfinite(block).all(axis=0)
        with np.errstate(invalid="ignore"):
            constant[start : start + step] = np.ptp(block, axis=0) == 0
    return nonfinite, constant & ~nonfinite


def _normalize(r: np.ndarray, ceiling: np.ndarray) -> np.ndarray:
    """r / sqrt(noise ceiling) per target; NaN where the ceiling is unknown or not positive."""
    ok = np.isfinite(ceiling) & (ceiling > 0)
    return np.where(ok, r / np.sqrt(np.where(ok, ceiling, 1.0)), np.nan)


def _mean(values: pd.Series) -> float:
    """Mean of the finite values, NaN when there are none."""
    v = values.to_numpy(dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else np.nan


def _group_stats(part: pd.DataFrame) -> dict:
    """Scores of one group of targets: means over its used targets and the counts."""
    used = part[~part["excluded"]]
    return {
        "r": _mean(used["r"]),
        "r_normalized": _mean(used["r_normalized"]),
        "noise_ceiling": _mean(used["noise_ceiling"]),
        "n_targets": len(used),
        "n_excluded": len(part) - len(used),
        "n_significant": float(used["significant"].sum(min_count=1)),
    }


def _summarize_fmri(table: pd.DataFrame) -> list[dict]:
    """One row per (atlas, roi, hemi) for each hemisphere present, plus a pooled 'both' row."""
    bad = sorted(set(table["hemi"]) - set(_FMRI_HEMIS))
    if bad:
        raise ValueError(f"fmri targets have hemi {bad}; expected {list(_FMRI_HEMIS)}")
    rows = []
    for (atlas, roi), part in table.groupby(["atlas", "roi"], sort=False):
        hemis = [h for h in _FMRI_HEMIS if (part["hemi"] == h).any()]
        for hemi, sel in [(h, part[part["hemi"] == h]) for h in hemis] + [("both", part)]:
            rows.append(
                {
                    "modality": "fmri",
                    "atlas": atlas,
                    "roi": roi,
                    "hemi": hemi,
                    "roi_distance_mm": _mean(sel["roi_distance_mm"]),
                    "time": np.nan,
                    **_group_stats(sel),
                }
            )
    return rows


def _summarize_meg(table: pd.DataFrame) -> list[dict]:
    """One row per time point pooling all sensors (roi ""), and one per sensor group and time point.

    A MEG target's `roi` is its sensor group ("" for none; `brainprop.brain.sensors`); the group
    rows follow the all-sensor rows, groups in order of first appearance.
    """
    if not np.isfinite(table["time"].to_numpy(dtype=np.float64)).all():
        raise ValueError("meg targets have a missing time; expected a time in seconds for every sensor × time")
    parts = [("", table)] + [(g, part) for g, part in table.groupby("roi", sort=False) if g != ""]
    return [
        {
            "modality": "meg",
            "atlas": "",
            "roi": group,
            "hemi": "",
            "roi_distance_mm": np.nan,
            "time": float(time),
            **_group_stats(at),
        }
        for group, rows in parts
        for time, at in rows.groupby("time", sort=True)
    ]


_SUMMARIES: dict[str, Callable[[pd.DataFrame], list[dict]]] = {
    "fmri": _summarize_fmri,
    "meg": _summarize_meg,
}


def _summary_table(rows: list[dict]) -> pd.DataFrame:
    """Rows to a DataFrame with the contract's column order and types."""
    table = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    floats = ["roi_distance_mm", "time", "r", "r_normalized", "noise_ceiling", "n_significant"]
    types = {**{c: "float64" for c in floats}, "n_targets": "int64", "n_excluded": "int64"}
    return table.astype(types)


def _per_target_table(targets: pd.DataFrame, used: np.ndarray, result: RidgeCVResult) -> pd.DataFrame:
    """Scores of every target (NaN and `excluded` for those not fitted or degenerate in a split)."""
    from ..stats.inference import bh_fdr

    r, r2, alpha, p, q = (np.full(len(targets), np.nan) for _ in range(5))
    r[used], r2[used], alpha[used] = result.r, result.r2, np.median(result.alpha, axis=0)
    if result.p_null is not None:
        p[used] = result.p_null
        finite = np.isfinite(p)
        q[finite] = bh_fdr(p[finite])
    ceiling = targets["noise_ceiling"].to_numpy(dtype=np.float64)
    return pd.DataFrame(
        {
            "target": targets["target"].to_numpy(dtype=np.int64),
            "r": r,
            "r2": r2,
            "alpha": alpha,
            "r_normalized": _normalize(r, ceiling),
            "excluded": ~np.isfinite(r),
            "p": p,
            "q": q,
        }
    )


def encode(
    X: np.ndarray,
    Y: np.ndarray,
    targets: pd.DataFrame,
    folds: Sequence[Fold],
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    batch_size: int | None = None,
    backend: str = "numpy",
    device: str = "auto",
    dtype: str | None = None,
    nuisance: np.ndarray | None = None,
    null: TargetNull | None = None,
    fdr: float = 0.05,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Encode one subject's targets from one layer's features and summarise per ROI or time.

    Parameters
    ----------
    X : (n_images, n_features) features of one layer (float32 is fine; fits run in float64).
    Y : (n_images, n_targets) brain targets, rows in the same manifest order.
    targets : target table, one row per column of Y (columns `TARGET_COLUMNS`).
    folds : (train, test) index pairs from `make_folds`, the same for every layer and signal.
    alphas : candidate ridge penalties.
    batch_size : targets per solver batch (default from a memory budget).
    backend, device, dtype : array backend of the fits, as in `ridge_cv` (default NumPy float64).
    nuisance : (n_images, p) regressors partialled out of X and Y inside each training split
        (`encoding.nuisance`; `ridge_cv`), or None.
    null : the target null (`TargetNull`: permutations of the held-out predictions), or None.
    fdr : level of the Benjamini–Hochberg q that the summaries' `n_significant` counts.

    Returns
    -------
    per_target : one row per target, columns `SCORE_COLUMNS`; excluded targets have NaN scores.
    summary : the encoding table's rows without identity columns, columns `SUMMARY_COLUMNS`.
    counts : numbers of dropped features and excluded targets, for the log.
    """
    return encode_shared(X, [Y], [targets], folds, alphas, batch_size, backend, device, dtype, nuisance, [null], fdr)[0]


def encode_shared(
    X: np.ndarray,
    Ys: Sequence[np.ndarray],
    targets: Sequence[pd.DataFrame],
    folds: Sequence[Fold],
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    batch_size: int | None = None,
    backend: str = "numpy",
    device: str = "auto",
    dtype: str | None = None,
    nuisance: np.ndarray | None = None,
    nulls: Sequence[TargetNull | None] | None = None,
    fdr: float = 0.05,
) -> list[tuple[pd.DataFrame, pd.DataFrame, dict]]:
    """`encode` of several subjects who saw the images of X in the same order: one decomposition per fold.

    `nulls` has one `TargetNull` (or None) per subject. Returns one (per_target, summary, counts)
    per subject, each equal to a separate `encode` call.
    """
    X = np.asarray(X)
    Ys = [np.asarray(Y) for Y in Ys]
    nulls = list(nulls) if nulls is not None else [None] * len(Ys)
    masks = [_usable(X, Y, t, folds) for Y, t in zip(Ys, targets)]
    keep = masks[0][0]  # depends on X only
    if not keep.any():
        return [
            _encoding_tables(
                X, Y, t, folds, keep, mask[1:], intercept_only(Y[:, mask[1]], folds, X.shape[1], null), null, fdr
            )
            for Y, t, mask, null in zip(Ys, targets, masks, nulls)
        ]
    results = ridge_cv_shared(
        X if keep.all() else X[:, keep],
        [Y if used.all() else Y[:, used] for Y, (_, used, _, _) in zip(Ys, masks)],
        folds,
        alphas,
        batch_size,
        backend,
        device,
        dtype,
        nuisance,
        nulls,
    )
    return [
        _encoding_tables(X, Y, t, folds, keep, mask[1:], result, null, fdr)
        for Y, t, mask, result, null in zip(Ys, targets, masks, results, nulls)
    ]


def intercept_only(
    Y: np.ndarray, folds: Sequence[Fold], n_features: int, null: TargetNull | None = None
) -> RidgeCVResult:
    """Scores of a layer whose every feature column is constant: the training mean predicts each test row.

    Such a layer (a saturated or dead block, a gradient that is exactly zero) carries no
    information about the images. Its prediction does not vary, so its correlation with any
    response is taken as r = 0 (as the joint stage counts an empty band's R² alone as 0); R² is the
    intercept model's held-out R² (≤ 0); the penalty is NaN (nothing was penalised); with a
    null, p = 1 (no permutation can do worse than r = 0). Logged.
    """
    log.warning(
        "all %d feature columns of this layer are constant over the images (a dead or saturated block, or a "
        "zero gradient): it carries no information, so each of its %d targets gets r = 0 and the intercept "
        "model's R²; `hierarchy.exclude: nonpositive` leaves the layer out of the scores",
        n_features,
        Y.shape[1],
    )
    Y = np.asarray(Y, dtype=np.float64)
    r2_folds = np.empty((len(folds), Y.shape[1]))
    for i, (train, test) in enumerate(folds):
        residual = ((Y[test] - Y[train].mean(axis=0)) ** 2).sum(axis=0)
        total = ((Y[test] - Y[test].mean(axis=0)) ** 2).sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2_folds[i] = 1.0 - residual / total
    r_folds = np.zeros_like(r2_folds)
    alpha = np.full(r2_folds.shape, np.nan)
    r = r_folds.mean(axis=0)
    p_null = None if null is None else np.where(np.isfinite(r), 1.0, np.nan)
    return RidgeCVResult(r=r, r2=r2_folds.mean(axis=0), alpha=alpha, r_folds=r_folds, r2_folds=r2_folds, p_null=p_null)


def _usable(X: np.ndarray, Y: np.ndarray, targets: pd.DataFrame, folds: Sequence[Fold]) -> tuple[np.ndarray, ...]:
    """Checked inputs' masks: feature columns kept, targets used, targets not finite, targets constant."""
    _check_inputs(X, Y, targets, folds)
    keep = np.ptp(X, axis=0) > 0  # zero gradients and dead units: exactly constant columns
    nonfinite, constant = _column_flags(Y)
    used = ~(nonfinite | constant)
    if not used.any():
        raise NoUsableTargetsError(Y, nonfinite, constant)
    return keep, used, nonfinite, constant


class NoUsableTargetsError(ValueError):
    """Every target of Y is constant or non-finite; says which image rows hold the non-finite values.

    `rows` are the positions of the rows with a NaN or infinite value (a single image without a
    response makes every target non-finite), for a caller to name by image id.
    """

    def __init__(self, Y: np.ndarray, nonfinite: np.ndarray, constant: np.ndarray):
        bad = np.zeros(Y.shape[0], dtype=bool)
        for start in range(0, Y.shape[1], 4096):
            bad |= ~np.isfinite(Y[:, start : start + 4096]).all(axis=1)
        self.rows = np.flatnonzero(bad)
        parts = [f"all {Y.shape[1]} targets are unusable: {int(nonfinite.sum())} contain NaN or infinite values"]
        parts.append(f"{int(constant.sum())} are constant")
        if self.rows.size:
            shown = self.rows[:10].tolist()
            whole = int((~np.isfinite(Y[self.rows[:10]])).all(axis=1).sum())
            parts.append(
                f"the non-finite values sit in {self.rows.size} of the {Y.shape[0]} image rows (rows {shown}"
                f"{', ...' if self.rows.size > 10 else ''}; {whole} of the first {len(shown)} are non-finite in "
                "every target), so those images have no response and take every target with them; expected a "
                "finite response for every image in the subject's samples"
            )
        super().__init__("; ".join(parts))


def _encoding_tables(
    X: np.ndarray,
    Y: np.ndarray,
    targets: pd.DataFrame,
    folds: Sequence[Fold],
    keep: np.ndarray,
    flags: tuple[np.ndarray, np.ndarray, np.ndarray],
    result: RidgeCVResult,
    null: TargetNull | None = None,
    fdr: float = 0.05,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Per-target scores, summary rows and counts of one subject's fit."""
    used, nonfinite, constant = flags
    per_target = _per_target_table(targets, used, result)
    excluded = per_target["excluded"].to_numpy()
    q = per_target["q"].to_numpy()
    significant = np.where(np.isfinite(q), q <= fdr, np.nan) if result.p_null is not None else np.full(len(q), np.nan)
    table = (
        targets[list(TARGET_COLUMNS[1:])]
        .reset_index(drop=True)
        .assign(r=per_target["r"], r_normalized=per_target["r_normalized"], excluded=excluded, significant=significant)
    )
    rows = [row for modality, part in table.groupby("modality", sort=True) for row in _SUMMARIES[modality](part)]
    counts = {
        "n_images": int(X.shape[0]),
        "n_folds": len(folds),
        "n_features": int(X.shape[1]),
        "n_features_dropped": int((~keep).sum()),
        "n_targets": int(Y.shape[1]),
        "n_targets_excluded": int(excluded.sum()),
        "n_targets_nonfinite": int(nonfinite.sum()),
        "n_targets_constant": int(constant.sum()),
        "n_targets_degenerate_split": int((excluded & used).sum()),
        "n_permutations": 0 if null is None else int(null.n_permutations),
        "n_significant": int(np.nansum(significant)),
    }
    return per_target, _summary_table(rows), counts
