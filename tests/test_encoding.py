"""Tests of the encoding stage against scikit-learn, closed forms and planted models."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import GroupKFold, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from brainprop import contract
from brainprop.encoding._ridge import TAIL_COUNT, TargetNull, combine_fold_p, ridge_cv, ridge_cv_shared
from brainprop.encoding.encode import DEFAULT_ALPHAS, RidgeEncoder, encode, encode_shared
from brainprop.encoding.files import SUMMARY_COLUMNS, load_target_scores
from brainprop.encoding.folds import make_folds
from brainprop.io import CorruptFileError, write_table

ALPHAS = np.asarray(DEFAULT_ALPHAS)


def reference(X, Y, folds, alphas=ALPHAS):
    """The METHOD.md §4 reference loop: StandardScaler + RidgeCV per fold, scipy Pearson r."""
    r, r2, chosen = [], [], []
    for train, test in folds:
        pipe = make_pipeline(StandardScaler(), RidgeCV(alphas, alpha_per_target=True))
        pred = pipe.fit(X[train], Y[train]).predict(X[test])
        r.append([stats.pearsonr(pred[:, j], Y[test, j])[0] for j in range(Y.shape[1])])
        r2.append(r2_score(Y[test], pred, multioutput="raw_values"))
        chosen.append(pipe[-1].alpha_)
    return np.mean(r, axis=0), np.mean(r2, axis=0), np.asarray(chosen)


def random_data(rng, n, d, m):
    """Features with unequal scales and offsets; targets mixing signal and noise at varied SNR."""
    X = rng.standard_normal((n, d)) * rng.uniform(0.1, 10, d) + rng.uniform(-5, 5, d)
    Y = X @ rng.standard_normal((d, m)) * 0.2 + rng.standard_normal((n, m)) * rng.uniform(0.5, 30, m) + 3
    return X, Y


def structured_data(rng, n, d, m, rank=4):
    """Low-rank features plus a little noise; targets driven by the latent factors."""
    Z = rng.standard_normal((n, rank))
    X = Z @ rng.standard_normal((rank, d)) + 0.05 * rng.standard_normal((n, d))
    Y = Z @ rng.standard_normal((rank, m)) + rng.standard_normal((n, m)) * rng.uniform(0.2, 5, m)
    return X, Y


@pytest.mark.parametrize("make", [random_data, structured_data], ids=["random", "structured"])
@pytest.mark.parametrize("n, d", [(60, 20), (45, 90), (50, 40)], ids=["n>d", "n<d", "n_train=d"])
@pytest.mark.parametrize("grouped", [False, True], ids=["kfold", "groupkfold"])
def test_ridge_cv_matches_sklearn_reference(make, n, d, grouped):
    rng = np.random.default_rng(n * d + grouped)
    X, Y = make(rng, n, d, 12)
    groups = np.array([f"photo{i // 3}" for i in range(n)]) if grouped else None
    folds = make_folds(n, groups, 5, seed=3)
    result = ridge_cv(X, Y, folds, ALPHAS)
    r, r2, chosen = reference(X, Y, folds)
    np.testing.assert_allclose(result.r, r, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.r2, r2, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(result.alpha, chosen)
    assert result.alpha.shape == (5, 12)
    assert len(np.unique(result.alpha)) > 1  # the comparison exercises penalty choice


def test_ridge_cv_batches_and_float32_agree():
    rng = np.random.default_rng(1)
    X, Y = random_data(rng, 80, 30, 25)
    folds = make_folds(80, None, 4, seed=0)
    whole = ridge_cv(X, Y, folds, ALPHAS)
    batched = ridge_cv(X, Y.astype(np.float32), folds, ALPHAS, batch_size=7)
    one = ridge_cv(X, Y.astype(np.float32), folds, ALPHAS, batch_size=1)
    np.testing.assert_allclose(batched.r, whole.r, atol=1e-5)
    np.testing.assert_allclose(batched.r, one.r, rtol=0, atol=1e-12)  # BLAS order differs by width
    np.testing.assert_array_equal(batched.alpha, one.alpha)


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
def test_ridge_cv_ties_go_to_the_smallest_alpha():
    # Features constant in every training split leave all penalties with the same
    # leave-one-out error: an exact tie, which RidgeCV (alphas ascending) gives to the smallest.
    rng = np.random.default_rng(2)
    X = np.tile([1.0, -2.0, 3.0], (30, 1))
    Y = rng.standard_normal((30, 4))
    folds = make_folds(30, None, 3, seed=0)
    result = ridge_cv(X, Y, folds, ALPHAS[::-1])
    assert (result.alpha == ALPHAS.min()).all()
    np.testing.assert_array_equal(reference(X, Y, folds)[2], result.alpha)
    assert np.isnan(result.r).all()  # constant predictions have no correlation
    with pytest.raises(ValueError, match="alphas"):
        ridge_cv(X, Y, folds, [0.0, 1.0])


# Torch float32 tolerance on held-out r and R² against numpy float64 (observed <= 2e-6 here).
TORCH_ATOL = 1e-4


def loo_errors(X, Y, train, alphas=ALPHAS):
    """scikit-learn's float64 mean leave-one-out squared error, (n_targets, n_alphas)."""
    pipe = make_pipeline(StandardScaler(), RidgeCV(alphas, alpha_per_target=True, store_cv_results=True))
    return pipe.fit(X[train], Y[train])[-1].cv_results_.mean(axis=0)


