"""Cross-validated ridge with one penalty per target chosen by efficient leave-one-out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["RidgeCVResult", "ridge_cv", "check_alphas", "check_folds"]

Fold = tuple[np.ndarray, np.ndarray]

# Working-memory budget of one target batch: about four (n_train, batch) float64 arrays.
_BATCH_BYTES = 2**29


@dataclass(frozen=True)
class RidgeCVResult:
    """Cross-validated scores of a ridge encoding model (NaN for a target not fitted in a fold).

    Attributes
    ----------
    r : (n_targets,) Pearson r between held-out prediction and response, averaged over folds.
    r2 : (n_targets,) coefficient of determination (scikit-learn `r2_score`), averaged over folds.
    alpha : (n_folds, n_targets) penalty chosen by leave-one-out inside each training split.
    r_folds : (n_folds, n_targets) Pearson r of each fold.
    r2_folds : (n_folds, n_targets) R² of each fold.
    """

    r: np.ndarray
    r2: np.ndarray
    alpha: np.ndarray
    r_folds: np.ndarray
    r2_folds: np.ndarray


@dataclass(frozen=True)
class _Basis:
    """Spectral basis of one fold's standardised, centred training features.

    Attributes
    ----------
    U : (n_train, k) orthonormal columns spanning the training features' column space.
    lam : (k,) squared singular values (kernel eigenvalues) of the training features.
    P : (n_test, k) test features times training features transposed times U, so that the
        held-out prediction for penalty a is ``P @ (U.T @ y / (lam + a)) + mean(y)``.
    """

    U: np.ndarray
    lam: np.ndarray
    P: np.ndarray


def check_alphas(alphas: Sequence[float] | np.ndarray) -> np.ndarray:
    """Return the penalties as a sorted float64 array (ascending, so ties go to the smallest)."""
    values = np.asarray(alphas, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"alphas must be a non-empty 1-D list of penalties, got shape {values.shape}")
    if not np.all(np.isfinite(values) & (values > 0)):
        raise ValueError(f"alphas must be finite and > 0, got {values.tolist()}")
    return np.unique(values)


def check_folds(folds: Sequence[Fold], n_samples: int) -> list[Fold]:
    """Check that every fold is a disjoint (train, test) pair of indices into `n_samples` rows."""
    if len(folds) == 0:
        raise ValueError("folds is empty; expected (train, test) index pairs, e.g. from make_folds")
    checked = []
    for i, (train, test) in enumerate(folds):
        train, test = np.asarray(train, dtype=np.intp), np.asarray(test, dtype=np.intp)
        for name, idx in (("train", train), ("test", test)):
            if idx.ndim != 1 or idx.size < 2:
                raise ValueError(f"fold {i}: {name} has {idx.size} samples, expected at least 2")
            if idx.min() < 0 or idx.max() >= n_samples:
                raise ValueError(f"fold {i}: {name} indices outside [0, {n_samples})")
        if np.intersect1d(train, test).size:
            raise ValueError(f"fold {i}: train and test share samples")
        checked.append((train, test))
    return checked


def _standardize(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardise both splits with training statistics, then centre as RidgeCV does (float64)."""
    n = X_train.shape[0]
    mean = X_train.mean(axis=0)
    var = X_train.var(axis=0)
    # StandardScaler's test for columns indistinguishable from constant: they get scale 1.
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    scale = np.where(constant, 1.0, np.sqrt(var))
    X_train = (X_train - mean) / scale
    X_test = (X_test - mean) / scale
    offset = X_train.mean(axis=0)
    X_train -= offset
    X_test -= offset
    return X_train, X_test


def _svd_basis(X_train: np.ndarray, X_test: np.ndarray) -> _Basis:
    """Basis from the thin SVD of the training features (n_train > n_features)."""
    U, s, Vt = np.linalg.svd(X_train, full_matrices=False)
    return _Basis(U=U, lam=s**2, P=(X_test @ Vt.T) * s)


def _kernel_basis(X_train: np.ndarray, X_test: np.ndarray) -> _Basis:
    """Basis from the eigendecomposition of the kernel X X^T (n_features >= n_train)."""
    lam, Q = np.linalg.eigh(X_train @ X_train.T)
    return _Basis(U=Q, lam=np.clip(lam, 0.0, None), P=(X_test @ X_train.T) @ Q)


_DECOMPOSITIONS: dict[str, Callable[[np.ndarray, np.ndarray], _Basis]] = {
    "svd": _svd_basis,
    "kernel": _kernel_basis,
}


def _decompose(X_train: np.ndarray, X_test: np.ndarray) -> _Basis:
    """One decomposition per fold: SVD when samples outnumber features, kernel otherwise."""
    kind = "svd" if X_train.shape[0] > X_train.shape[1] else "kernel"
    return _DECOMPOSITIONS[kind](X_train, X_test)


