"""Tests of the fast ridge paths: Gram decomposition, pruned penalty search, the GPU benchmark script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from brainprop.encoding._backends import get_backend
from brainprop.encoding._ridge import (
    _DECOMPOSITIONS,
    _bounds,
    _choose,
    _decompose,
    _errors_of,
    _loo_errors,
    _maps_pay_off,
    _norms,
    _pearson,
    _r2,
    _scores,
    _screen_tolerance,
    _search_terms,
    _select,
    _solver,
    _standardize,
    ridge_cv,
)
from brainprop.encoding.encode import DEFAULT_ALPHAS
from brainprop.encoding.folds import make_folds

ALPHAS = np.asarray(DEFAULT_ALPHAS)
ROOT = Path(__file__).resolve().parents[1]


def fold_data(n: int, d: int, m: int, seed: int, rank: int | None = None):
    """One training/test split of standardised features and centred float64 targets."""
    rng = np.random.default_rng(seed)
    if rank is None:
        X = rng.standard_normal((n, d)) * rng.uniform(0.5, 3, d)
    else:  # strongly collinear features
        X = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, d)) + 1e-3 * rng.standard_normal((n, d))
    Y = X[:, : min(d, 8)] @ rng.standard_normal((min(d, 8), m)) * 0.3 + rng.standard_normal((n, m))
    k = min(m, 4)
    Y[:, :k] = X[:, :k] * 5.0 + 0.01 * rng.standard_normal((n, k))  # near-perfect fits: heavy cancellation
    train, test = make_folds(n, None, 5, seed)[0]
    X_train, X_test = _standardize(X[train], X[test])
    y = Y[train] - Y[train].mean(axis=0)
    return X_train, X_test, y


def spectral_maps(basis, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Hat matrix U diag(lam / (lam + a)) U^T and prediction map P diag(1 / (lam + a)) U^T."""
    U, lam, P = basis.U, basis.lam, basis.P
    return (U * (lam / (lam + alpha))) @ U.T, (P / (lam + alpha)) @ U.T


@pytest.mark.parametrize("n, d, rank", [(120, 30, None), (120, 30, 5), (50, 40, None), (40, 90, None)])
def test_gram_and_kernel_bases_equal_the_svd(n, d, rank):
    ops = get_backend()
    X_train, X_test, _ = fold_data(n, d, 3, seed=n + d, rank=rank)
    svd = _DECOMPOSITIONS["svd"](ops, X_train, X_test)
    for kind in ("gram", "kernel"):
        basis = _DECOMPOSITIONS[kind](ops, X_train, X_test)
        for alpha in ALPHAS[[0, 3, 9]]:
            for got, want in zip(spectral_maps(basis, alpha), spectral_maps(svd, alpha)):
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * max(1.0, np.abs(want).max()))
    assert _solver(100, 99) == "gram" and _solver(100, 100) == "kernel"


def test_gram_basis_drops_null_directions():
    ops = get_backend()
    X_train, X_test, _ = fold_data(80, 12, 2, seed=3)
    X_train = np.column_stack([X_train, X_train[:, 0], np.zeros(len(X_train))])  # duplicate and zero column
    X_test = np.column_stack([X_test, X_test[:, 0], np.zeros(len(X_test))])
    basis = _DECOMPOSITIONS["gram"](ops, X_train, X_test)
    assert basis.U.shape == (len(X_train), 12)
    np.testing.assert_allclose(basis.U.T @ basis.U, np.eye(12), atol=1e-12)


@pytest.mark.parametrize("n, d, rank", [(200, 60, None), (150, 40, 3), (60, 150, None)])
def test_pruned_search_equals_exhaustive_argmin(n, d, rank):
    ops, low = get_backend(), get_backend("numpy", "cpu", "float32")
    X_train, X_test, y = fold_data(n, d, 300, seed=7 + d, rank=rank)
    basis = _decompose(ops, X_train, X_test)
    search = _search_terms(ops, low, basis, ALPHAS)
    n = len(y)
    UTy = basis.U.T @ y
    z32 = search.U_low.T @ y.astype(np.float32)
    ss_y = (y * y).sum(0)
    exact = _loo_errors(ops, basis, search.M, search.denom, y, UTy)
    # The closed-form bounds contain the exact errors, from float64 and from float32 z = U^T y.
    for zops, z in ((ops, UTy), (low, z32)):
        lower, upper = _bounds(search, n, _norms(zops, n, search, z, ss_y))
        assert (lower <= exact).all() and (exact <= upper).all()
    # The float32 errors lie within their stated rounding bound of the float64 ones.
    norms = _norms(low, n, search, z32, ss_y)
    everything = np.ones_like(exact, dtype=bool)
    err32 = _errors_of(low, search.U_low, search.M_low, search.denom_low, y.astype(np.float32), z32, everything)
    assert (np.abs(err32 - exact) <= _screen_tolerance(*basis.U.shape, search, norms, err32)).all()
    # Pruning with the float32 stage gives the exhaustive choice, and so do the bounds alone.
    want = _select(exact)
    np.testing.assert_array_equal(_choose(ops, low, basis, search, y, z32, ss_y), want)
    plain = _search_terms(ops, None, basis, ALPHAS)
    np.testing.assert_array_equal(_choose(ops, None, basis, plain, y, UTy, ss_y), want)
    assert len(np.unique(want)) > 2