@pytest.mark.parametrize("n, d", [(60, 20), (45, 90)], ids=["svd", "kernel"])
def test_torch_cpu_float32_agrees_with_numpy_float64(n, d):
    pytest.importorskip("torch")
    rng = np.random.default_rng(20 + n)
    X, Y = random_data(rng, n, d, 40)
    folds = make_folds(n, None, 5, seed=3)
    ref = ridge_cv(X, Y, folds, ALPHAS)
    got = ridge_cv(X, Y, folds, ALPHAS, backend="torch", device="cpu")
    np.testing.assert_allclose(got.r_folds, ref.r_folds, rtol=0, atol=TORCH_ATOL)
    np.testing.assert_allclose(got.r2_folds, ref.r2_folds, rtol=0, atol=TORCH_ATOL)
    # Penalties agree except at near-ties (noise targets whose error is flat over large
    # penalties): allow at most 5% of (fold, target) pairs to differ, each only where the
    # float64 leave-one-out errors of the two penalties are within 1e-5 relative of each other.
    differ = np.argwhere(got.alpha != ref.alpha)
    assert len(differ) <= 0.05 * ref.alpha.size
    for f, j in differ:
        err = loo_errors(X, Y, folds[f][0])[j]
        a, b = np.searchsorted(ALPHAS, [ref.alpha[f, j], got.alpha[f, j]])
        assert abs(err[a] - err[b]) <= 1e-5 * err[a]
    assert np.mean(got.alpha == ref.alpha) > 0.9 and len(np.unique(ref.alpha)) > 2


def test_backend_dtypes_are_explicit():
    pytest.importorskip("torch")
    rng = np.random.default_rng(21)
    X, Y = random_data(rng, 50, 12, 6)
    folds = make_folds(50, None, 5, seed=0)
    ref = ridge_cv(X, Y, folds, ALPHAS)
    np.testing.assert_array_equal(ridge_cv(X, Y, folds, ALPHAS, backend="numpy", dtype="float64").r, ref.r)
    # Torch in float64 follows the float64 path closely; numpy in float32 is allowed too.
    np.testing.assert_allclose(
        ridge_cv(X, Y, folds, ALPHAS, backend="torch", device="cpu", dtype="float64").r, ref.r, rtol=0, atol=1e-10
    )
    np.testing.assert_allclose(ridge_cv(X, Y, folds, ALPHAS, dtype=np.float32).r, ref.r, rtol=0, atol=TORCH_ATOL)


def test_backend_errors_name_the_choices():
    X, Y = random_data(np.random.default_rng(22), 20, 4, 2)
    folds = make_folds(20, None, 4, seed=0)
    with pytest.raises(ValueError, match=r"backend='jax'.*\['numpy', 'torch'\]"):
        ridge_cv(X, Y, folds, ALPHAS, backend="jax")
    with pytest.raises(ValueError, match="device='tpu'"):
        ridge_cv(X, Y, folds, ALPHAS, device="tpu")
    with pytest.raises(ValueError, match="numpy backend"):
        ridge_cv(X, Y, folds, ALPHAS, device="cuda")
    with pytest.raises(ValueError, match="dtype='float16'"):
        ridge_cv(X, Y, folds, ALPHAS, dtype="float16")


def test_torch_cuda_unavailable_is_a_clear_error():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present; the error path cannot be reached")
    X, Y = random_data(np.random.default_rng(23), 20, 4, 2)
    with pytest.raises(ValueError, match=r"torch.cuda.is_available\(\) is False"):
        ridge_cv(X, Y, make_folds(20, None, 4, seed=0), ALPHAS, backend="torch", device="cuda")