def _loo_terms(basis: _Basis, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shrinkage M (k, n_alphas) and leave-one-out denominators (n_train, n_alphas).

    With intercept, scikit-learn's `_RidgeGCV` treats the constant direction as unpenalised:
    looe = c / d with c = y + U M U^T y and d = 1 + diag(U M U^T) - (U M U^T 1 + 1) / n,
    where M = -lam / (lam + alpha); directions outside U have M = 0.
    """
    U, lam = basis.U, basis.lam
    n = U.shape[0]
    M = -lam[:, None] / (lam[:, None] + alphas[None, :])
    UT1 = U.sum(axis=0)
    denom = 1.0 + (U**2) @ M - (U @ (M * UT1[:, None]) + 1.0) / n
    return M, denom


def _select(basis: _Basis, M: np.ndarray, denom: np.ndarray, yc: np.ndarray, UTy: np.ndarray) -> np.ndarray:
    """Index of the penalty with the smallest leave-one-out squared error per target, shape (batch,)."""
    best_err = np.full(yc.shape[1], np.inf)
    best = np.zeros(yc.shape[1], dtype=np.intp)
    for i in range(M.shape[1]):
        looe = basis.U @ (M[:, i, None] * UTy)
        looe += yc
        looe /= denom[:, i, None]
        err = np.mean(np.square(looe, out=looe), axis=0)
        better = err < best_err  # strict, as RidgeCV: ties keep the earlier (smaller) penalty
        best_err[better] = err[better]
        best[better] = i
    return best


def _pearson(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r per column of two (n, m) arrays, NaN where either column is constant."""
    pc = pred - pred.mean(axis=0)
    yc = y - y.mean(axis=0)
    # Test constancy exactly (as scipy does): centring a constant column can leave rounding noise.
    den = np.sqrt((pc**2).sum(axis=0) * (yc**2).sum(axis=0)) * (np.ptp(pred, axis=0) > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (pc * yc).sum(axis=0) / den, np.nan)


def _r2(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """R² per column (scikit-learn `r2_score`, raw values), NaN where the response is constant."""
    ss_res = ((y - pred) ** 2).sum(axis=0)
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.nan)


def _valid(y_train: np.ndarray, y_test: np.ndarray) -> np.ndarray:
    """Targets finite and non-constant in both splits, shape (batch,)."""
    ok = np.isfinite(y_train).all(axis=0) & np.isfinite(y_test).all(axis=0)
    return ok & (np.ptp(y_train, axis=0) > 0) & (np.ptp(y_test, axis=0) > 0)


def _fit_batch(
    basis: _Basis, M: np.ndarray, denom: np.ndarray, alphas: np.ndarray,
    y_train: np.ndarray, y_test: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chosen penalty, held-out r and R² of one batch of targets, each (batch,)."""
    valid = _valid(y_train, y_test)
    y_train = np.where(valid, y_train, 0.0)
    mean = y_train.mean(axis=0)
    yc = y_train - mean
    UTy = basis.U.T @ yc
    chosen = alphas[_select(basis, M, denom, yc, UTy)]
    pred = basis.P @ (UTy / (basis.lam[:, None] + chosen[None, :])) + mean
    nan = np.full(valid.shape, np.nan)
    return (np.where(valid, chosen, nan), np.where(valid, _pearson(pred, y_test), nan),
            np.where(valid, _r2(pred, y_test), nan))


def ridge_cv(
    X: np.ndarray,
    Y: np.ndarray,
    folds: Sequence[Fold],
    alphas: Sequence[float] | np.ndarray,
    batch_size: int | None = None,
) -> RidgeCVResult:
    """Cross-validated ridge scores, equal to StandardScaler + RidgeCV(alpha_per_target) per fold.

    Per fold the training features are standardised (StandardScaler: training mean and
    population std, scale 1 for constant columns) and decomposed once; the penalty of each
    target is chosen by efficient leave-one-out (RidgeCV's GCV mode, intercept unpenalised,
    ties to the smallest penalty), and held-out predictions are scored. All arithmetic is in
    float64; targets are processed in batches, so `Y` may be a large float32 (or memory-mapped)
    array. Feature columns constant over all of X should be dropped first: they do not change
    the result, only the cost. Targets not finite or constant in a split get NaN in that fold.

    Parameters
    ----------
    X : (n_images, n_features) features, finite.
    Y : (n_images, n_targets) responses.
    folds : (train, test) index pairs, e.g. from `make_folds`.
    alphas : candidate penalties (> 0).
    batch_size : targets per batch; default from a ~512 MiB working-memory budget.

    Returns
    -------
    RidgeCVResult
    """
    X, Y = np.asarray(X), np.asarray(Y)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must be 2-D with equal rows, got shapes {X.shape} and {Y.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"X has {np.count_nonzero(~np.isfinite(X))} non-finite values; expected finite features")
    folds = check_folds(folds, X.shape[0])
    alphas = check_alphas(alphas)
    n_targets = Y.shape[1]
    shape = (len(folds), n_targets)
    alpha, r, r2 = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    for f, (train, test) in enumerate(folds):
        X_train, X_test = _standardize(X[train].astype(np.float64), X[test].astype(np.float64))
        basis = _decompose(X_train, X_test)
        del X_train, X_test
        M, denom = _loo_terms(basis, alphas)
        step = batch_size or max(1, _BATCH_BYTES // (32 * len(train)))
        for start in range(0, n_targets, step):
            cols = slice(start, min(start + step, n_targets))
            alpha[f, cols], r[f, cols], r2[f, cols] = _fit_batch(
                basis, M, denom, alphas,
                Y[train, cols].astype(np.float64), Y[test, cols].astype(np.float64),
            )
    return RidgeCVResult(r=r.mean(axis=0), r2=r2.mean(axis=0), alpha=alpha, r_folds=r, r2_folds=r2)
