"""The per-subject nulls (brainprop.stats.nulls): what the surrogates keep, the grouped statistic, and the
toy of METHOD.md §6 on which the exchangeable layer shuffle fails and the variogram null holds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.ndimage import gaussian_filter1d

from brainprop.hierarchy.scores import pearson
from brainprop.stats.inference import permutation_pvalue
from brainprop.stats.nulls import (
    NULLS,
    gp_surrogates,
    subject_null_pvalue,
    surrogate_pvalue,
    variogram_surrogates,
)

DEPTHS = np.linspace(0, 1, 22)


def _lag1(x: np.ndarray) -> np.ndarray:
    """Lag-1 autocorrelation of each row of (n, n_layers)."""
    xc = x - x.mean(axis=-1, keepdims=True)
    return (xc[..., 1:] * xc[..., :-1]).sum(-1) / (xc * xc).sum(-1)


@pytest.mark.parametrize("make", [variogram_surrogates, gp_surrogates])
def test_surrogates_keep_the_smoothness_of_the_profile(make):
    rng = np.random.default_rng(0)
    pos = np.arange(22.0)
    smooth = gaussian_filter1d(rng.standard_normal(60), 3)[19:41]
    rough = rng.standard_normal(22)
    for profile, low, high in ((smooth, 0.6, 1.0), (rough, -0.5, 0.4)):
        sur = make(profile, pos, 500, rng)
        assert sur.shape == (500, 22) and np.isfinite(sur).all()
        lag = np.median(_lag1(sur))
        assert low < lag < high, (make.__name__, lag, _lag1(profile[None])[0])
        assert abs(sur.mean() - profile.mean()) < 0.5 * profile.std()


def test_variogram_surrogates_of_a_shuffled_profile_are_its_permutations():
    # White noise: the unsmoothed permutation fits the (flat) variogram; the surrogates keep the values.
    rng = np.random.default_rng(1)
    x = rng.standard_normal(22)
    sur = variogram_surrogates(x, np.arange(22.0), 200, rng)
    assert np.median(np.abs(_lag1(sur))) < 0.3
    assert np.median(sur.std(axis=1)) == pytest.approx(x.std(), rel=0.35)


def test_three_points_have_no_variogram_and_get_permutations():
    rng = np.random.default_rng(6)
    x = np.array([0.3, 1.0, 2.0])
    sur = variogram_surrogates(x, np.arange(3.0), 50, rng)
    np.testing.assert_allclose(np.sort(sur, axis=1), np.broadcast_to(np.sort(x), (50, 3)))


def test_the_grouped_statistic_is_the_pearson_over_units():
    """Units sharing a position (targets of one ROI) are collapsed; the observed r is unchanged."""
    rng = np.random.default_rng(2)
    fixed = np.repeat([0.0, 7.5, 15.0, 24.0, 33.0, 50.0], [30, 10, 25, 40, 5, 12])
    moving = fixed / 50 + rng.normal(0, 0.5, fixed.size)
    for null in ("variogram", "gp"):
        r, p = surrogate_pvalue(fixed, moving, "greater", 199, rng, null)
        assert r == pytest.approx(pearson(fixed, moving), abs=1e-12)
        assert 1 / 200 <= p <= 1
    # The distinct ROI case: no ties, plain Pearson.
    r, _ = surrogate_pvalue(DEPTHS, np.sin(DEPTHS * 3), "less", 99, rng)
    assert r == pytest.approx(pearson(DEPTHS, np.sin(DEPTHS * 3)), abs=1e-12)


def test_undefined_statistics_give_nan():
    rng = np.random.default_rng(3)
    assert np.isnan(surrogate_pvalue(DEPTHS, np.ones(22), "greater", 99, rng)[1])
    assert np.isnan(surrogate_pvalue(np.ones(5), np.arange(5.0), "greater", 99, rng)[1])
    # Two distinct positions: permutations of the two group means (no variogram to fit).
    r, p = surrogate_pvalue(np.repeat([0.0, 1.0], 5), np.arange(10.0), "greater", 99, rng)
    assert r > 0.8 and 0 < p <= 1


def test_the_layer_shuffle_is_the_former_permutation_test():
    rng_a, rng_b = np.random.default_rng(4), np.random.default_rng(4)
    units, y = np.array([0, 3, 5, 9, 12, 20]), np.array([3.0, 1.0, 2.0, 5.0, 4.0, 6.0])
    old = permutation_pvalue(DEPTHS, units, y, "greater", 300, rng_a)
    assert subject_null_pvalue("layer_shuffle", DEPTHS, units, y, "greater", 300, rng_b, "y") == old


def test_which_variable_moves():
    """T1 moves the T_max profile along depth (moving 'y'); S1a, S1b move the best depths along y."""
    rng = np.random.default_rng(5)
    units = np.arange(22)
    y = np.cos(DEPTHS * 2)
    r_y, _ = subject_null_pvalue("variogram", DEPTHS, units, y, "less", 99, rng, "y")
    r_d, _ = subject_null_pvalue("variogram", DEPTHS, units, y, "less", 99, rng, "depth")
    assert r_y == pytest.approx(r_d) == pytest.approx(pearson(DEPTHS, y))
    with pytest.raises(ValueError, match="moving='x'"):
        subject_null_pvalue("variogram", DEPTHS, units, y, "less", 99, rng, "x")


def test_unknown_null_lists_the_known_ones():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="stats.subject_null='brainsmash'.*variogram"):
        subject_null_pvalue("brainsmash", DEPTHS, np.arange(3), np.arange(3.0), "less", 99, rng, "y")
    assert NULLS[0] == "variogram"  # the default (workflow/schemas/config.schema.yaml, stats.subject_null)


@pytest.mark.parametrize("sd", [1, 4])
def test_method_toy_the_layer_shuffle_fails_and_the_variogram_holds(sd):
    """METHOD.md §6: 22 layers whose T_max is Gaussian-smoothed noise (SD in layers) with no relation to depth.

    One-sided p < 0.05 over 300 repetitions: the layer shuffle rejects above the binomial 95 %
    interval of 0.05 (METHOD.md: 23 % at SD 1, 40 % at SD 4), the variogram null at or below it.
    """
    rng = np.random.default_rng(sd)
    reps = 300
    high = stats.binom.interval(0.95, reps, 0.05)[1] / reps
    shuffle = variogram = 0
    for _ in range(reps):
        t_max = gaussian_filter1d(rng.standard_normal(62), sd)[20:42]
        shuffle += permutation_pvalue(DEPTHS, np.arange(22), t_max, "greater", 99, rng)[1] < 0.05
        variogram += surrogate_pvalue(DEPTHS, t_max, "greater", 99, rng)[1] < 0.05
    assert shuffle / reps > high, shuffle / reps
    assert variogram / reps <= high, variogram / reps