def test_torch_cuda_float32_agrees_with_numpy_float64():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    rng = np.random.default_rng(24)
    X, Y = random_data(rng, 300, 60, 50)
    folds = make_folds(300, None, 5, seed=0)
    ref = ridge_cv(X, Y, folds, ALPHAS)
    got = ridge_cv(X, Y, folds, ALPHAS, backend="torch", device="cuda")
    np.testing.assert_allclose(got.r, ref.r, rtol=0, atol=TORCH_ATOL)
    assert np.mean(got.alpha == ref.alpha) > 0.9


def test_numpy_backend_does_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "from brainprop.encoding.encode import make_folds, ridge_cv\n"
        "rng = np.random.default_rng(0)\n"
        "X, Y = rng.standard_normal((30, 4)), rng.standard_normal((30, 2))\n"
        "ridge_cv(X, Y, make_folds(30, None, 3, 0), [1.0, 10.0])\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_ridge_cv_shared_equals_separate_fits(backend):
    if backend == "torch":
        pytest.importorskip("torch")
    rng = np.random.default_rng(25)
    X, Y1 = random_data(rng, 60, 25, 9)
    Y2 = structured_data(rng, 60, 25, 14)[1].astype(np.float32)
    Y3 = Y1[:, :3] * 2.0 + 1.0
    Y3[:, 1] = 4.0  # a constant target, NaN in every fold
    folds = make_folds(60, np.repeat(np.arange(20), 3), 5, seed=1)
    kwargs = {"batch_size": 4, "backend": backend, "device": "cpu"}
    shared = ridge_cv_shared(X, [Y1, Y2, Y3], folds, ALPHAS, **kwargs)
    assert len(shared) == 3
    for Y, got in zip([Y1, Y2, Y3], shared):
        alone = ridge_cv(X, Y, folds, ALPHAS, **kwargs)
        for field in ("r", "r2", "alpha", "r_folds", "r2_folds"):
            np.testing.assert_array_equal(getattr(got, field), getattr(alone, field))
    assert np.isnan(shared[2].r[1]) and np.isfinite(shared[1].r).all()
    with pytest.raises(ValueError, match=r"Ys\[1\]"):
        ridge_cv_shared(X, [Y1, Y2[:50]], folds, ALPHAS)
    with pytest.raises(ValueError, match="Ys is empty"):
        ridge_cv_shared(X, [], folds, ALPHAS)


def test_encode_passes_the_backend_through(fmri_job):
    pytest.importorskip("torch")
    X, Y, targets, folds = fmri_job
    ref, _, _ = encode(X, Y, targets, folds, ALPHAS)
    got, _, _ = encode(X, Y, targets, folds, ALPHAS, backend="torch", device="cpu")
    np.testing.assert_allclose(got["r"], ref["r"], rtol=0, atol=TORCH_ATOL)
    with pytest.raises(ValueError, match="backend='cupy'"):
        encode(X, Y, targets, folds, ALPHAS, backend="cupy")


def test_planted_linear_model_is_recovered():
    # Y = X w + noise with X ~ N(0, I): the noise-limited r is sd(signal) / sd(signal + noise).
    rng = np.random.default_rng(3)
    n, d = 4000, 8
    X = rng.standard_normal((n, d))
    w = rng.standard_normal((d, 3))
    ratio = np.array([0.5, 1.0, 3.0])  # noise sd / signal sd
    Y = X @ w + rng.standard_normal((n, 3)) * ratio * np.linalg.norm(w, axis=0)
    limit = 1.0 / np.sqrt(1.0 + ratio**2)
    folds = make_folds(n, None, 5, seed=0)
    result = ridge_cv(X, Y, folds, ALPHAS)
    # Sampling error of r over n held-out images is about (1 - r^2) / sqrt(n); allow 4 of them.
    assert (np.abs(result.r - limit) < 4 * (1 - limit**2) / np.sqrt(n)).all()
    # Against the true weights on the same held-out images, only estimation error remains.
    oracle = [[stats.pearsonr(X[test] @ w[:, j], Y[test, j])[0] for j in range(3)] for _, test in folds]
    gap = np.mean(oracle, axis=0) - result.r
    assert (gap > -1e-3).all() and (gap < 0.01).all()


def test_ridge_cv_degenerate_targets_give_nan():
    rng = np.random.default_rng(4)
    X, Y = random_data(rng, 40, 10, 4)
    Y[:, 1] = 7.0
    Y[5, 2] = np.nan
    result = ridge_cv(X, Y, make_folds(40, None, 4, seed=0), ALPHAS)
    assert np.isnan(result.r[[1, 2]]).all() and np.isnan(result.alpha[:, [1, 2]]).all()
    assert np.isfinite(result.r[[0, 3]]).all()


