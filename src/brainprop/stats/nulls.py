"""Per-subject nulls of T1, S1a and S1b that keep what neighbouring layers share (METHOD.md §6).

Each per-subject test is a Pearson r between a *fixed* variable and a *moving* profile over
units: T1 correlates the layers' depths (fixed) with their T_max (moving); S1a the ROIs'
distances from V1 (fixed) with their best depth (moving); S1b the activations' best depth
(fixed) with the signal's (moving). In a trained network the moving profile is smooth along the
fixed variable (neighbouring layers are alike), and a smooth profile correlates with its axis by
chance far more often than an exchangeable shuffle allows. The nulls here (`NULLS`) are looked
up by name (config `stats.subject_null`):

- `variogram` (default): surrogates of the moving profile with its smoothness along the fixed
  variable, by variogram matching (Burt et al. 2020, the algorithm of `brainsmash`): each
  surrogate permutes the profile, smooths it with a Gaussian kernel, and rescales it
  (a·smoothed + √b·white noise) so that its variogram matches the observed one; the kernel width
  is the one, among `VARIOGRAM_WIDTHS` (in units of the median spacing of the positions), whose
  least-squares fit of the short-range variogram (up to the 25th percentile of the distances, as
  `brainsmash` by default) is best, chosen per surrogate.
- `gp`: a parametric version: a Gaussian process with a squared-exponential kernel and a
  nugget is fitted to the standardised profile by maximum likelihood over a grid
  (`GP_LENGTHS` × `GP_NUGGETS`), and surrogates are drawn from it.
- `layer_shuffle`: the former null: the model's layer depths reassigned to its layers by a
  random permutation (`brainprop.stats.inference.permutation_pvalue`). It treats layers as
  exchangeable and rejects a smooth null far above its level (docs/calibration.md); kept as a
  named variant so old results can be reproduced.

Units that share a position (targets of one ROI in the target-level spatial score, ROIs with
the same best activation layer in S1b) are collapsed to their mean: the surrogates move the
group means, the within-group sum of squares stays, and the statistic is the Pearson r over
units written with group sums (so thousands of targets cost what a handful of ROIs cost).
Everything is computed in float64.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from .inference import _TOL, _check_alternative, permutation_pvalue

__all__ = [
    "GP_LENGTHS",
    "GP_NUGGETS",
    "NULLS",
    "VARIOGRAM_WIDTHS",
    "gp_surrogates",
    "subject_null_pvalue",
    "surrogate_pvalue",
    "variogram_surrogates",
]

# Kernel widths tried by the variogram matching, in units of the median spacing of the positions
# (0: no smoothing, the permutation itself).
VARIOGRAM_WIDTHS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
# Distance bins of the variogram: this many equal bins up to this percentile of the pairwise distances
# (brainsmash's default, pv = 25: the short-range variogram, where a smooth accident and a smooth
# trend differ least, and a noisy trend looks rough)
_N_BINS = 6
_MAX_PERCENTILE = 25.0
# ... and at least up to the fifth smallest distinct distance, so that a short profile has a variogram
_MIN_DISTANCES = 5
# Length-scales (in units of the median spacing) and nugget fractions of the fitted Gaussian process.
GP_LENGTHS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)
GP_NUGGETS = (1e-3, 0.05, 0.2, 0.5)


def _spacing(pos: np.ndarray) -> float:
    steps = np.diff(np.sort(pos))
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else 1.0


def _bin_forms(pos: np.ndarray) -> np.ndarray:
    """Quadratic forms `(n_bins, n, n)` of the variogram: γ_b(x) = xᵀ M_b x is the mean of ½(x_i − x_j)²
    over the pairs whose distance falls in bin b (`_N_BINS` equal bins up to the `_MAX_PERCENTILE`-th
    percentile of the pairwise distances; empty bins dropped)."""
    n = pos.size
    i, j = np.triu_indices(n, 1)
    dist = np.abs(pos[i] - pos[j])
    top = np.percentile(dist, _MAX_PERCENTILE)
    distinct = np.unique(dist)
    if np.count_nonzero(distinct <= top + 1e-12) < _MIN_DISTANCES:  # few points: reach the 5th distance
        top = distinct[min(_MIN_DISTANCES, distinct.size) - 1]
    edges = np.linspace(0.0, top, _N_BINS + 1)
    which = np.clip(np.digitize(dist, edges[1:-1], right=True), 0, _N_BINS - 1)
    forms = []
    for b in range(_N_BINS):
        pick = (which == b) & (dist <= top + 1e-12)
        if not pick.any():
            continue
        laplacian = np.zeros((n, n))
        np.add.at(laplacian, (i[pick], i[pick]), 1.0)
        np.add.at(laplacian, (j[pick], j[pick]), 1.0)
        np.add.at(laplacian, (i[pick], j[pick]), -1.0)
        np.add.at(laplacian, (j[pick], i[pick]), -1.0)
        forms.append(laplacian / (2.0 * pick.sum()))
    return np.stack(forms)


@functools.lru_cache(maxsize=256)
def _variogram_geometry(positions: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The variogram's bin forms `(n_bins, n, n)` and the row-normalised smoothing kernels
    `(n_widths, n, n)` of float64 positions given as bytes (cached: one model's layers recur)."""
    pos = np.frombuffer(positions, dtype=np.float64)
    n = pos.size
    dist = np.abs(pos[:, None] - pos[None, :])
    spacing = _spacing(pos)
    kernels = []
    for width in VARIOGRAM_WIDTHS:
        kernel = np.exp(-(dist**2) / (2.0 * (width * spacing) ** 2)) if width > 0 else np.eye(n)
        kernels.append(kernel / kernel.sum(axis=1, keepdims=True))
    forms, kernels = _bin_forms(pos), np.stack(kernels)
    forms.flags.writeable = kernels.flags.writeable = False
    return forms, kernels


