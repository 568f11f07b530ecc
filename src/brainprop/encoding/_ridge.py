"""Cross-validated ridge with one penalty per target chosen by efficient leave-one-out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._backends import Backend, get_backend

__all__ = [
    "Partial",
    "RidgeCVResult",
    "check_alphas",
    "check_folds",
    "check_nuisance",
    "COMBINE_RULES",
    "TAIL_COUNT",
    "TargetNull",
    "combine_fold_p",
    "fold_partial",
    "ridge_cv",
    "ridge_cv_shared",
]

Fold = tuple[np.ndarray, np.ndarray]

# Working-memory budget of one target batch: about four (n_train, batch) float64 arrays.
_BATCH_BYTES = 2**29
# On a GPU the per-batch cost is mostly launch and transfer latency: batches 8 times larger.
_BATCH_BYTES_CUDA = 2**32


def _batch_size(ops: Backend, n_train: int) -> int:
    """Targets per batch from the device's working-memory budget."""
    budget = _BATCH_BYTES_CUDA if ops.device == "cuda" else _BATCH_BYTES
    return max(1, budget // (32 * n_train))


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
    p_folds : (n_folds, n_targets) each fold's one-sided permutation p of its r (`TargetNull`), or None.
    p_null : (n_targets,) the folds' p combined (`combine_fold_p`), or None without a null.
    """

    r: np.ndarray
    r2: np.ndarray
    alpha: np.ndarray
    r_folds: np.ndarray
    r2_folds: np.ndarray
    p_folds: np.ndarray | None = None
    p_null: np.ndarray | None = None


# How the target null combines its folds' p (`combine_fold_p`).
COMBINE_RULES = ("bonferroni", "cauchy")
# Below this many permutations reaching a fold's r, its p is the t tail (`_fold_p`).
TAIL_COUNT = 10


@dataclass(frozen=True)
class TargetNull:
    """Image permutations of held-out predictions against responses: the per-target null of r (METHOD.md §6).

    Within each fold's test rows the predictions are permuted against the responses (no refit);
    the fold's p is (1 + #{r_perm >= r}) / (1 + n_permutations), or the t tail where fewer than
    `TAIL_COUNT` permutations reach r (`_fold_p`), and the folds' p are combined by `combine`
    (`combine_fold_p`). The permutations depend on `seed` and the fold sizes only, so every layer
    and signal of a subject (one seed) sees the same ones.

    Attributes
    ----------
    n_permutations : permutations per fold (>= 1).
    seed : entropy of the permutations, e.g. (config seed, a number of the subject).
    combine : how the folds' p make one (`combine_fold_p`: bonferroni | cauchy).
    """

    n_permutations: int
    seed: tuple[int, ...]
    combine: str = "bonferroni"

    def __post_init__(self):
        if int(self.n_permutations) < 1:
            raise ValueError(f"n_permutations={self.n_permutations!r}; expected at least 1")
        if self.combine not in COMBINE_RULES:
            raise ValueError(f"combine={self.combine!r}; expected one of {list(COMBINE_RULES)}")

    def p_values(self, p_folds: np.ndarray) -> np.ndarray:
        """Each target's p from its folds' permutation p (n_folds, n_targets)."""
        return combine_fold_p(p_folds, self.combine, int(self.n_permutations))

    def fold(self, f: int, n_test: int) -> np.ndarray:
        """(n_permutations, n_test) permutations of fold f's test rows."""
        rng = np.random.default_rng([*self.seed, f])
        return rng.permuted(np.tile(np.arange(n_test), (int(self.n_permutations), 1)), axis=1)


def combine_fold_p(p_folds: np.ndarray, rule: str = "bonferroni", n_permutations: int | None = None) -> np.ndarray:
    """One p per target from its folds' permutation p (n_folds, n_targets), for folds that depend on each other.

    The folds' r are positively correlated under the null (each fold's model is trained on the
    other folds' test images), so their average cannot be tested against independently permuted
    folds. `bonferroni` (the default): n_folds × the smallest fold p, valid under any dependence;
    `cauchy`: the Cauchy combination (Liu & Xie 2020), more powerful and accurate at small p, but
    measured slightly above the level at p ≤ 0.05 (docs/encoding.md). A fold's p of 1 is taken as
    1 - 1 / (n_permutations + 1) (the Cauchy transform of 1 is -inf).
    """
    p = np.asarray(p_folds, dtype=np.float64)
    if rule == "bonferroni":
        return np.minimum(1.0, p.shape[0] * p.min(axis=0))
    if rule != "cauchy":
        raise ValueError(f"rule={rule!r}; expected one of {list(COMBINE_RULES)}")
    p = np.minimum(p, 1.0 - 1.0 / (1.0 + (n_permutations or 1000)))
    t = np.tan((0.5 - p) * np.pi).mean(axis=0)
    return 0.5 - np.arctan(t) / np.pi


@dataclass(frozen=True)
class _Basis:
    """Spectral basis of one fold's standardised, centred training features, as backend arrays.

    Attributes
    ----------
    U : (n_train, k) orthonormal columns spanning the training features' column space.
    lam : (k,) squared singular values (kernel eigenvalues) of the training features.
    P : (n_test, k) test features times training features transposed times U, so that the
        held-out prediction for penalty a is ``P @ (U.T @ y / (lam + a)) + mean(y)``.
    """

    U: Any
    lam: Any
    P: Any


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


@dataclass(frozen=True)
class Partial:
    """Least-squares removal of nuisance regressors (and an intercept), fitted on one fold's training rows.

    Attributes
    ----------
    design_train : (n_train, 1 + p) intercept and the nuisances standardised on the training rows.
    design_test : (n_test, 1 + p) the test rows' design, with the training rows' statistics.
    pinv : (1 + p, n_train) pseudo-inverse of `design_train` (collinear nuisances are handled).
    """

    design_train: np.ndarray
    design_test: np.ndarray
    pinv: np.ndarray

    def __call__(self, A_train: np.ndarray, A_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Residuals of (n_train, m) and (n_test, m) columns after the training rows' least-squares fit (float64)."""
        A_train, A_test = np.asarray(A_train, np.float64), np.asarray(A_test, np.float64)
        coef = self.pinv @ A_train
        return A_train - self.design_train @ coef, A_test - self.design_test @ coef

    def leverage(self) -> np.ndarray:
        """(n_train,) diagonal of the training rows' hat matrix of the design (intercept included)."""
        return np.einsum("ij,ji->i", self.design_train, self.pinv)


def check_nuisance(nuisance: np.ndarray | None, n_samples: int) -> np.ndarray | None:
    """The nuisance regressors as a finite float64 (n_samples, p) array (None stays None)."""
    if nuisance is None:
        return None
    N = np.asarray(nuisance, dtype=np.float64)
    N = N[:, None] if N.ndim == 1 else N
    if N.ndim != 2 or N.shape[0] != n_samples or N.shape[1] < 1:
        raise ValueError(
            f"nuisance has shape {np.shape(nuisance)}; expected (n_images, n_nuisances) with {n_samples} rows"
        )
    if not np.isfinite(N).all():
        raise ValueError(
            f"nuisance has {np.count_nonzero(~np.isfinite(N))} non-finite values; expected finite regressors "
            "(an extraction without a loss or without `grad` has no confidence or gradient norm)"
        )
    return N


def fold_partial(nuisance: np.ndarray | None, train: np.ndarray, test: np.ndarray) -> Partial | None:
    """The nuisance removal of one fold, fitted on its training rows only (None without nuisances)."""
    if nuisance is None:
        return None
    n_train, n_test = nuisance[train], nuisance[test]
    mean, sd = n_train.mean(axis=0), n_train.std(axis=0)
    keep = sd > 1e-12 * np.maximum(np.abs(mean), 1.0)  # constant on the training rows: the intercept covers it
    design_train = np.column_stack([np.ones(len(train)), (n_train[:, keep] - mean[keep]) / sd[keep]])
    design_test = np.column_stack([np.ones(len(test)), (n_test[:, keep] - mean[keep]) / sd[keep]])
    return Partial(design_train, design_test, np.linalg.pinv(design_train))


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


def _svd_basis(ops: Backend, X_train: Any, X_test: Any) -> _Basis:
    """Basis from the thin SVD of the training features (n_train > n_features)."""
    U, s, Vt = ops.svd(X_train)
    return _Basis(U=U, lam=s**2, P=(X_test @ Vt.T) * s)


def _kernel_basis(ops: Backend, X_train: Any, X_test: Any) -> _Basis:
    """Basis from the eigendecomposition of the kernel X X^T (n_features >= n_train)."""
    lam, Q = ops.eigh(X_train @ X_train.T)
    return _Basis(U=Q, lam=ops.clip0(lam), P=(X_test @ X_train.T) @ Q)


def _gram_basis(ops: Backend, X_train: Any, X_test: Any) -> _Basis:
    """Basis from the eigendecomposition of the Gram matrix X^T X (n_train > n_features).

    Equal to the thin SVD (U = X V / s) at a fraction of its cost; directions whose eigenvalue
    is below the Gram matrix's rounding level are dropped (their shrinkage is below 1e-9).
    """
    lam, V = ops.eigh(X_train.T @ X_train)
    lam_host = ops.to_numpy(lam)
    floor = max(lam_host.max(initial=0.0), 0.0) * max(X_train.shape) * np.finfo(ops.dtype).eps
    idx = ops.asindex(np.flatnonzero(lam_host > floor))
    V, lam = V[:, idx], lam[idx]
    s = lam**0.5
    return _Basis(U=(X_train @ V) / s, lam=lam, P=(X_test @ V) * s)


_DECOMPOSITIONS: dict[str, Callable[[Backend, Any, Any], _Basis]] = {
    "svd": _svd_basis,
    "gram": _gram_basis,
    "kernel": _kernel_basis,
}


def _solver(n_train: int, n_features: int) -> str:
    """Decomposition of a fold: the smaller of the Gram (d x d) and kernel (n x n) matrices."""
    return "gram" if n_train > n_features else "kernel"


def _decompose(ops: Backend, X_train: np.ndarray, X_test: np.ndarray) -> _Basis:
    """One decomposition per fold, in float64 on the backend's device, cast to its precision."""
    wide = ops if ops.dtype == "float64" else get_backend(ops.name, ops.device, "float64")
    kind = _solver(*X_train.shape)
    basis = _DECOMPOSITIONS[kind](wide, wide.asarray(X_train), wide.asarray(X_test))
    if wide is ops:
        return basis
    return _Basis(U=ops.cast(basis.U), lam=ops.cast(basis.lam), P=ops.cast(basis.P))


def _loo_terms(basis: _Basis, alphas: Any, leverage: Any = None) -> tuple[Any, Any]:
    """Shrinkage M (k, n_alphas) and leave-one-out denominators (n_train, n_alphas).

    With intercept, scikit-learn's `_RidgeGCV` treats the constant direction as unpenalised:
    looe = c / d with c = y + U M U^T y and d = 1 + diag(U M U^T) - (U M U^T 1 + 1) / n,
    where M = -lam / (lam + alpha); directions outside U have M = 0. The 1 / n is the
    intercept's leverage. With nuisance regressors partialled out of X and y (`fold_partial`),
    the fit is a ridge whose nuisance coefficients are unpenalised (Frisch-Waugh-Lovell), its hat
    matrix is the design's plus the ridge's, and `leverage` (n_train,), the design's hat diagonal
    with the intercept in it, takes the place of 1 / n: without it the leave-one-out error
    forgets that each row also fitted the nuisances, and favours the smallest penalty.
    """
    U, lam = basis.U, basis.lam
    n = U.shape[0]
    M = -lam[:, None] / (lam[:, None] + alphas[None, :])
    UT1 = U.sum(0)
    own = 1.0 / n if leverage is None else leverage[:, None]
    denom = 1.0 + (U**2) @ M - (U @ (M * UT1[:, None])) / n - own
    return M, denom


def _loo_errors(ops: Backend, basis: _Basis, M: Any, denom: Any, yc: Any, UTy: Any) -> np.ndarray:
    """Mean squared leave-one-out error of every penalty and target, (n_alphas, batch) float64."""
    errors = []
    for i in range(M.shape[1]):
        looe = basis.U @ (M[:, i, None] * UTy)
        looe += yc
        looe /= denom[:, i, None]
        looe *= looe
        errors.append(looe.mean(0))
    return ops.to_numpy(ops.stack(errors))


def _select(errors: np.ndarray) -> np.ndarray:
    """Index of the penalty with the smallest leave-one-out error per target, shape (batch,)."""
    best_err = np.full(errors.shape[1], np.inf)
    best = np.zeros(errors.shape[1], dtype=np.intp)
    for i, err in enumerate(errors):
        better = err < best_err  # strict, as RidgeCV: ties keep the earlier (smaller) penalty
        best_err[better] = err[better]
        best[better] = i
    return best


# Higham & Mary's probabilistic rounding model: a length-k float32 dot product errs by at most
# lam * sqrt(k) * u times the sum of its absolute terms, except with probability 2 exp(-lam^2 / 2).
_ROUNDING_LAMBDA = 8.0


@dataclass(frozen=True)
class _Search:
    """One fold's leave-one-out terms for the pruned penalty search.

    Attributes
    ----------
    M, denom : as returned by `_loo_terms`, in the backend's precision.
    keep2 : (k, n_alphas) squared share of each direction kept in the residual, (alpha / (lam + alpha))^2,
        in the screening precision.
    M2 : (k, n_alphas) M squared, in the screening precision.
    d2min, d2max : (n_alphas,) host float64 extremes over training rows of denom^2.
    q_mean : (n_alphas,) host float64 mean over training rows of 1 / denom^2.
    m_max : (n_alphas,) host float64 largest |M| of each penalty.
    U_low, M_low, denom_low : float32 copies for the screening pass, or None (backend already float32).
    B : (n_alphas, n_test, n_train) held-out prediction map P diag(1 / (lam + alpha)) U^T of each
        penalty (float64 backends, whose z = U^T y is then only needed in float32), or None.
    """

    M: Any
    denom: Any
    keep2: Any
    M2: Any
    d2min: np.ndarray
    d2max: np.ndarray
    q_mean: np.ndarray
    m_max: np.ndarray
    U_low: Any = None
    M_low: Any = None
    denom_low: Any = None
    B: Any = None


def _maps_pay_off(n_train: int, n_test: int, k: int, n_alphas: int, n_targets: int) -> bool:
    """Whether per-penalty prediction maps cost fewer flops than a float64 z = U^T y for every target."""
    maps = n_alphas * n_test * k * n_train + n_test * n_train * n_targets
    return maps < (k * n_train + n_test * k) * n_targets


def _search_terms(
    ops: Backend,
    low: Backend | None,
    basis: _Basis,
    alphas: np.ndarray,
    n_targets: int = 0,
    leverage: np.ndarray | None = None,
) -> _Search:
    """Leave-one-out terms of every penalty for one fold, plus float32 copies when `low` is given.

    With `low`, the prediction maps B are built when they cost less than a float64 U^T y for
    the fold's `n_targets` targets (`_maps_pay_off`). `leverage`: the nuisance design's hat
    diagonal (`Partial.leverage`), or None (intercept only).
    """
    A = ops.asarray(alphas)
    M, denom = _loo_terms(basis, A, None if leverage is None else ops.asarray(leverage))
    d2 = ops.to_numpy(denom) ** 2
    with np.errstate(divide="ignore"):
        q_mean = (1.0 / d2).mean(axis=0)
    keep = 1.0 + M  # alpha / (lam + alpha): each direction's share left in the residual
    screen = low or ops
    terms = {
        "M": M,
        "denom": denom,
        "keep2": screen.cast(keep * keep),
        "M2": screen.cast(M * M),
        "d2min": d2.min(axis=0),
        "d2max": d2.max(axis=0),
        "q_mean": q_mean,
        "m_max": np.abs(ops.to_numpy(M)).max(axis=0, initial=0.0),
    }
    if low is not None:
        terms.update(U_low=low.cast(basis.U), M_low=low.cast(M), denom_low=low.cast(denom))
        (n_train, k), n_test = basis.U.shape, basis.P.shape[0]
        if _maps_pay_off(n_train, n_test, k, len(alphas), n_targets):
            terms["B"] = ops.stack([(basis.P / (basis.lam + A[a])) @ basis.U.T for a in range(len(alphas))])
    return _Search(**terms)


@dataclass(frozen=True)
class _Norms:
    """Squared norms (host float64) of one batch that bound the leave-one-out errors.

    Attributes
    ----------
    ss_y : (batch,) centred training response, ||y||^2.
    ss_c : (n_alphas, batch) leave-one-out numerators, ||c||^2 (without forming c).
    ss_v : (n_alphas, batch) shrunk coordinates M z that the residual GEMM multiplies, ||M z||^2.
    slack : (batch,) bound on the rounding error of ss_c.
    dz : (batch,) bound on ||z - U^T y|| from computing z in the screening precision.
    """

    ss_y: np.ndarray
    ss_c: np.ndarray
    ss_v: np.ndarray
    slack: np.ndarray
    dz: np.ndarray

    def take(self, cols: np.ndarray) -> _Norms:
        """The norms of the targets `cols` of the batch."""
        return _Norms(
            ss_y=self.ss_y[cols],
            ss_c=self.ss_c[:, cols],
            ss_v=self.ss_v[:, cols],
            slack=self.slack[cols],
            dz=self.dz[cols],
        )


def _norms(zops: Backend, n: int, search: _Search, z: Any, ss_y: np.ndarray) -> _Norms:
    """||c||^2 and ||M z||^2 of every penalty and target by two small products, with error bounds.

    The leave-one-out residuals of penalty a are c / d with c = r + U (w * z), z = U^T y, r the
    part of y outside U and w = alpha / (lam + alpha), so ||c||^2 = ||y||^2 - ||z||^2 + sum w^2 z^2.
    `z` is computed in `zops`'s precision u: each coordinate is a length-n dot product, so
    ||dz|| <= (lam sqrt(n) + 2) u sqrt(k) ||y||; ss_c = ||y||^2 - sum (1 - w^2) z^2 then errs by at
    most 2 ||y|| ||dz|| + ||dz||^2, plus the rounding of the sums themselves.
    """
    k = z.shape[0]
    u = float(np.finfo(zops.dtype).eps)
    z2 = z * z
    ss_r = np.clip(ss_y - zops.to_numpy(z2.sum(0)), 0.0, None)
    norm_y = np.sqrt(ss_y)
    dz = (_ROUNDING_LAMBDA * np.sqrt(n) + 2.0) * u * np.sqrt(k) * norm_y
    slack = 2.0 * norm_y * dz + dz * dz + (_ROUNDING_LAMBDA * np.sqrt(n + k) + 16.0) * u * ss_y
    return _Norms(
        ss_y=ss_y,
        ss_c=ss_r + zops.to_numpy(search.keep2.T @ z2),
        ss_v=zops.to_numpy(search.M2.T @ z2),
        slack=slack,
        dz=dz,
    )


def _bounds(search: _Search, n: int, norms: _Norms) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds (n_alphas, batch) of the mean leave-one-out error mean((c / d)^2).

    It lies in [||c||^2 / max d^2, ||c||^2 / min d^2] / n, widened by the rounding of ||c||^2.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        lower = np.clip(norms.ss_c - norms.slack, 0.0, None) / (n * search.d2max[:, None])
        upper = (norms.ss_c + norms.slack) / (n * search.d2min[:, None])
    upper = np.where(search.d2min[:, None] > 0, upper, np.inf)
    return np.nan_to_num(lower, nan=0.0), upper


def _columns(ops: Backend, x: Any, cols: np.ndarray) -> Any:
    """The columns `cols` (sorted, unique) of x; x itself when they are all of them."""
    return x if cols.size == x.shape[1] else x[:, ops.asindex(cols)]


def _errors_of(ops: Backend, U: Any, M: Any, denom: Any, yc: Any, UTy: Any, cand: np.ndarray) -> np.ndarray:
    """Mean leave-one-out error where `cand` (n_alphas, batch) is True, inf elsewhere (host float64)."""
    errors = np.full(cand.shape, np.inf)
    for a in np.flatnonzero(cand.any(axis=1)):
        cols = np.flatnonzero(cand[a])
        looe = U @ (M[:, a, None] * _columns(ops, UTy, cols))
        looe += _columns(ops, yc, cols)
        looe /= denom[:, a, None]
        looe *= looe
        errors[a, cols] = ops.to_numpy(looe.mean(0))
    return errors


def _screen_tolerance(n: int, k: int, search: _Search, norms: _Norms, errors: np.ndarray) -> np.ndarray:
    """Rounding error bound (n_alphas, batch) of float32 leave-one-out errors.

    Row i of c = y + U (M z) is a length-k dot product with ||U_i|| <= 1 (so sum_i ||U_i||^2 = k):
    ||dc|| <= (lam sqrt(k) + 2) u sqrt(k) ||M z|| + 2 u ||y|| + max|M| ||dz|| under the
    probabilistic model above; then |d mean((c / d)^2)| <= (2 ||c|| ||dc|| + ||dc||^2) / (n min d^2),
    plus (n + 4) u relative for the division and the sum over rows.
    """
    u = float(np.finfo(np.float32).eps)
    dc = (
        (_ROUNDING_LAMBDA * np.sqrt(k) + 2.0) * u * np.sqrt(k * norms.ss_v)
        + 2.0 * u * np.sqrt(norms.ss_y)
        + search.m_max[:, None] * norms.dz
    )
    norm_c = np.sqrt(np.minimum(norms.ss_y, norms.ss_c + norms.slack))
    spread = (2.0 * norm_c * dc + dc * dc) / (n * search.d2min[:, None])
    return spread + (n + 4.0) * u * np.where(np.isfinite(errors), errors, 0.0)


def _choose(
    ops: Backend,
    low: Backend | None,
    basis: _Basis,
    search: _Search,
    y: Any,
    z: Any,
    ss_y: np.ndarray,
    y_low: Any = None,
) -> np.ndarray:
    """Penalty index of every target (batch,), equal to the argmin of all exact leave-one-out errors.

    `z` = U^T y in the screening precision (float32 when `low` is given, else the backend's);
    `y_low` is y in float32 when `low` is given (cast here when None). Penalties are pruned in
    stages that each keep every penalty whose error could still be the smallest: closed-form
    bounds; the error of the likeliest penalty as a threshold; the errors of the survivors
    (float32 with their rounding error bound on float64 backends); then, on float64 backends,
    the exact errors of the penalties still open.
    """
    n, k = basis.U.shape
    screen = low or ops
    norms = _norms(screen, n, search, z, ss_y)
    lower, upper = _bounds(search, n, norms)
    cand = lower <= upper.min(axis=0)
    chosen = np.argmax(cand, axis=0)
    cols = np.flatnonzero(cand.sum(axis=0) > 1)
    if not cols.size:
        return chosen
    if low is None:
        U, M, denom, y_screen = basis.U, search.M, search.denom, y
    else:
        U, M, denom = search.U_low, search.M_low, search.denom_low
        y_screen = low.cast(y) if y_low is None else y_low
    ys, zs = _columns(screen, y_screen, cols), _columns(screen, z, cols)
    sub, open_ = norms.take(cols), cand[:, cols]
    every = np.arange(cols.size)

    def tolerance(err: np.ndarray) -> np.ndarray:
        return np.zeros_like(err) if low is None else _screen_tolerance(n, k, search, sub, err)

    # The likeliest penalty (smallest ||c||^2 mean(1/d^2) / n) is evaluated first: its error
    # bounds the minimum far more tightly than the closed-form upper bounds.
    with np.errstate(invalid="ignore"):
        guess = np.argmin(np.where(open_, sub.ss_c * search.q_mean[:, None], np.inf), axis=0)
    first = np.zeros_like(open_)
    first[guess, every] = True
    err = _errors_of(screen, U, M, denom, ys, zs, first)
    open_ &= lower[:, cols] <= (err + tolerance(err))[guess, every]
    rest = open_ & ~first
    if rest.any():
        err = np.where(first, err, _errors_of(screen, U, M, denom, ys, zs, rest))
    if low is None:
        chosen[cols] = _select(np.where(open_, err, np.inf))
        return chosen
    tol = tolerance(err)
    open_ &= err - tol <= (err + tol).min(axis=0)
    cand[:, cols] = open_
    chosen = np.argmax(cand, axis=0)
    cols = np.flatnonzero(cand.sum(axis=0) > 1)
    if cols.size:
        y_open = _columns(ops, y, cols)
        err = _errors_of(ops, basis.U, search.M, search.denom, y_open, basis.U.T @ y_open, cand[:, cols])
        chosen[cols] = _select(err)
    return chosen


def _predict(
    ops: Backend, basis: _Basis, search: _Search, alphas: np.ndarray, y: Any, z: Any, chosen: np.ndarray
) -> np.ndarray:
    """Held-out predictions (n_test, batch) of centred y for the chosen penalty indices (backend array)."""
    if search.B is None:
        if search.U_low is not None:  # z is float32: the prediction needs it in the backend's precision
            z = basis.U.T @ y
        return basis.P @ (z / (basis.lam[:, None] + ops.asarray(alphas[chosen])[None, :]))
    pred = np.empty((search.B.shape[1], y.shape[1]))
    for a in np.unique(chosen):
        cols = np.flatnonzero(chosen == a)
        pred[:, cols] = ops.to_numpy(search.B[a] @ _columns(ops, y, cols))
    return ops.asarray(pred)


def _scores(ops: Backend, pred: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r and R² per column of two backend (n, m) arrays, as `_pearson` and `_r2` compute them.

    The per-element work stays on the backend (a GPU); only per-column sums reach the host.
    """
    pc = pred - pred.mean(0)
    yc = y - y.mean(0)
    cross, ss_pred, ss_tot = (ops.to_numpy(v.sum(0)) for v in (pc * yc, pc * pc, yc * yc))
    del pc, yc
    resid = y - pred
    ss_res = ops.to_numpy((resid * resid).sum(0))
    # Constancy tested exactly (as scipy does): centring a constant column can leave rounding noise.
    den = np.sqrt(ss_pred * ss_tot) * ops.column_ok(pred)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.where(den > 0, cross / den, np.nan), np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.nan))


def _fold_p(ops: Backend, pred: Any, y: Any, perms: np.ndarray, r: np.ndarray) -> np.ndarray:
    """One-sided permutation p of each column's Pearson r (`r`, host) of pred against y over row permutations, (m,).

    Where fewer than `TAIL_COUNT` permutations reach r the count only bounds p (its floor is
    1 / (B + 1)), and p is the tail of the permutation distribution's t approximation instead:
    permuting rows leaves r with mean 0 and variance 1 / (n − 1) exactly, the moments of a
    Pearson r's t-test with n − 2 degrees of freedom (docs/encoding.md, "The encoding null").
    """
    from scipy.special import stdtr

    # float32 on the host: the null is B gathers of (n_test, m), memory-bound, and a count needs no more precision.
    pc = ops.to_numpy(pred - pred.mean(0)).astype(np.float32)
    yc = ops.to_numpy(y - y.mean(0)).astype(np.float32)
    # A permutation's cross product within float32 rounding of the observed one counts as reaching it.
    reach = np.einsum("ij,ij->j", pc, yc) - 1e-5 * np.sqrt((pc * pc).sum(0) * (yc * yc).sum(0))
    exceed = np.zeros(pc.shape[1], dtype=np.int64)
    for perm in perms:
        exceed += np.einsum("ij,ij->j", pc[perm], yc) >= reach
    df = pc.shape[0] - 2
    rc = np.clip(np.nan_to_num(r), -1 + 1e-12, 1 - 1e-12)
    tail = stdtr(df, -rc * np.sqrt(df / (1.0 - rc**2)))
    return np.where(exceed >= TAIL_COUNT, (1.0 + exceed) / (1.0 + len(perms)), tail)


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
    return _column_ok(y_train) & _column_ok(y_test)


def _column_ok(y: np.ndarray) -> np.ndarray:
    """Columns finite and non-constant, shape (batch,)."""
    return np.isfinite(y).all(axis=0) & (np.ptp(y, axis=0) > 0)


def _fit_batch(
    ops: Backend,
    low: Backend | None,
    basis: _Basis,
    search: _Search,
    alphas: np.ndarray,
    y_train: np.ndarray,
    y_test: np.ndarray,
    perms: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Chosen penalty, held-out r and R² of one batch of targets, each (batch,), and the fold's p.

    With `perms` (n_permutations, n_test) the last item is each target's one-sided p of r under
    permutations of the held-out predictions against the responses (`_fold_p`), (batch,); else None.

    The responses travel to the backend in their own precision and are checked, centred and
    scored there (so a GPU does the per-element work); the means are in the backend's precision.
    """
    y = ops.asarray(y_train)
    del y_train
    valid = ops.column_ok(y) & _column_ok(y_test)
    if not valid.all():
        y[:, ops.asindex(np.flatnonzero(~valid))] = 0.0
    mean = ops.to_numpy(y.mean(0))
    y -= ops.asarray(mean)[None, :]
    ss_y = ops.to_numpy((y * y).sum(0))
    y_low = low.cast(y) if low is not None else None
    z = basis.U.T @ y if low is None else search.U_low.T @ y_low
    chosen = _choose(ops, low, basis, search, y, z, ss_y, y_low)
    del y_low
    pred = _predict(ops, basis, search, alphas, y, z, chosen)
    del y, z
    # Scored about the training mean, so that float32 keeps the small variations of
    # heavily shrunk predictions (r and R² do not change with a shift of both).
    y_test = ops.asarray(y_test)
    y_test -= ops.asarray(mean)[None, :]
    r, r2 = _scores(ops, pred, y_test)
    nan = np.full(valid.shape, np.nan)
    r = np.where(valid, r, nan)
    p = None
    if perms is not None:
        p = np.where(np.isfinite(r), _fold_p(ops, pred, y_test, perms, r), np.nan)
    return np.where(valid, alphas[chosen], nan), r, np.where(valid, r2, nan), p


def _check_xy(X: np.ndarray, Ys: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Raise a ValueError unless X is 2-D and finite and every Y is 2-D with X's rows."""
    if len(Ys) == 0:
        raise ValueError("Ys is empty; expected one (n_images, n_targets) array per subject")
    Ys = [np.asarray(Y) for Y in Ys]
    for s, Y in enumerate(Ys):
        if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
            where = "" if len(Ys) == 1 else f" (Ys[{s}])"
            raise ValueError(f"X and Y{where} must be 2-D with equal rows, got shapes {X.shape} and {Y.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"X has {np.count_nonzero(~np.isfinite(X))} non-finite values; expected finite features")
    return Ys


def ridge_cv_shared(
    X: np.ndarray,
    Ys: Sequence[np.ndarray],
    folds: Sequence[Fold],
    alphas: Sequence[float] | np.ndarray,
    batch_size: int | None = None,
    backend: str | Backend = "numpy",
    device: str = "auto",
    dtype: Any = None,
    nuisance: np.ndarray | None = None,
    nulls: Sequence[TargetNull | None] | None = None,
) -> list[RidgeCVResult]:
    """`ridge_cv` of several response sets that share X: one decomposition per fold serves all.

    For subjects who saw the same images in the same order (e.g. THINGS-MEG), each fold's
    features are standardised and decomposed once and every subject's targets are fitted from
    that basis; each result is identical to a separate `ridge_cv` call with the same arguments.

    Parameters
    ----------
    X : (n_images, n_features) features, finite.
    Ys : one (n_images, n_targets_s) response array per subject, rows in X's order.
    folds, alphas, batch_size, backend, device, dtype, nuisance : as in `ridge_cv`.
    nulls : one `TargetNull` (or None) per entry of `Ys`, or None for no null.

    Returns
    -------
    list of RidgeCVResult, one per entry of `Ys`.
    """
    X = np.asarray(X)
    Ys = _check_xy(X, Ys)
    folds = check_folds(folds, X.shape[0])
    alphas = check_alphas(alphas)
    nuisance = check_nuisance(nuisance, X.shape[0])
    ops = get_backend(backend, device, dtype)
    low = get_backend(ops.name, ops.device, "float32") if ops.dtype == "float64" else None
    nulls = list(nulls) if nulls is not None else [None] * len(Ys)
    if len(nulls) != len(Ys):
        raise ValueError(f"{len(nulls)} nulls for {len(Ys)} response sets; expected one (or None) per set")
    shapes = [(len(folds), Y.shape[1]) for Y in Ys]
    scores = [tuple(np.full(shape, np.nan) for _ in range(3)) for shape in shapes]
    p_folds = [None if n is None else np.full(shape, np.nan) for n, shape in zip(nulls, shapes)]
    for f, (train, test) in enumerate(folds):
        partial = fold_partial(nuisance, train, test)
        X_train, X_test = X[train].astype(np.float64), X[test].astype(np.float64)
        if partial is not None:
            X_train, X_test = partial(X_train, X_test)
        X_train, X_test = _standardize(X_train, X_test)
        basis = _decompose(ops, X_train, X_test)
        del X_train, X_test
        leverage = None if partial is None else partial.leverage()
        search = _search_terms(ops, low, basis, alphas, sum(Y.shape[1] for Y in Ys), leverage)
        step = batch_size or _batch_size(ops, len(train))
        for Y, (alpha, r, r2), null, p_fold in zip(Ys, scores, nulls, p_folds):
            perms = None if null is None else null.fold(f, len(test))
            for start in range(0, Y.shape[1], step):
                cols = slice(start, min(start + step, Y.shape[1]))
                y_train, y_test = Y[train, cols], Y[test, cols]
                if partial is not None:
                    y_train, y_test = partial(y_train, y_test)
                alpha[f, cols], r[f, cols], r2[f, cols], p = _fit_batch(
                    ops, low, basis, search, alphas, y_train, y_test, perms
                )
                if p is not None:
                    p_fold[f, cols] = p
    return [
        RidgeCVResult(
            r=r.mean(axis=0),
            r2=r2.mean(axis=0),
            alpha=alpha,
            r_folds=r,
            r2_folds=r2,
            p_folds=p_fold,
            p_null=None if null is None else null.p_values(p_fold),
        )
        for (alpha, r, r2), p_fold, null in zip(scores, p_folds, nulls)
    ]


def ridge_cv(
    X: np.ndarray,
    Y: np.ndarray,
    folds: Sequence[Fold],
    alphas: Sequence[float] | np.ndarray,
    batch_size: int | None = None,
    backend: str | Backend = "numpy",
    device: str = "auto",
    dtype: Any = None,
    nuisance: np.ndarray | None = None,
    null: TargetNull | None = None,
) -> RidgeCVResult:
    """Cross-validated ridge scores, equal to StandardScaler + RidgeCV(alpha_per_target) per fold.

    Per fold the training features are standardised (StandardScaler: training mean and
    population std, scale 1 for constant columns) and decomposed once; the penalty of each
    target is chosen by efficient leave-one-out (RidgeCV's GCV mode, intercept unpenalised,
    ties to the smallest penalty), and held-out predictions are scored. Standardisation,
    the decomposition (eigendecomposition of the Gram or kernel matrix, whichever is smaller),
    target means and scoring run in float64; target centring, leave-one-out errors and
    predictions run on the chosen backend (NumPy float64 by default: equal to scikit-learn
    to 1e-6; PyTorch float32: r within about 1e-4 of it, the same penalties up to near-ties
    of the leave-one-out error). Penalties are searched by pruning (see docs/encoding.md):
    closed-form bounds, then float32 errors, then exact errors only where the choice is still
    open; the result is the exhaustive argmin. Targets are processed in batches, so `Y` may
    be a large float32 (or memory-mapped) array. Feature columns constant over all of X
    should be dropped first: they do not change the result, only the cost. Targets not
    finite or constant in a split get NaN in that fold.

    Parameters
    ----------
    X : (n_images, n_features) features, finite.
    Y : (n_images, n_targets) responses.
    folds : (train, test) index pairs, e.g. from `make_folds`.
    alphas : candidate penalties (> 0).
    batch_size : targets per batch; default from a working-memory budget (512 MiB; 4 GiB on cuda).
    backend : "numpy" or "torch" (imported only when chosen), or a `Backend`.
    device : "auto", "cpu" or "cuda" ("cuda" only with torch; "auto" takes cuda when available).
    dtype : "float32" or "float64" for the backend arithmetic; None for the backend's default
        (numpy: float64, torch: float32).
    nuisance : (n_images, p) regressors partialled out of the features and the targets inside
        each training split (`fold_partial`: least squares with an intercept fitted on the
        training rows, applied to both splits; the held-out scores are then those of the
        residual responses), or None. The leave-one-out penalty choice treats that fit as fixed.
    null : image permutations of the held-out predictions for each target's p (`TargetNull`), or None.

    Returns
    -------
    RidgeCVResult
    """
    return ridge_cv_shared(X, [Y], folds, alphas, batch_size, backend, device, dtype, nuisance, [null])[0]