def test_constant_column_in_one_split_gets_unit_scale():
    # A column constant in a training split is standardised with scale 1, like StandardScaler.
    rng = np.random.default_rng(5)
    X, Y = random_data(rng, 40, 6, 5)
    folds = make_folds(40, None, 4, seed=0)
    X[folds[0][0], 2] = 1.5
    result = ridge_cv(X, Y, folds, ALPHAS)
    r, r2, chosen = reference(X, Y, folds)
    np.testing.assert_allclose(result.r, r, atol=1e-6)
    np.testing.assert_array_equal(result.alpha, chosen)


@pytest.mark.parametrize("n, seed", [(23, 0), (100, 7)])
def test_make_folds_equals_kfold(n, seed):
    folds = make_folds(n, None, 5, seed)
    expected = list(KFold(5, shuffle=True, random_state=seed).split(np.zeros(n)))
    assert len(folds) == 5
    for (train, test), (train_ref, test_ref) in zip(folds, expected):
        np.testing.assert_array_equal(train, train_ref)
        np.testing.assert_array_equal(test, test_ref)


def test_make_folds_groups_equal_groupkfold_and_never_straddle():
    rng = np.random.default_rng(6)
    groups = np.array([f"img{k}" for k in rng.integers(0, 17, 90)])
    folds = make_folds(90, groups, 5, seed=11)
    expected = GroupKFold(5, shuffle=True, random_state=11).split(np.zeros(90), groups=groups)
    for (train, test), (train_ref, test_ref) in zip(folds, expected):
        np.testing.assert_array_equal(train, train_ref)
        np.testing.assert_array_equal(test, test_ref)
        assert not set(groups[train]) & set(groups[test])
    np.testing.assert_array_equal(np.sort(np.concatenate([t for _, t in folds])), np.arange(90))
    # Shuffling depends on the seed.
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, make_folds(90, groups, 5, seed=12)))


def test_make_folds_errors():
    with pytest.raises(ValueError, match="4 samples"):
        make_folds(4, None, 5, 0)
    with pytest.raises(ValueError, match="3 groups"):
        make_folds(10, np.array(list("aaabbbcccc")), 5, 0)
    with pytest.raises(ValueError, match="groups has shape"):
        make_folds(10, np.array(list("abcde")), 5, 0)
    with pytest.raises(ValueError, match="n_folds=1"):
        make_folds(10, None, 1, 0)


def test_ridge_encoder_is_thin_wrapper():
    rng = np.random.default_rng(8)
    X, Y = random_data(rng, 60, 15, 6)
    groups = np.repeat(np.arange(20), 3).astype(str)
    model = RidgeEncoder(ALPHAS, n_folds=4, seed=2, groups=groups)
    assert model.fit(X, Y) is model
    expected = ridge_cv(X, Y, make_folds(60, groups, 4, 2), ALPHAS)
    np.testing.assert_array_equal(model.scores_, expected.r)
    np.testing.assert_array_equal(model.r2_, expected.r2)
    np.testing.assert_array_equal(model.alphas_, expected.alpha)
    assert model.get_params()["n_folds"] == 4
    assert RidgeEncoder().fit(X, Y[:, 0]).scores_.shape == (1,)


def fmri_targets(rois=("V1", "V2", "LO"), per_hemi=4, ceiling=0.5):
    """Target table: each ROI has `per_hemi` vertices in lh and in rh."""
    rows = []
    for k, roi in enumerate(rois):
        for hemi in ("lh", "rh"):
            for _ in range(per_hemi):
                rows.append(
                    {
                        "modality": "fmri",
                        "atlas": "demo",
                        "roi": roi,
                        "hemi": hemi,
                        "x": 1.0,
                        "y": 2.0,
                        "z": 3.0,
                        "roi_distance_mm": 10.0 * k,
                        "sensor": "",
                        "time": np.nan,
                        "noise_ceiling": ceiling,
                    }
                )
    return pd.DataFrame(rows).assign(target=lambda t: np.arange(len(t), dtype=np.int64))


def meg_targets(sensors=("MLO11", "MRO11", "MZO01"), times=(0.0, 0.1, 0.2, 0.3)):
    """Target table: sensors × times, no ceiling."""
    rows = [
        {
            "modality": "meg",
            "atlas": "",
            "roi": "",
            "hemi": "",
            "x": np.nan,
            "y": np.nan,
            "z": np.nan,
            "roi_distance_mm": np.nan,
            "sensor": s,
            "time": t,
            "noise_ceiling": np.nan,
        }
        for t in times
        for s in sensors
    ]
    return pd.DataFrame(rows).assign(target=lambda t: np.arange(len(t), dtype=np.int64))