def variogram_surrogates(
    profile: np.ndarray, positions: np.ndarray, n_surrogates: int, rng: np.random.Generator
) -> np.ndarray:
    """Variogram-matched surrogates `(n_surrogates, n)` of `profile` `(n,)` at `positions` `(n,)` (distinct).

    Burt et al. (2020), `brainsmash`'s algorithm on a 1-D axis: permute, smooth with a Gaussian
    kernel of each width in `VARIOGRAM_WIDTHS`, regress the observed variogram on the surrogate's
    (γ_obs ≈ a·γ_sur + b, least squares over the distance bins), keep the width with the smallest
    residual (per surrogate), and return √|a|·smoothed + √|b|·N(0, 1), shifted to the profile's mean.
    With fewer than three non-empty distance bins (three points) the surrogates are permutations.
    """
    x = np.asarray(profile, dtype=np.float64)
    pos = np.asarray(positions, dtype=np.float64)
    n = x.size
    forms, kernels = _variogram_geometry(pos.tobytes())
    perms = rng.permuted(np.broadcast_to(x, (n_surrogates, n)), axis=1)
    if forms.shape[0] < 3:  # a two-parameter fit needs three bins (three points have two): permutations
        return perms
    observed = (forms @ x) @ x
    n_widths, n_bins = kernels.shape[0], forms.shape[0]
    # Matrix products (BLAS) rather than einsum: smooth[s, w] = kernels[w] @ perms[s], and
    # gamma[s, w, b] = smooth[s, w]ᵀ forms[b] smooth[s, w].
    smooth = (perms @ kernels.transpose(2, 0, 1).reshape(n, n_widths * n)).reshape(n_surrogates, n_widths, n)
    flat = smooth.reshape(-1, n)
    projected = (flat @ forms.transpose(1, 0, 2).reshape(n, n_bins * n)).reshape(-1, n_bins, n)
    gamma = (projected * flat[:, None, :]).sum(axis=2).reshape(n_surrogates, n_widths, n_bins)
    gc = gamma - gamma.mean(axis=2, keepdims=True)
    oc = observed - observed.mean()
    a = (gc @ oc) / np.maximum((gc * gc).sum(axis=2), 1e-300)
    b = observed.mean() - a * gamma.mean(axis=2)
    sse = ((a[..., None] * gamma + b[..., None] - observed) ** 2).sum(axis=2)
    pick = np.argmin(sse, axis=1)  # the first (least smoothing) among equals
    rows = np.arange(n_surrogates)
    chosen = smooth[rows, pick]
    chosen = chosen - chosen.mean(axis=1, keepdims=True)
    noise = rng.standard_normal(chosen.shape)
    out = np.sqrt(np.abs(a[rows, pick]))[:, None] * chosen + np.sqrt(np.abs(b[rows, pick]))[:, None] * noise
    return out + x.mean()


