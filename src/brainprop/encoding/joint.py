"""Joint models (METHOD.md §4): a layer's gradients fitted together with a reference by banded ridge.

The reference must contain everything the gradient is computed from (METHOD.md §4): by default
the **forward stack**, every selected layer's activations and the model output, reduced on each
training split to a bounded width by PCA (`StackBand`); the layer's own activations
(`same_layer`) are the variant. Each band's unique variance per target is R²_joint − R² of the
other band alone, both held-out and fold-averaged on the same folds and the same per-band
penalty grid (`brainprop.encoding._banded`), optionally after partialling nuisance regressors out
of every band and the targets inside each training split. The summary table has one row per
reference × fMRI ROI and hemisphere (plus `both`) or MEG time point, like the encoding stage's,
and feeds the E test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._banded import banded_grid, joint_ridge_cv, single_band_cv
from ._ridge import Fold, Partial, _standardize, check_folds
from .files import JOINT_SUMMARY_COLUMNS

__all__ = [
    "JOINT_ALPHAS",
    "JOINT_SIGNALS",
    "JOINT_TARGET_COLUMNS",
    "REFERENCES",
    "STACK_WIDTH",
    "StackBand",
    "joint_encode",
    "joint_encode_shared",
    "summarize_joint",
]

# Default per-band grid: logspace(0, 8, 5), 25 penalty pairs (docs/method.md, "Joint models").
JOINT_ALPHAS: tuple[float, ...] = tuple(np.logspace(0, 8, 5).tolist())
# The two bands, in this order.
JOINT_SIGNALS = ("act", "grad")

# Per-target table: joint R², each band's R² alone and unique variance; `excluded` targets NaN. `act`
# is the reference band (the forward stack or the same layer's activations, column `reference`).
JOINT_TARGET_COLUMNS = (
    "target", "reference", "r_joint", "r2_joint", "r2_act", "r2_grad", "unique_act", "unique_grad", "excluded",
)  # fmt: skip
_MEASURES = ("r2_joint", "r2_act", "r2_grad", "unique_act", "unique_grad")
_TARGET_INFO = ("target", "modality", "atlas", "roi", "hemi", "roi_distance_mm", "time")
# Components the forward stack keeps per training split (joint.stack.width; docs/method.md, "Joint models").
STACK_WIDTH = 64

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


@dataclass(frozen=True)
class StackBand:
    """The forward stack as one band: every selected layer's activations and the model output.

    Per fold, on the training rows only: each block (a layer's activations, the output) has the
    nuisances removed (if any), is standardised per column and scaled by 1/√d (d = its
    non-constant columns) so that every block carries the same total variance; the blocks'
    concatenation is reduced by PCA to its `width` leading components, computed from the training
    kernel Σ_b X_b X_bᵀ / d_b (no concatenated matrix is formed). The test rows are projected on the
    training components. The scores keep their variances (no standardisation after the PCA).

    Attributes
    ----------
    blocks : (n_images, d_b) arrays, rows in the responses' order.
    width : components kept (fewer when the training kernel has lower rank).
    """

    blocks: tuple[np.ndarray, ...]
    width: int = STACK_WIDTH

    def __len__(self) -> int:
        return int(self.blocks[0].shape[0])

    @property
    def n_features(self) -> int:
        """Columns of all blocks together."""
        return int(sum(b.shape[1] for b in self.blocks))

    def alive(self) -> bool:
        """Whether any block has a column that varies over the images."""
        return any(bool((np.ptp(b, axis=0) > 0).any()) for b in self.blocks)

    def split(self, train: np.ndarray, test: np.ndarray, partial: Partial | None = None) -> tuple:
        """Training scores (n_train, w) and test projections (n_test, w) of the stack's PCA fitted on `train`."""
        K = np.zeros((len(train), len(train)))
        C = np.zeros((len(test), len(train)))
        for block in self.blocks:
            a, b = block[train].astype(np.float64), block[test].astype(np.float64)
            if partial is not None:
                a, b = partial(a, b)
            a, b = _standardize(a, b)
            d = int(np.count_nonzero(a.var(axis=0) > 0))
            if d:
                K += a @ a.T / d
                C += b @ a.T / d
        lam, Q = np.linalg.eigh(K)
        order = np.argsort(lam)[::-1][: int(self.width)]
        lam, Q = lam[order], Q[:, order]
        keep = lam > max(lam.max(initial=0.0), 0.0) * len(train) * np.finfo(np.float64).eps
        lam, Q = lam[keep], Q[:, keep]
        root = np.sqrt(lam)
        return Q * root, (C @ Q) / root


def _array_alive(X: np.ndarray) -> bool:
    return bool((np.ptp(X, axis=0) > 0).any())


# joint.reference: what the gradient is fitted against (METHOD.md §4). Each entry makes the band from
# (layer activations with their constant columns dropped, the stack's blocks or None, width).
REFERENCES: dict[str, Callable[[np.ndarray, Sequence[np.ndarray] | None, int], object]] = {
    "stack": lambda act, stack, width: StackBand(tuple(np.asarray(b) for b in stack), int(width)),
    "same_layer": lambda act, stack, width: act,
}


def joint_encode(
    X_act: np.ndarray,
    X_grad: np.ndarray,
    Y: np.ndarray,
    folds: Sequence[Fold],
    alphas: Sequence[float] = JOINT_ALPHAS,
    *,
    references: Sequence[str] = ("same_layer",),
    stack: Sequence[np.ndarray] | None = None,
    width: int = STACK_WIDTH,
    nuisance: np.ndarray | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Joint ridge of one layer's gradients with each reference, and each band's unique variance.

    Parameters
    ----------
    X_act, X_grad : (n_images, n_features_j) features of the same layer, rows in Y's order.
    Y : (n_images, n_targets) responses.
    folds : the dataset's outer (train, test) folds, as for `encode`.
    alphas : per-band penalty grid; every pair (α_reference, α_grad) is tried per target.
    references : names in `REFERENCES`: `same_layer` (X_act) and/or `stack` (needs `stack`).
    stack : the forward stack's blocks: every selected layer's activations and the model output,
        each (n_images, d_b), rows in Y's order.
    width : components the stack keeps per training split (`StackBand`).
    nuisance : (n_images, p) regressors partialled out of every band and of Y inside each
        training split, or None.

    Returns
    -------
    per_target : one row per reference × target (columns `JOINT_TARGET_COLUMNS` minus `target`,
        references in the given order, targets in Y's column order); targets NaN or constant
        anywhere are excluded (NaN, `excluded` True). The `act` columns are the reference's.
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
    unknown = [r for r in references if r not in REFERENCES]
    if unknown or not references:
        raise ValueError(f"references {list(references)}: expected one or more of {list(REFERENCES)} (joint.reference)")
    if "stack" in references:
        if not stack:
            raise ValueError("reference 'stack' needs the stack's blocks (every layer's activations and the output)")
        for j, block in enumerate(stack):
            block = np.asarray(block)
            if block.ndim != 2 or block.shape[0] != Y.shape[0]:
                raise ValueError(f"stack block {j} has shape {block.shape}; expected ({Y.shape[0]}, d)")
            _nonconstant(block, f"stack block {j}")
    folds = check_folds(folds, Y.shape[0])
    keep = [_nonconstant(X_act, "activation"), _nonconstant(X_grad, "gradient")]
    finite = np.isfinite(Y).all(axis=0)
    with np.errstate(invalid="ignore"):
        used = finite & (np.ptp(np.where(finite, Y, 0.0), axis=0) > 0)
    if not used.any():
        raise ValueError(f"all {Y.shape[1]} targets are constant or contain NaN; nothing to fit")
    Yu = Y if used.all() else Y[:, used]
    grid = banded_grid(alphas, 2)
    grad = X_grad[:, keep[1]]
    grad_alive = bool(keep[1].any())
    grad_alone = single_band_cv(grad, Yu, folds, grid[:, 1], nuisance=nuisance) if grad_alive else None
    tables = []
    for name in references:
        ref = REFERENCES[name](X_act[:, keep[0]], stack, width)
        ref_alive = ref.alive() if isinstance(ref, StackBand) else _array_alive(ref)
        if not (ref_alive or grad_alive):
            raise ValueError(f"reference {name!r} and gradient features are all constant; nothing to fit")
        ref_alone = single_band_cv(ref, Yu, folds, grid[:, 0], nuisance=nuisance) if ref_alive else None
        zeros = np.zeros(Yu.shape[1])
        if ref_alive and grad_alive:
            joint = joint_ridge_cv([ref, grad], Yu, folds, alphas, nuisance=nuisance)
        else:
            joint = ref_alone if ref_alive else grad_alone
        r2_ref = ref_alone.r2 if ref_alive else zeros
        r2_grad = grad_alone.r2 if grad_alive else zeros
        values = {
            "r_joint": joint.r,
            "r2_joint": joint.r2,
            "r2_act": r2_ref,
            "r2_grad": r2_grad,
            # unique variance of a band = R²_joint − R²(other band alone); 0 for an empty band
            "unique_act": joint.r2 - r2_grad if ref_alive else zeros,
            "unique_grad": joint.r2 - r2_ref if grad_alive else zeros,
        }
        out = {}
        for column, v in values.items():
            full = np.full(Y.shape[1], np.nan)
            full[used] = v
            out[column] = full
        table = pd.DataFrame(out).assign(excluded=~np.isfinite(out["r2_joint"]))
        table.insert(0, "reference", name)
        tables.append(table)
    per_target = pd.concat(tables, ignore_index=True)
    counts = {
        "n_images": int(Y.shape[0]),
        "n_folds": len(folds),
        "n_pairs": int(len(grid)),
        "references": list(references),
        "n_features_act": int(X_act.shape[1]),
        "n_features_act_dropped": int((~keep[0]).sum()),
        "n_features_grad": int(X_grad.shape[1]),
        "n_features_grad_dropped": int((~keep[1]).sum()),
        "n_stack_blocks": len(stack) if stack else 0,
        "n_features_stack": int(sum(np.shape(b)[1] for b in stack)) if stack else 0,
        "stack_width": int(width) if "stack" in references else 0,
        "n_nuisances": 0 if nuisance is None else int(np.shape(nuisance)[1] if np.ndim(nuisance) == 2 else 1),
        "n_targets": int(Y.shape[1]),
        "n_targets_excluded": int(tables[0]["excluded"].sum()),
    }
    return per_target, counts


def joint_encode_shared(
    X_act: np.ndarray,
    X_grad: np.ndarray,
    Ys: Sequence[np.ndarray],
    folds: Sequence[Fold],
    alphas: Sequence[float] = JOINT_ALPHAS,
    **options,
) -> list[tuple[pd.DataFrame, dict]]:
    """`joint_encode` of several subjects who saw the images of X in the same order, in one fit.

    Targets are fitted independently (each takes its own penalty pair), so the subjects' targets
    go through one banded fit side by side: one kernel eigendecomposition per fold and penalty
    ratio for all of them (the stack's reduction and the nuisance fit, which depend on the images
    only, are shared too). `options` are `joint_encode`'s keywords (references, stack, width,
    nuisance). Returns one (per_target, counts) per subject, each equal to a separate
    `joint_encode` call.
    """
    Ys = [np.asarray(Y) for Y in Ys]
    if any(Y.ndim != 2 for Y in Ys):
        raise ValueError(f"every subject's targets must be 2-D (n_images, n_targets); got {[Y.shape for Y in Ys]}")
    per_target, counts = joint_encode(X_act, X_grad, np.concatenate(Ys, axis=1), folds, alphas, **options)
    total = sum(Y.shape[1] for Y in Ys)
    blocks = [
        per_target.iloc[r * total : (r + 1) * total].reset_index(drop=True) for r in range(len(per_target) // total)
    ]
    out, start = [], 0
    for Y in Ys:
        part = pd.concat([b.iloc[start : start + Y.shape[1]] for b in blocks], ignore_index=True)
        first = blocks[0].iloc[start : start + Y.shape[1]]
        start += Y.shape[1]
        out.append((part, counts | {"n_targets": int(Y.shape[1]), "n_targets_excluded": int(first["excluded"].sum())}))
    return out


def _means(part: pd.DataFrame) -> dict:
    """Means of the measures over a group's used targets, with the counts."""
    used = part[~part["excluded"]]
    row = {m: float(used[m].mean()) if len(used) else np.nan for m in _MEASURES}
    return row | {"n_targets": len(used), "n_excluded": len(part) - len(used)}


def summarize_joint(per_target: pd.DataFrame, targets: pd.DataFrame) -> pd.DataFrame:
    """Per reference, per fMRI ROI × hemisphere (lh, rh and pooled `both`) and per MEG time: mean measures and counts.

    `per_target` comes from `joint_encode` (one block of rows per reference; without a
    `reference` column it is one `same_layer` block), `targets` is the brain stage's target table
    in the same order (columns `target`, `modality`, `atlas`, `roi`, `hemi`, `roi_distance_mm`, `time`).
    """
    missing = [c for c in _TARGET_INFO if c not in targets.columns]
    if missing:
        raise ValueError(f"targets lacks columns {missing}; expected {list(_TARGET_INFO)}")
    if "reference" not in per_target.columns:
        per_target = per_target.assign(reference="same_layer")
    parts = [part for _, part in per_target.groupby("reference", sort=False)]
    bad = [len(part) for part in parts if len(part) != len(targets)]
    if bad:
        raise ValueError(f"targets has {len(targets)} rows but the joint fit {bad[0]} targets")
    return pd.concat([_summarize_one(part, targets) for part in parts], ignore_index=True)


def _summarize_one(per_target: pd.DataFrame, targets: pd.DataFrame) -> pd.DataFrame:
    """The summary rows of one reference's per-target values."""
    reference = str(per_target["reference"].iloc[0])
    table = pd.concat(
        [
            targets[list(_TARGET_INFO)].reset_index(drop=True),
            per_target.drop(columns=["target", "reference"], errors="ignore").reset_index(drop=True),
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
    out = pd.DataFrame(rows, columns=list(JOINT_SUMMARY_COLUMNS)).assign(reference=reference)
    return out.astype(
        {c: str for c in ("reference", "modality", "atlas", "roi", "hemi")}
        | {c: np.float64 for c in ("roi_distance_mm", "time", *_MEASURES)}
        | {"n_targets": np.int64, "n_excluded": np.int64}
    )