@pytest.fixture
def fmri_job():
    rng = np.random.default_rng(9)
    targets = fmri_targets()
    X, Y = random_data(rng, 60, 12, len(targets))
    X = X.astype(np.float32)
    Y = Y.astype(np.float32)
    return X, Y, targets, make_folds(60, None, 5, seed=0)


def test_encode_shared_equals_encode_per_subject(fmri_job):
    X, Y, targets, folds = fmri_job
    X = np.column_stack([X, np.zeros(60, np.float32)])  # a dead unit: dropped once for all subjects
    Y2 = Y[:, ::-1] * 3.0 + 1.0
    Y2[4, 2] = np.nan  # excluded in the second subject only
    fits = encode_shared(X, [Y, Y2], [targets, targets], folds, ALPHAS)
    for (per_target, summary, counts), Y_s in zip(fits, [Y, Y2]):
        ref_target, ref_summary, ref_counts = encode(X, Y_s, targets, folds, ALPHAS)
        pd.testing.assert_frame_equal(per_target, ref_target)
        pd.testing.assert_frame_equal(summary, ref_summary)
        assert counts == ref_counts
    assert fits[1][2]["n_targets_nonfinite"] == 1 and fits[0][2]["n_features_dropped"] == 1


def test_encode_fmri_summary_and_exclusions(fmri_job):
    X, Y, targets, folds = fmri_job
    Y[:, 0] = 2.0  # constant target (V1 lh)
    Y[7, 5] = np.nan  # NaN target (V1 rh)
    X = np.column_stack([X, np.zeros(60, np.float32)])  # dead unit
    per_target, summary, counts = encode(X, Y, targets, folds, ALPHAS)

    assert counts["n_features_dropped"] == 1 and counts["n_features"] == 13
    assert counts["n_targets_excluded"] == 2
    assert counts["n_targets_constant"] == 1 and counts["n_targets_nonfinite"] == 1
    assert per_target["excluded"].tolist() == [i in (0, 5) for i in range(len(targets))]
    assert per_target.loc[[0, 5], ["r", "r2", "alpha", "r_normalized"]].isna().all().all()

    # Scores of the used targets are those of the reference fit on the used columns.
    used = ~per_target["excluded"].to_numpy()
    r, r2, _ = reference(X[:, :12].astype(np.float64), Y[:, used].astype(np.float64), folds)
    np.testing.assert_allclose(per_target.loc[used, "r"], r, atol=1e-6)
    np.testing.assert_allclose(per_target["r_normalized"], per_target["r"] / np.sqrt(0.5))

    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    keys = list(zip(summary["roi"], summary["hemi"]))
    assert keys == [(roi, h) for roi in ("V1", "V2", "LO") for h in ("lh", "rh", "both")]
    merged = targets.assign(r=per_target["r"])
    for roi in ("V1", "V2", "LO"):
        pooled = summary[(summary.roi == roi) & (summary.hemi == "both")].iloc[0]
        expected = merged.loc[merged.roi == roi, "r"].mean()  # pandas skips the excluded NaNs
        assert pooled["r"] == pytest.approx(expected, abs=1e-12)
        assert pooled["r_normalized"] == pytest.approx(expected / np.sqrt(0.5), abs=1e-12)
        assert pooled["noise_ceiling"] == pytest.approx(0.5)
    v1 = summary[summary.roi == "V1"].set_index("hemi")
    assert v1.loc["lh", "n_targets"] == 3 and v1.loc["lh", "n_excluded"] == 1
    assert v1.loc["both", "n_targets"] == 6 and v1.loc["both", "n_excluded"] == 2
    assert summary["roi_distance_mm"].tolist() == [0.0] * 3 + [10.0] * 3 + [20.0] * 3
    assert summary["time"].isna().all() and (summary["modality"] == "fmri").all()


def test_encode_summary_follows_contract(fmri_job):
    X, Y, targets, folds = fmri_job
    _, summary, _ = encode(X, Y, targets, folds, ALPHAS)
    identity = {
        "dataset": "d",
        "model": "m",
        "timm_name": "t",
        "signal": "act",
        "layer": "blocks.0",
        "layer_index": 0,
        "depth": 0.0,
        "subject": "s1",
    }
    table = summary.assign(**identity).astype({"layer_index": "int64"})
    assert contract.validate_table("encoding", table) == []
    assert summary["n_targets"].dtype == np.int64


