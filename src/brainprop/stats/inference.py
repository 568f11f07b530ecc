"""The statistics every test uses: exact Wilcoxon signed-rank and its smallest p, BH-FDR, bootstrap, permutations."""

from __future__ import annotations

import numpy as np
from scipy import stats

from ..hierarchy.scores import pearson

__all__ = ["ALTERNATIVES", "bh_fdr", "bootstrap_ci", "p_min", "permutation_pvalue", "wilcoxon_exact"]

ALTERNATIVES = ("less", "greater", "two-sided")


# Permutation nulls equal to the observed score up to rounding count as "as extreme".
_TOL = 1e-12


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative={alternative!r} is not known; expected one of {list(ALTERNATIVES)}")


def p_min(n: int, alternative: str) -> float:
    """Smallest p an exact signed-rank test over `n` non-zero values can reach (2^-n, or 2^(1-n) two-sided)."""
    _check_alternative(alternative)
    if n < 1:
        return float("nan")
    return float(min(1.0, 2.0 ** (1 - n) if alternative == "two-sided" else 2.0**-n))


def wilcoxon_exact(values: np.ndarray, alternative: str) -> tuple[float, float, float, int]:
    """Exact Wilcoxon signed-rank test of `(n_subjects,)` values against 0.

    NaN values are dropped; zeros are dropped by the test itself (Wilcoxon's convention), so
    `p_min` is computed from the non-zero count. Returns (W, p, p_min, n_used) with n_used the
    number of finite values; W is scipy's statistic (R+ one-sided, min(R+, R-) two-sided).
    """
    _check_alternative(alternative)
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    nonzero = int(np.count_nonzero(x))
    if x.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    if nonzero == 0:
        return 0.0, 1.0, 1.0, int(x.size)
    res = stats.wilcoxon(x, alternative=alternative, method="exact")
    return float(res.statistic), float(res.pvalue), p_min(nonzero, alternative), int(x.size)


def bh_fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p of shape `(n,)`; NaN entries stay NaN and do not count."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = stats.false_discovery_control(p[finite], method="bh")
    return out


def bootstrap_ci(values: np.ndarray, n_boot: int, rng: np.random.Generator, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `(n,)` finite values, resampling with replacement."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0 or n_boot < 1:
        return float("nan"), float("nan")
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def permutation_pvalue(
    layer_depth: np.ndarray,
    unit_layer: np.ndarray,
    y: np.ndarray,
    alternative: str,
    n_permutations: int,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """Layer-order permutation test of Pearson(layer_depth[unit_layer], y).

    Parameters
    ----------
    layer_depth : (n_layers,) depth of every layer of the model (all layers, used or not).
    unit_layer : (n_units,) index into `layer_depth` of each unit's layer (ROI's best layer,
        or the layer itself for the temporal score).
    y : (n_units,) the other variable (ROI distance, T_max, activation best depth).

    The null reassigns the depths to the layers by a random permutation. Returns
    (observed r, p) with p = (1 + #null as or more extreme) / (1 + n_permutations) in the
    direction of `alternative`; p is NaN when r is.
    """
    _check_alternative(alternative)
    depth = np.asarray(layer_depth, dtype=np.float64)
    pos = np.asarray(unit_layer, dtype=np.int64)
    y = np.asarray(y, dtype=np.float64)
    observed = pearson(depth[pos], y)
    if not np.isfinite(observed):
        return observed, float("nan")
    perms = rng.permuted(np.broadcast_to(depth, (n_permutations, depth.size)), axis=1)
    yc = y - y.mean()
    if pos.size > 4 * depth.size:
        # Many units on few layers (targets of the target-level spatial score): the same null from
        # per-layer sums, O(n_permutations × n_layers) instead of × n_units.
        counts = np.bincount(pos, minlength=depth.size).astype(np.float64)
        sxy = perms @ np.bincount(pos, weights=yc, minlength=depth.size)
        sx = perms @ counts
        sxx = (perms**2) @ counts - sx**2 / pos.size
        with np.errstate(invalid="ignore", divide="ignore"):
            null = sxy / np.sqrt(np.maximum(sxx, 0.0) * (yc @ yc))
    else:
        x = perms[:, pos]
        xc = x - x.mean(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            null = (xc @ yc) / np.sqrt(np.einsum("ij,ij->i", xc, xc) * (yc @ yc))
    extreme = {
        "greater": null >= observed - _TOL,
        "less": null <= observed + _TOL,
        "two-sided": np.abs(null) >= abs(observed) - _TOL,
    }[alternative]
    return observed, float((1 + np.count_nonzero(extreme)) / (1 + n_permutations))