def test_pruned_search_matches_sklearn_cv_values_on_collinear_wide_data():
    # Many near-ties: targets that are pure noise have flat leave-one-out curves at large penalties.
    rng = np.random.default_rng(11)
    n, d = 90, 300
    X = rng.standard_normal((n, 4)) @ rng.standard_normal((4, d)) + 0.1 * rng.standard_normal((n, d))
    Y = np.column_stack([X[:, :3] @ rng.standard_normal((3, 20)), rng.standard_normal((n, 40))])
    folds = make_folds(n, None, 5, seed=2)
    result = ridge_cv(X, Y, folds, ALPHAS)
    for f, (train, _test) in enumerate(folds):
        pipe = make_pipeline(StandardScaler(), RidgeCV(ALPHAS, alpha_per_target=True)).fit(X[train], Y[train])
        np.testing.assert_array_equal(result.alpha[f], pipe[-1].alpha_)


def test_prediction_maps_equal_the_spectral_prediction(monkeypatch):
    rng = np.random.default_rng(12)
    X, Y = rng.standard_normal((70, 20)), rng.standard_normal((70, 30))
    folds = make_folds(70, None, 5, seed=0)
    # Maps pay off only for many targets: 30 take P (U^T y), 20 000 on the benchmark shape take maps.
    assert not _maps_pay_off(56, 14, 20, 10, 30) and _maps_pay_off(800, 200, 768, 10, 20000)
    spectral = ridge_cv(X, Y, folds, ALPHAS)
    monkeypatch.setattr("brainprop.encoding._ridge._maps_pay_off", lambda *args: True)
    maps = ridge_cv(X, Y, folds, ALPHAS)
    np.testing.assert_allclose(maps.r_folds, spectral.r_folds, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(maps.alpha, spectral.alpha)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_scores_on_the_backend_equal_the_host_scores(backend):
    if backend == "torch":
        pytest.importorskip("torch")
    rng = np.random.default_rng(13)
    pred, y = rng.standard_normal((30, 6)), rng.standard_normal((30, 6)) + 2.0
    pred[:, 1] = 0.5  # constant prediction: r is NaN
    y[:, 2] = -1.0  # constant response: r and R² are NaN
    ops = get_backend(backend, "cpu", "float64")
    r, r2 = _scores(ops, ops.asarray(pred), ops.asarray(y))
    np.testing.assert_allclose(r, _pearson(pred, y), rtol=0, atol=1e-14)
    np.testing.assert_allclose(r2, _r2(pred, y), rtol=0, atol=1e-14)
    assert np.isnan(r[[1, 2]]).all() and np.isnan(r2[2]) and np.isfinite(r2[1])
    np.testing.assert_allclose(r[[0, 3, 4, 5]], [np.corrcoef(pred[:, j], y[:, j])[0, 1] for j in (0, 3, 4, 5)])


def test_torch_pruned_search_equals_its_exhaustive_argmin():
    pytest.importorskip("torch")
    ops = get_backend("torch", "cpu", "float32")
    X_train, X_test, y = fold_data(160, 50, 200, seed=5)
    basis = _decompose(ops, X_train, X_test)
    search = _search_terms(ops, None, basis, ALPHAS)
    yt = ops.asarray(y)
    UTy = basis.U.T @ yt
    ss_y = ops.to_numpy((yt * yt).sum(0))
    exact = _loo_errors(ops, basis, search.M, search.denom, yt, UTy)
    chosen = _choose(ops, None, basis, search, yt, UTy, ss_y)
    # Same choice except where float32 errors of two penalties tie to rounding.
    best = exact[chosen, np.arange(len(chosen))]
    np.testing.assert_allclose(best, exact.min(axis=0), rtol=1e-5)


def test_gpu_benchmark_runs_on_cpu(tmp_path):
    pytest.importorskip("torch")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "encoding.py"),
        "--gpu",
        "--device",
        "cpu",
        "--small",
        "--no-himalaya",
    ]  # himalaya's path was checked by hand; its import doubles this test's time
    done = subprocess.run(command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "results" / "benchmarks" / "encoding_gpu.json").read_text())
    assert record["shape"] == [200, 48, 600] and record["device"] == "cpu"
    assert record["brainprop_torch_float32_s"] > 0
    assert record["max_abs_diff_r_vs_float64"] < 1e-4 and record["alpha_agreement_vs_float64"] > 0.9