def test_encode_meg_one_row_per_time_without_ceiling():
    rng = np.random.default_rng(10)
    targets = meg_targets()
    X, Y = random_data(rng, 50, 10, len(targets))
    per_target, summary, counts = encode(X, Y, targets, make_folds(50, None, 5, 0), ALPHAS)
    assert summary["time"].tolist() == [0.0, 0.1, 0.2, 0.3]
    assert (summary[["atlas", "roi", "hemi"]] == "").all().all()
    assert summary["roi_distance_mm"].isna().all() and summary["r_normalized"].isna().all()
    assert (summary["n_targets"] == 3).all()
    by_time = targets.assign(r=per_target["r"]).groupby("time")["r"].mean().to_numpy()
    np.testing.assert_allclose(summary["r"], by_time, atol=1e-12)
    assert per_target["r_normalized"].isna().all() and counts["n_targets_excluded"] == 0


def test_encode_input_errors(fmri_job):
    X, Y, targets, folds = fmri_job
    bad = X.copy()
    bad[3, 4] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        encode(bad, Y, targets, folds, ALPHAS)
    with pytest.raises(ValueError, match="Y has 59"):
        encode(X, Y[:59], targets, folds, ALPHAS)
    with pytest.raises(ValueError, match="targets has 23 rows"):
        encode(X, Y, targets.iloc[:23], folds, ALPHAS)
    with pytest.raises(ValueError, match="3 images cannot be split into 5 folds"):
        encode(X[:3], Y[:3], targets, folds, ALPHAS)
    with pytest.raises(ValueError, match="modality"):
        encode(X, Y, targets.assign(modality="eeg"), folds, ALPHAS)


def test_load_target_scores_roundtrip(tmp_path, fmri_job):
    X, Y, targets, folds = fmri_job
    per_target, _, _ = encode(X, Y, targets, folds, ALPHAS)
    path = tmp_path / "scores.parquet"
    write_table(path, per_target, {"seed": 0})
    pd.testing.assert_frame_equal(load_target_scores(path), per_target)
    write_table(path, per_target.drop(columns="alpha"))
    with pytest.raises(CorruptFileError, match="alpha"):
        load_target_scores(path)


def test_encode_target_constant_in_one_split_is_excluded(fmri_job):
    X, Y, targets, folds = fmri_job
    Y[folds[2][1], 3] = 1.0  # constant over fold 2's test images only
    per_target, summary, counts = encode(X, Y, targets, folds, ALPHAS)
    assert per_target.loc[3, "excluded"] and np.isnan(per_target.loc[3, "r"])
    assert counts["n_targets_degenerate_split"] == 1 and counts["n_targets_excluded"] == 1
    assert counts["n_targets_constant"] == 0
    assert summary["n_excluded"].sum() == 2  # once in V1 lh, once in V1 both


# ---------------------------------------------------------------- subjects who saw part of the image set


def test_folds_of_a_subset_keep_each_images_dataset_fold():
    from brainprop.encoding.folds import folds_from_table, folds_table

    samples = pd.DataFrame({"image_id": [f"i{k:02d}" for k in range(30)], "group": [f"g{k // 2}" for k in range(30)]})
    table = folds_table(samples, 5, seed=0, grouped=True)
    full = folds_from_table(table, samples["image_id"].to_numpy())
    subset = samples["image_id"].to_numpy()[::-3][:12]  # another order, a third of the images
    folds = folds_from_table(table, subset)
    fold_of = dict(zip(table["image_id"], table["fold"]))
    for train, test in folds:
        assert len({fold_of[i] for i in subset[test]}) == 1
        assert not set(subset[test]) & set(subset[train])
    assert sorted(np.concatenate([t for _, t in folds]).tolist()) == list(range(len(subset)))
    assert len(full) == 5
    with pytest.raises(ValueError, match=r"no fold for images \['x1'\]"):
        folds_from_table(table, np.array(["i00", "x1"]))
    with pytest.raises(ValueError, match="fall in 1 fold"):
        folds_from_table(table, subset[folds[0][1]])


def test_subject_rows_select_and_order_features():
    from brainprop.encoding.folds import subject_rows

    ids = np.array(["a", "b", "c", "d"])
    np.testing.assert_array_equal(subject_rows(ids, np.array(["d", "b"]), "F", "S"), [3, 1])
    with pytest.raises(ValueError, match=r"S: 1 image\(s\) have no features in F"):
        subject_rows(ids, np.array(["a", "z"]), "F", "S")