def gp_surrogates(
    profile: np.ndarray, positions: np.ndarray, n_surrogates: int, rng: np.random.Generator
) -> np.ndarray:
    """Draws `(n_surrogates, n)` from a Gaussian process fitted to `profile` `(n,)` at `positions` `(n,)`.

    Squared-exponential kernel with a nugget, K = (1 − ν)·exp(−d² / 2ℓ²) + ν·I, with ℓ (in units
    of the median spacing) and ν chosen on the grid `GP_LENGTHS` × `GP_NUGGETS` by the profile
    likelihood (mean and variance profiled out) of the standardised profile; the draws have the
    profile's mean and standard deviation.
    """
    x = np.asarray(profile, dtype=np.float64)
    pos = np.asarray(positions, dtype=np.float64)
    n = x.size
    sd = x.std()
    if sd == 0:
        return np.broadcast_to(x, (n_surrogates, n)).copy()
    z = (x - x.mean()) / sd
    d2 = (pos[:, None] - pos[None, :]) ** 2
    spacing = _spacing(pos)
    one = np.ones(n)
    best, best_ll = np.eye(n), -np.inf
    for length in GP_LENGTHS:
        base = np.exp(-d2 / (2.0 * (length * spacing) ** 2))
        for nugget in GP_NUGGETS:
            cov = (1.0 - nugget) * base + nugget * np.eye(n)
            _, logdet = np.linalg.slogdet(cov)
            inv = np.linalg.inv(cov)
            mu = (one @ inv @ z) / (one @ inv @ one)
            s2 = (z - mu) @ inv @ (z - mu) / n
            ll = -0.5 * (n * np.log(max(s2, 1e-300)) + logdet)
            if ll > best_ll:
                best, best_ll = cov, ll
    chol = np.linalg.cholesky(best + 1e-10 * np.eye(n))
    draws = rng.standard_normal((n_surrogates, n)) @ chol.T
    draws = (draws - draws.mean(axis=1, keepdims=True)) / np.maximum(draws.std(axis=1, keepdims=True), 1e-300)
    return x.mean() + sd * draws


