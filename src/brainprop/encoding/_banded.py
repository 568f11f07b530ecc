"""Banded (joint) ridge: one penalty per feature space, chosen per target by exact leave-one-out.

A band is a feature array (standardised on each training split, as `ridge_cv` does) or a
*fold band*: an object with `split(train, test, partial) -> (X_train, X_test)` that fits its own
transform on the training rows only (e.g. the forward stack's reduction, `encoding.joint`) and
returns the final features of both splits, and `__len__` (its rows). `partial` removes the
nuisance regressors fitted on the same training rows (`_ridge.fold_partial`) or is None.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._backends import get_backend
from ._ridge import (
    Fold,
    Partial,
    RidgeCVResult,
    _Basis,
    _loo_errors,
    _loo_terms,
    _pearson,
    _r2,
    _standardize,
    _valid,
    check_alphas,
    check_folds,
    check_nuisance,
    fold_partial,
    ridge_cv,
)

__all__ = [
    "BANDED_ALPHAS",
    "BandedResult",
    "band_split",
    "banded_grid",
    "banded_ridge_cv",
    "fold_predict",
    "is_fold_band",
    "joint_ridge_cv",
    "single_band_cv",
]

# METHOD.md §4 grid per band (1e0..1e8, 10 values): 100 penalty pairs for two bands.
BANDED_ALPHAS: tuple[float, ...] = tuple(np.logspace(0, 8, 10).tolist())

# Working-memory budget of one target batch: about four (n_train, batch) float64 arrays.
_BATCH_BYTES = 2**29


@dataclass(frozen=True)
class BandedResult:
    """Cross-validated scores of a two-band joint ridge and of each band alone (NaN where not fitted).

    Attributes
    ----------
    r : (n_targets,) Pearson r of the joint model's held-out prediction, averaged over folds.
    r2 : (n_targets,) R² of the joint model, averaged over folds.
    alpha : (n_folds, n_targets, n_bands) penalty pair chosen by leave-one-out per fold and target.
    r_folds : (n_folds, n_targets) joint Pearson r of each fold.
    r2_folds : (n_folds, n_targets) joint R² of each fold.
    single : one `RidgeCVResult` per band, that band fitted alone by `ridge_cv` on the same folds.
    unique : (n_bands, n_targets) unique variance of each band, R²_joint − R² of the other band alone.
    """

    r: np.ndarray
    r2: np.ndarray
    alpha: np.ndarray
    r_folds: np.ndarray
    r2_folds: np.ndarray
    single: tuple[RidgeCVResult, ...]
    unique: np.ndarray


def banded_grid(alphas: Sequence[float] | Sequence[Sequence[float]], n_bands: int) -> np.ndarray:
    """All penalty combinations, (n_combinations, n_bands), ascending in band order (ties go first).

    `alphas` is either one list of penalties shared by every band or one list per band.
    """
    values = list(alphas)
    nested = len(values) > 0 and all(np.ndim(v) == 1 for v in values)
    if nested and len(values) != n_bands:
        raise ValueError(f"alphas has {len(values)} per-band grids, expected {n_bands} (one per band)")
    grids = [check_alphas(v) for v in values] if nested else [check_alphas(values)] * n_bands
    return np.array(list(itertools.product(*grids)), dtype=np.float64)


def is_fold_band(X: Any) -> bool:
    """Whether a band fits its own transform per fold (has `split`) rather than being a feature array."""
    return hasattr(X, "split")


def _check_bands(Xs: Sequence[Any], Y: np.ndarray, min_bands: int) -> list[Any]:
    """Raise a ValueError unless there are enough bands (2-D finite arrays or fold bands), each with Y's rows."""
    Xs = [X if is_fold_band(X) else np.asarray(X) for X in Xs]
    if len(Xs) < min_bands:
        raise ValueError(f"got {len(Xs)} feature band(s), expected at least {min_bands}")
    if Y.ndim != 2:
        raise ValueError(f"Y must be 2-D (n_images, n_targets), got shape {Y.shape}")
    for j, X in enumerate(Xs):
        if is_fold_band(X):
            if len(X) != Y.shape[0]:
                raise ValueError(f"Xs[{j}] has {len(X)} rows; expected {Y.shape[0]} rows as Y")
            continue
        if X.ndim != 2 or X.shape[0] != Y.shape[0]:
            raise ValueError(f"Xs[{j}] has shape {X.shape}; expected 2-D with {Y.shape[0]} rows as Y")
        if not np.isfinite(X).all():
            raise ValueError(f"Xs[{j}] has {np.count_nonzero(~np.isfinite(X))} non-finite values; expected finite")
    return Xs


def band_split(X: Any, train: np.ndarray, test: np.ndarray, partial: Partial | None = None) -> tuple:
    """A band's final (n_train, d) and (n_test, d) features of one fold, fitted on its training rows only.

    Arrays: nuisances removed (`partial`), then standardised with the training statistics; fold
    bands: their own `split`.
    """
    if is_fold_band(X):
        return X.split(train, test, partial)
    X_train, X_test = X[train].astype(np.float64), X[test].astype(np.float64)
    if partial is not None:
        X_train, X_test = partial(X_train, X_test)
    return _standardize(X_train, X_test)