def test_encode_of_a_dead_layer_is_the_intercept_model(fmri_job, caplog):
    """A layer whose features are all constant predicts the training mean: r = 0, R² of that mean, logged."""
    X, Y, targets, folds = fmri_job
    with caplog.at_level("WARNING"):
        per_target, summary, counts = encode(np.full_like(X, 6.0), Y, targets, folds, ALPHAS)
    assert "all 12 feature columns of this layer are constant" in caplog.text
    assert counts["n_features_dropped"] == 12
    np.testing.assert_array_equal(per_target["r"], 0.0)
    assert per_target["alpha"].isna().all() and not per_target["excluded"].any()
    Y64 = Y.astype(np.float64)
    expected = np.mean(
        [r2_score(Y64[te], np.tile(Y64[tr].mean(0), (len(te), 1)), multioutput="raw_values") for tr, te in folds],
        axis=0,
    )
    np.testing.assert_allclose(per_target["r2"], expected, rtol=1e-12)
    assert (per_target["r2"] <= 0).all()
    shared = encode_shared(np.zeros_like(X), [Y, Y], [targets, targets], folds, ALPHAS)
    pd.testing.assert_frame_equal(shared[0][0], encode(np.zeros_like(X), Y, targets, folds, ALPHAS)[0])


# ---------------------------------------------------------------- the per-target encoding null (METHOD.md §6)


def brute_force_fold_p(X, Y, folds, null):
    """Each fold's permutation p by hand: the reference pipeline's held-out predictions, permuted, scipy r."""
    p = np.empty((len(folds), Y.shape[1]))
    for f, (train, test) in enumerate(folds):
        pipe = make_pipeline(StandardScaler(), RidgeCV(ALPHAS, alpha_per_target=True))
        pred = pipe.fit(X[train], Y[train]).predict(X[test])
        for j in range(Y.shape[1]):
            r = stats.pearsonr(pred[:, j], Y[test, j])[0]
            r_null = np.array([stats.pearsonr(pred[perm, j], Y[test, j])[0] for perm in null.fold(f, len(test))])
            count = (r_null >= r - 1e-9).sum()
            # Fewer than TAIL_COUNT permutations reaching r: the t-test's one-sided p (scipy) instead.
            tail = stats.pearsonr(pred[:, j], Y[test, j], alternative="greater").pvalue
            p[f, j] = (1 + count) / (1 + null.n_permutations) if count >= TAIL_COUNT else tail
    return p


def test_target_null_equals_permuting_the_reference_predictions():
    rng = np.random.default_rng(41)
    X, Y = random_data(rng, 50, 8, 6)
    folds = make_folds(50, None, 5, seed=2)
    null = TargetNull(99, (0, 7))
    got = ridge_cv(X, Y, folds, ALPHAS, null=null)
    expected = brute_force_fold_p(X, Y, folds, null)
    np.testing.assert_allclose(got.p_folds, expected, rtol=1e-5)
    assert (expected < 10 / 100).any() and (expected > 10 / 100).any()  # both branches are exercised
    np.testing.assert_array_equal(got.p_null, combine_fold_p(got.p_folds, "bonferroni", 99))
    assert ridge_cv(X, Y, folds, ALPHAS).p_null is None
    # The permutations depend on the seed and fold sizes only: every layer and signal of a subject shares them.
    np.testing.assert_array_equal(null.fold(3, 10), TargetNull(99, (0, 7)).fold(3, 10))
    assert not np.array_equal(null.fold(3, 10), TargetNull(99, (0, 8)).fold(3, 10))
    with pytest.raises(ValueError, match="n_permutations=0"):
        TargetNull(0, (0,))
    with pytest.raises(ValueError, match="combine='fisher'"):
        TargetNull(10, (0,), "fisher")


def test_combine_fold_p_closed_forms():
    p = np.array([[0.01, 0.2, 1.0], [0.01, 0.4, 0.5], [0.01, 0.9, 0.5]])
    cauchy = combine_fold_p(p, "cauchy", 999)
    assert cauchy[0] == pytest.approx(0.01)  # equal p combine to themselves
    t = np.tan((0.5 - np.array([0.2, 0.4, 0.9])) * np.pi).mean()
    assert cauchy[1] == pytest.approx(0.5 - np.arctan(t) / np.pi)
    assert 0.5 < cauchy[2] < 1.0  # a fold's p of 1 does not make the target's p 1
    np.testing.assert_allclose(combine_fold_p(p, "bonferroni"), [0.03, 0.6, 1.0])