# Surrogate generators: name -> f(profile (n,), positions (n,), n_surrogates, rng) -> (n_surrogates, n).
_SURROGATES: dict[str, Callable[[np.ndarray, np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "variogram": variogram_surrogates,
    "gp": gp_surrogates,
}
# Every per-subject null (config stats.subject_null); layer_shuffle is the former exchangeable one.
NULLS = ("variogram", "gp", "layer_shuffle")


def _grouped_r(fixed_c: np.ndarray, counts: np.ndarray, means: np.ndarray, within: float) -> np.ndarray:
    """Pearson r over units from group means `(..., n_groups)`: Σ n_g m_g f_g / √((Σ n_g (m_g − m̄)² + W) Σ n_g f_g²).

    `fixed_c` `(n_groups,)` is the fixed variable centred over units, `counts` the group sizes,
    `within` the units' within-group sum of squares of the moving variable.
    """
    total = counts.sum()
    grand = (means @ counts) / total
    centred = means - grand[..., None]
    sxy = centred @ (counts * fixed_c)
    sxx = (centred**2) @ counts + within
    syy = counts @ fixed_c**2
    with np.errstate(invalid="ignore", divide="ignore"):
        return sxy / np.sqrt(sxx * syy)


def surrogate_pvalue(
    fixed: np.ndarray,
    moving: np.ndarray,
    alternative: str,
    n_surrogates: int,
    rng: np.random.Generator,
    null: str = "variogram",
) -> tuple[float, float]:
    """Pearson(fixed, moving) over `(n_units,)` vectors and its p against surrogates of `moving` along `fixed`.

    The surrogates (`null`: `variogram` or `gp`) keep the moving profile's smoothness along the
    fixed variable; units sharing a fixed value are collapsed to their mean (module docstring).
    p = (1 + #surrogate r as or more extreme) / (1 + n_surrogates) in the direction of
    `alternative`; (NaN, NaN) when r is undefined. With fewer than 3 distinct positions the
    surrogates are permutations of the group means.
    """
    _check_alternative(alternative)
    if null not in _SURROGATES:
        raise ValueError(f"null={null!r} has no surrogates; expected one of {sorted(_SURROGATES)}")
    f = np.asarray(fixed, dtype=np.float64)
    y = np.asarray(moving, dtype=np.float64)
    if f.shape != y.shape or f.ndim != 1 or f.size < 2:
        return float("nan"), float("nan")
    positions, code, counts = np.unique(f, return_inverse=True, return_counts=True)
    counts = counts.astype(np.float64)
    means = np.bincount(code, weights=y, minlength=positions.size) / counts
    within = float(((y - means[code]) ** 2).sum())
    fixed_c = positions - (positions @ counts) / counts.sum()
    observed = float(_grouped_r(fixed_c, counts, means, within))
    if not np.isfinite(observed) or np.ptp(y) == 0:
        return float("nan"), float("nan")
    observed = float(np.clip(observed, -1.0, 1.0))
    if positions.size < 3:
        surrogates = rng.permuted(np.broadcast_to(means, (n_surrogates, means.size)), axis=1)
    else:
        surrogates = _SURROGATES[null](means, positions, n_surrogates, rng)
    null_r = _grouped_r(fixed_c, counts, surrogates, within)
    extreme = {
        "greater": null_r >= observed - _TOL,
        "less": null_r <= observed + _TOL,
        "two-sided": np.abs(null_r) >= abs(observed) - _TOL,
    }[alternative]
    return observed, float((1 + np.count_nonzero(extreme)) / (1 + n_surrogates))


def subject_null_pvalue(
    null: str,
    layer_depth: np.ndarray,
    unit_layer: np.ndarray,
    y: np.ndarray,
    alternative: str,
    n_permutations: int,
    rng: np.random.Generator,
    moving: str,
) -> tuple[float, float]:
    """The per-subject test of Pearson(layer_depth[unit_layer], y) under the per-subject null `null`.

    Parameters
    ----------
    null : one of `NULLS`.
    layer_depth : (n_layers,) depth of every layer of the model (all layers, used or not).
    unit_layer : (n_units,) index into `layer_depth` of each unit's layer.
    y : (n_units,) the other variable (ROI distance, T_max, activation best depth).
    moving : which variable the surrogates move: "y" (T1: the T_max profile along the layers'
        depths) or "depth" (S1a, S1b: the units' best depth along y). `layer_shuffle` ignores it.

    Returns (observed r, p) as `brainprop.stats.inference.permutation_pvalue` does.
    """
    if null not in NULLS:
        raise ValueError(f"stats.subject_null={null!r} is not a known per-subject null; expected one of {list(NULLS)}")
    if null == "layer_shuffle":
        return permutation_pvalue(layer_depth, unit_layer, y, alternative, n_permutations, rng)
    if moving not in ("y", "depth"):
        raise ValueError(f"moving={moving!r}; expected 'y' or 'depth'")
    depth = np.asarray(layer_depth, dtype=np.float64)[np.asarray(unit_layer, dtype=np.int64)]
    y = np.asarray(y, dtype=np.float64)
    fixed, profile = (depth, y) if moving == "y" else (y, depth)
    return surrogate_pvalue(fixed, profile, alternative, n_permutations, rng, null)