def _kernels(
    Xs: list[Any], train: np.ndarray, test: np.ndarray, partial: Partial | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band training kernels (n_bands, n_train, n_train) and test-train kernels (n_bands, n_test, n_train)."""
    K, C = [], []
    for X in Xs:
        X_train, X_test = band_split(X, train, test, partial)
        K.append(X_train @ X_train.T)
        C.append(X_test @ X_train.T)
    return np.stack(K), np.stack(C)


def _ratio_groups(grid: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Combinations sharing the ratios α_last / α_j: (relative weights (n_bands,), indices into grid).

    Σ_j K_j / α_j = (Σ_j w_j K_j) / s with s = α_last and w_j = s / α_j, so a unit-penalty ridge on
    the banded kernel is a ridge with penalty s on the kernel Σ_j w_j K_j: every combination with
    the same weights w shares one eigendecomposition.
    """
    weights = grid[:, -1:] / grid
    keys = np.round(np.log(weights), 9)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return [(weights[first[g]], np.flatnonzero(inverse.ravel() == g)) for g in range(len(first))]


def _weighted_basis(K: np.ndarray, C: np.ndarray, weights: np.ndarray) -> _Basis:
    """Basis of the kernel Σ_j w_j K_j (train) with its test-train kernel Σ_j w_j C_j."""
    lam, Q = np.linalg.eigh(np.tensordot(weights, K, axes=1))
    return _Basis(U=Q, lam=np.clip(lam, 0.0, None), P=np.tensordot(weights, C, axes=1) @ Q)


def _fold_fit(
    K: np.ndarray,
    C: np.ndarray,
    grid: np.ndarray,
    y_train: np.ndarray,
    batch_size: int | None = None,
    leverage: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best combination index (m,), its leave-one-out MSE (m,) and held-out prediction (n_test, m).

    `y_train` must be finite; the first combination in grid order wins ties of the leave-one-out
    error. Combinations with the same penalty ratios share one eigendecomposition
    (`_ratio_groups`), and all their penalties one pass over the targets. `leverage`: the
    nuisance design's hat diagonal when nuisances were partialled out (`_ridge._loo_terms`).
    """
    ops = get_backend("numpy", "cpu", None)
    n_train, m = y_train.shape
    mean = y_train.mean(axis=0)
    yc = y_train - mean
    groups = []
    for weights, combos in _ratio_groups(grid):
        basis = _weighted_basis(K, C, weights)
        scales = grid[combos, -1]
        groups.append((basis, combos, scales, *_loo_terms(basis, scales, leverage)))
    best = np.zeros(m, dtype=np.intp)
    best_err = np.full(m, np.inf)
    pred = np.zeros((C.shape[1], m))
    step = batch_size or max(1, _BATCH_BYTES // (32 * n_train))
    for start in range(0, m, step):
        cols = slice(start, min(start + step, m))
        errors = np.empty((len(grid), cols.stop - start))
        for basis, combos, _, M, denom in groups:
            UTy = basis.U.T @ yc[:, cols]
            errors[combos] = _loo_errors(ops, basis, M, denom, yc[:, cols], UTy)
        chosen = np.argmin(errors, axis=0)  # first minimum in grid order: ties keep the earlier combination
        best[cols] = chosen
        best_err[cols] = errors[chosen, np.arange(errors.shape[1])]
        for basis, combos, _scales, _, _ in groups:
            hit = np.flatnonzero(np.isin(chosen, combos))
            if hit.size:
                scale = grid[chosen[hit], -1]
                UTy = basis.U.T @ yc[:, start + hit]
                pred[:, start + hit] = basis.P @ (UTy / (basis.lam[:, None] + scale[None, :]))
    return best, best_err, pred + mean


def fold_predict(
    Xs: Sequence[Any],
    Y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    grid: np.ndarray,
    nuisance: np.ndarray | None = None,
    batch_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One fold of the banded ridge: chosen combination (m,), held-out prediction and response (n_test, m), valid (m,).

    Everything fitted (nuisance removal, each band's standardisation or reduction, penalties,
    weights) sees the training rows only; the response returned is the test rows' residual after
    the training rows' nuisance fit (the raw test rows without nuisances).
    """
    partial = fold_partial(nuisance, train, test)
    y_train, y_test = Y[train].astype(np.float64), Y[test].astype(np.float64)
    if partial is not None:
        y_train, y_test = partial(y_train, y_test)
    valid = _valid(y_train, y_test)
    K, C = _kernels(list(Xs), train, test, partial)
    leverage = None if partial is None else partial.leverage()
    best, _, pred = _fold_fit(K, C, grid, np.where(valid, y_train, 0.0), batch_size, leverage)
    return best, pred, y_test, valid


def joint_ridge_cv(
    Xs: Sequence[Any],
    Y: np.ndarray,
    folds: Sequence[Fold],
    alphas: Sequence[float] | Sequence[Sequence[float]] = BANDED_ALPHAS,
    batch_size: int | None = None,
    nuisance: np.ndarray | None = None,
) -> RidgeCVResult:
    """Cross-validated banded ridge of any number of bands; scores only (see `banded_ridge_cv`).

    Returns a `RidgeCVResult` whose `alpha` is (n_folds, n_targets, n_bands). With one band it
    equals `ridge_cv` on the same grid. Bands may be fold bands (module docstring); `nuisance`
    as in `ridge_cv`.
    """
    Y = np.asarray(Y)
    Xs = _check_bands(Xs, Y, min_bands=1)
    folds = check_folds(folds, Y.shape[0])
    nuisance = check_nuisance(nuisance, Y.shape[0])
    grid = banded_grid(alphas, len(Xs))
    shape = (len(folds), Y.shape[1])
    r, r2 = np.full(shape, np.nan), np.full(shape, np.nan)
    alpha = np.full(shape + (len(Xs),), np.nan)
    for f, (train, test) in enumerate(folds):
        best, pred, y_test, valid = fold_predict(Xs, Y, train, test, grid, nuisance, batch_size)
        r[f] = np.where(valid, _pearson(pred, y_test), np.nan)
        r2[f] = np.where(valid, _r2(pred, y_test), np.nan)
        alpha[f] = np.where(valid[:, None], grid[best], np.nan)
    return RidgeCVResult(r=r.mean(axis=0), r2=r2.mean(axis=0), alpha=alpha, r_folds=r, r2_folds=r2)


def single_band_cv(
    X: Any,
    Y: np.ndarray,
    folds: Sequence[Fold],
    alphas: Sequence[float],
    batch_size: int | None = None,
    nuisance: np.ndarray | None = None,
) -> RidgeCVResult:
    """One band alone: `ridge_cv` for a feature array, the one-band `joint_ridge_cv` for a fold band.

    A fold band's features are final (a reduction's scores keep their variances), so they are not
    standardised again, which `ridge_cv` would do.
    """
    if is_fold_band(X):
        return joint_ridge_cv([X], Y, folds, np.unique(alphas), batch_size, nuisance)
    return ridge_cv(X, Y, folds, np.unique(alphas), batch_size, nuisance=nuisance)


def banded_ridge_cv(
    Xs: Sequence[Any],
    Y: np.ndarray,
    folds: Sequence[Fold],
    alphas: Sequence[float] | Sequence[Sequence[float]] = BANDED_ALPHAS,
    batch_size: int | None = None,
    nuisance: np.ndarray | None = None,
) -> BandedResult:
    """Joint ridge of two feature bands (e.g. activations, gradients) and each band's unique variance.

    Per fold each band is standardised on the training split (as `ridge_cv`); for every penalty
    pair (α_1, α_2) of the grid the banded ridge is the unit-penalty ridge on the hstacked
    X_j / √α_j, solved in kernel form (K = Σ_j X_j X_jᵀ / α_j; pairs with the same ratio
    α_1 / α_2 share one eigendecomposition per fold) with the intercept unpenalised. Each target
    takes the pair with the smallest exact leave-one-out error (ties to the earlier pair: smaller
    α_1, then smaller α_2). Each band is also fitted alone by `ridge_cv` over the union of the
    grid's penalties, and the unique variance of band j is R²_joint − R²(other band alone), both
    held-out and fold-averaged.

    Parameters
    ----------
    Xs : two bands: (n_images, n_features_j) feature arrays, finite, rows in Y's order, or fold
        bands (module docstring), e.g. the forward stack reduced on each training split.
    Y : (n_images, n_targets) responses.
    folds : (train, test) index pairs, e.g. from `make_folds`.
    alphas : penalties shared by both bands, or one list per band (grid = their product).
    batch_size : targets per batch; default from a ~512 MiB working-memory budget.
    nuisance : (n_images, p) regressors partialled out of every band and of Y inside each
        training split (`ridge_cv`), or None.

    Returns
    -------
    BandedResult
    """
    Y = np.asarray(Y)
    Xs = _check_bands(Xs, Y, min_bands=2)
    if len(Xs) != 2:
        raise ValueError(f"got {len(Xs)} feature bands, expected exactly 2 (e.g. activations, gradients)")
    grid = banded_grid(alphas, 2)
    joint = joint_ridge_cv(Xs, Y, folds, alphas, batch_size, nuisance)
    single = tuple(single_band_cv(X, Y, folds, grid[:, j], batch_size, nuisance) for j, X in enumerate(Xs))
    unique = np.stack([joint.r2 - single[1].r2, joint.r2 - single[0].r2])
    return BandedResult(
        r=joint.r,
        r2=joint.r2,
        alpha=joint.alpha,
        r_folds=joint.r_folds,
        r2_folds=joint.r2_folds,
        single=single,
        unique=unique,
    )
