"""Tests of the banded (joint) ridge against ridge_cv, scikit-learn and a planted simulation."""

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler

from brainprop.encoding._banded import _fold_fit, _kernels, banded_grid, banded_ridge_cv, joint_ridge_cv
from brainprop.encoding._ridge import ridge_cv

ALPHAS = np.logspace(-1, 5, 7)


def _folds(n, k=4, seed=0):
    return list(KFold(k, shuffle=True, random_state=seed).split(np.zeros((n, 1))))


@pytest.mark.parametrize("d", [15, 90])  # SVD branch and kernel branch of ridge_cv
def test_one_band_equals_ridge_cv(d):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((80, d))
    Y = X[:, :5] @ rng.standard_normal((5, 30)) * np.logspace(-2, 0.5, 30) + rng.standard_normal((80, 30))
    folds = _folds(80)
    got = joint_ridge_cv([X], Y, folds, ALPHAS)
    ref = ridge_cv(X, Y, folds, ALPHAS)
    np.testing.assert_allclose(got.r_folds, ref.r_folds, atol=1e-8)
    np.testing.assert_allclose(got.r2_folds, ref.r2_folds, atol=1e-8)
    np.testing.assert_array_equal(got.alpha[..., 0], ref.alpha)
    assert len(np.unique(ref.alpha)) > 1  # the choice is exercised, not a constant


def _scaled(Xs, train, test, penalties):
    """Reference features: StandardScaler per band on train, divided by sqrt(alpha), hstacked."""
    Z_train, Z_test = [], []
    for X, a in zip(Xs, penalties):
        sc = StandardScaler().fit(X[train])
        Z_train.append(sc.transform(X[train]) / np.sqrt(a))
        Z_test.append(sc.transform(X[test]) / np.sqrt(a))
    return np.hstack(Z_train), np.hstack(Z_test)


def _problem(n, d=(6, 9), m=8, seed=1):
    rng = np.random.default_rng(seed)
    Xs = [rng.standard_normal((n, dj)) * rng.uniform(0.5, 3, dj) + 2 for dj in d]
    Y = (
        Xs[0][:, :2] @ rng.standard_normal((2, m)) * np.linspace(0, 2, m)
        + Xs[1][:, :3] @ rng.standard_normal((3, m)) * np.linspace(2, 0, m)
        + 3 * rng.standard_normal((n, m))
    )
    return Xs, Y


def test_fixed_pair_predictions_equal_sklearn_ridge():
    Xs, Y = _problem(60)
    train, test = _folds(60)[0]
    K, C = _kernels(Xs, train, test)
    for pair in [(0.3, 50.0), (1e3, 2.0)]:
        _, _, pred = _fold_fit(K, C, np.array([pair]), Y[train])
        Z_train, Z_test = _scaled(Xs, train, test, pair)
        ref = Ridge(alpha=1.0).fit(Z_train, Y[train]).predict(Z_test)
        np.testing.assert_allclose(pred, ref, atol=1e-8)


def _brute_loo(Z, y):
    """Mean squared leave-one-out error of Ridge(alpha=1) with intercept, refit per sample."""
    n = len(y)
    err = [
        (Ridge(alpha=1.0).fit(np.delete(Z, i, 0), np.delete(y, i)).predict(Z[i : i + 1])[0] - y[i]) ** 2
        for i in range(n)
    ]
    return np.mean(err)


def test_loo_choice_equals_brute_force():
    Xs, Y = _problem(25, d=(4, 7), m=6, seed=3)
    train, test = np.arange(20), np.arange(20, 25)
    grid = banded_grid([0.1, 3.0, 100.0], 2)
    K, C = _kernels(Xs, train, test)
    best, best_err, _ = _fold_fit(K, C, grid, Y[train])
    brute = np.array(
        [[_brute_loo(_scaled(Xs, train, test, pair)[0], Y[train, t]) for t in range(Y.shape[1])] for pair in grid]
    )
    np.testing.assert_array_equal(best, brute.argmin(axis=0))
    np.testing.assert_allclose(best_err, brute.min(axis=0), rtol=1e-8)
    assert len(np.unique(best)) > 1


def test_planted_unique_variance():
    rng = np.random.default_rng(7)
    n, d, m = 240, 40, 40
    X1, X2 = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    only1 = X1 @ rng.standard_normal((d, m // 2)) / np.sqrt(d)
    both = (X1 @ rng.standard_normal((d, m // 2)) + X2 @ rng.standard_normal((d, m // 2))) / np.sqrt(2 * d)
    Y = np.hstack([only1, both]) + 0.6 * rng.standard_normal((n, m))
    res = banded_ridge_cv([X1, X2], Y, _folds(n, 5), np.logspace(-1, 5, 7))
    u1, u2 = res.unique
    assert res.alpha.shape == (5, m, 2)
    assert u1[: m // 2].mean() > 0.2 and u1[: m // 2].min() > 0.1
    assert abs(u2[: m // 2].mean()) < 0.03 and np.abs(u2[: m // 2]).max() < 0.08
    assert (u1[m // 2 :] > 0.05).all() and (u2[m // 2 :] > 0.05).all()
    np.testing.assert_allclose(res.unique[1], res.r2 - res.single[0].r2)
    # band 2 carries nothing for the first half: its chosen penalty should be large
    assert np.median(res.alpha[:, : m // 2, 1]) > np.median(res.alpha[:, m // 2 :, 1])


def test_bad_inputs_raise():
    Xs, Y = _problem(30)
    folds = _folds(30)
    with pytest.raises(ValueError, match="Xs\\[1\\].*29.*30 rows"):
        banded_ridge_cv([Xs[0], Xs[1][:29]], Y, folds)
    with pytest.raises(ValueError, match="1 feature band.*at least 2"):
        banded_ridge_cv([Xs[0]], Y, folds)
    with pytest.raises(ValueError, match="3 feature bands.*exactly 2"):
        banded_ridge_cv([Xs[0], Xs[1], Xs[0]], Y, folds)
    with pytest.raises(ValueError, match="3 per-band grids.*expected 2"):
        banded_ridge_cv(Xs, Y, folds, [[1.0], [2.0], [3.0]])
    with pytest.raises(ValueError, match="alphas must be finite and > 0"):
        banded_ridge_cv(Xs, Y, folds, [1.0, -2.0])
    bad = Xs[0].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="Xs\\[0\\].*non-finite"):
        banded_ridge_cv([bad, Xs[1]], Y, folds)


def test_constant_target_is_nan_and_per_band_grid():
    Xs, Y = _problem(40)
    Y[:, 0] = 1.0
    res = banded_ridge_cv(Xs, Y, _folds(40), [[1.0, 10.0], [5.0, 500.0, 5e4]])
    assert np.isnan(res.r[0]) and np.isnan(res.unique[:, 0]).all()
    assert np.isfinite(res.r[1:]).all()
    assert set(np.unique(res.alpha[:, 1:, 1])) <= {5.0, 500.0, 5e4}
    assert set(np.unique(res.single[1].alpha[:, 1:])) <= {5.0, 500.0, 5e4}