@pytest.mark.parametrize("combine", ["cauchy", "bonferroni"])
def test_target_null_holds_its_level_on_null_targets(combine):
    # 2,000 targets of noise unrelated to X: rejections at p <= 0.01 inside the binomial 95 % interval
    # of the level (or below), and Benjamini–Hochberg at 0.05 passes none.
    rng = np.random.default_rng(42)
    X = rng.standard_normal((60, 10)) @ rng.standard_normal((10, 10))
    Y = rng.standard_normal((60, 2000))
    folds = make_folds(60, None, 5, seed=0)
    p = ridge_cv(X, Y, folds, ALPHAS, null=TargetNull(499, (1, 2), combine)).p_null
    for level in (0.01, 0.002):  # the second below what 499 permutations resolve: the t tail's level
        assert (p <= level).mean() <= stats.binom.ppf(0.975, 2000, level) / 2000
    if combine == "cauchy":  # about uniform, not conservative everywhere (Bonferroni is, above its smallest p)
        assert (p <= 0.5).mean() == pytest.approx(0.5, abs=0.1)
    targets = fmri_targets()
    Y_t = rng.standard_normal((60, len(targets)))
    per_target, summary, counts = encode(X, Y_t, targets, folds, ALPHAS, null=TargetNull(199, (1, 2), combine))
    assert (per_target["q"] <= 0.05).sum() == 0 and (summary["n_significant"] == 0).all()
    assert counts["n_permutations"] == 199 and counts["n_significant"] == 0


def test_target_null_finds_planted_targets_and_counts_them_per_roi():
    rng = np.random.default_rng(43)
    targets = fmri_targets()  # 24 targets: V1, V2, LO × lh, rh × 4
    X = rng.standard_normal((80, 10))
    Y = rng.standard_normal((80, len(targets)))
    planted = (targets["roi"] == "LO").to_numpy()
    Y[:, planted] += X @ rng.standard_normal((10, planted.sum())) * 0.5
    folds = make_folds(80, None, 5, seed=0)
    per_target, summary, counts = encode(X, Y, targets, folds, ALPHAS, null=TargetNull(499, (0, 1)), fdr=0.05)
    significant = (per_target["q"] <= 0.05).to_numpy()
    assert significant[planted].all() and significant[~planted].sum() <= 1
    # Beyond what 499 permutations resolve, p is the t tail: below the count's floor of 1/500.
    assert per_target.loc[planted, "p"].min() < 1 / 500 and per_target.loc[planted, "p"].max() < 0.005
    by_roi = summary.set_index(["roi", "hemi"])["n_significant"]
    assert by_roi[("LO", "both")] == 8 and by_roi[("LO", "lh")] == 4
    assert by_roi[("V1", "both")] + by_roi[("V2", "both")] == significant[~planted].sum()
    assert counts["n_significant"] == significant.sum()
    # Without the null the columns are there, NaN.
    plain, plain_summary, _ = encode(X, Y, targets, folds, ALPHAS)
    assert plain[["p", "q"]].isna().all().all() and plain_summary["n_significant"].isna().all()
    np.testing.assert_array_equal(plain["r"], per_target["r"])


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_target_null_of_shared_fits_equals_separate_fits(backend, fmri_job):
    if backend == "torch":
        pytest.importorskip("torch")
    X, Y, targets, folds = fmri_job
    Y2 = Y[:, ::-1] * 3.0 + 1.0
    nulls = [TargetNull(50, (0, 1)), TargetNull(50, (0, 2))]
    kwargs = {"backend": backend, "device": "cpu"}
    fits = encode_shared(X, [Y, Y2], [targets, targets], folds, ALPHAS, **kwargs, nulls=nulls)
    for (per_target, summary, _), Y_s, null in zip(fits, [Y, Y2], nulls):
        alone, alone_summary, _ = encode(X, Y_s, targets, folds, ALPHAS, **kwargs, null=null)
        pd.testing.assert_frame_equal(per_target, alone)
        pd.testing.assert_frame_equal(summary, alone_summary)
    if backend == "torch":  # float32 r; p counts permutations, so a near-tie may move it by one step
        ref = encode(X, Y, targets, folds, ALPHAS, null=nulls[0])[0]
        np.testing.assert_allclose(fits[0][0]["p"], ref["p"], atol=2 / 51)


def test_target_null_of_a_dead_layer_is_one(fmri_job):
    X, Y, targets, folds = fmri_job
    per_target, summary, _ = encode(np.zeros_like(X), Y, targets, folds, ALPHAS, null=TargetNull(20, (0,)))
    assert (per_target["p"] == 1.0).all() and (summary["n_significant"] == 0).all()
