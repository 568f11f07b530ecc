"""Gradient results against their confounds (METHOD.md §2 "Gradient scale", §4 "Joint models").

- The forward stack (every selected layer's activations and the model output) as E's reference:
  its reduction is the PCA of the training rows (scikit-learn as the oracle), and on planted data it
  removes what a deeper layer explains while keeping what only the gradient carries.
- Nuisance regressors partialled out inside each training split: `ridge_cv` equals scikit-learn's
  LinearRegression residuals + StandardScaler + RidgeCV per fold, and a planted confidence confound
  disappears.
- No fitted reduction or nuisance model sees a test row: changing one test image changes neither the
  training side nor any other test image's prediction; the check catches a planted leak (a reduction
  or a nuisance fit on all rows).
- The E rows name their reference, and the sensitivity table carries the new choices.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from test_group import PARAMS, simulate

from brainprop.encoding import _banded
from brainprop.encoding._banded import banded_grid, fold_predict, joint_ridge_cv
from brainprop.encoding._ridge import Partial, fold_partial, ridge_cv
from brainprop.encoding.folds import make_folds
from brainprop.encoding.joint import StackBand, joint_encode
from brainprop.encoding.nuisance import nuisance_matrix

ALPHAS = np.logspace(-1, 5, 4)


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """One BLAS thread: these small fits gain nothing from threads, and on a busy 2-core machine the spinning
    threads made two of them take 30 s instead of 2 s."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def _blocks(n: int = 60, seed: int = 0) -> list[np.ndarray]:
    """Three blocks of different widths and scales (one with a constant column), like layers and an output."""
    rng = np.random.default_rng(seed)
    blocks = [rng.standard_normal((n, 7)) * 3.0 + 1.0, rng.standard_normal((n, 12)), rng.standard_normal((n, 4))]
    blocks[1][:, 3] = 2.5  # a dead unit
    blocks[2] = blocks[2] @ rng.standard_normal((4, 4)) + blocks[0][:, :4]  # correlated with another block
    return blocks


# ---------------------------------------------------------------- the stack's reduction


def test_stack_band_is_the_pca_of_its_training_rows():
    blocks = _blocks()
    train, test = np.arange(45), np.arange(45, 60)
    z_train, z_test = StackBand(tuple(blocks), width=5).split(train, test)
    # Oracle: each block standardised on the training rows and scaled to unit total variance (1/sqrt of its
    # non-constant columns), concatenated, PCA fitted on the training rows; the test rows transformed.
    scaled = []
    for block in blocks:
        scaler = StandardScaler().fit(block[train])
        d = np.count_nonzero(block[train].std(axis=0) > 0)
        scaled.append((scaler.transform(block[train]) / np.sqrt(d), scaler.transform(block[test]) / np.sqrt(d)))
    pca = PCA(n_components=5, svd_solver="full").fit(np.hstack([a for a, _ in scaled]))
    want_train, want_test = (
        pca.transform(np.hstack([a for a, _ in scaled])),
        pca.transform(np.hstack([b for _, b in scaled])),
    )
    signs = np.sign((z_train * want_train).sum(axis=0))  # a component's sign is arbitrary
    np.testing.assert_allclose(z_train * signs, want_train, atol=1e-9)
    np.testing.assert_allclose(z_test * signs, want_test, atol=1e-9)
    # The width bounds the band; a rank-deficient training kernel gives fewer components.
    assert z_train.shape == (45, 5) and StackBand(tuple(blocks), width=500).split(train, test)[0].shape[1] == 22


# ---------------------------------------------------------------- no test row in any fitted transform


def _perturb_one_test_row(arrays: list[np.ndarray], row: int, seed: int = 9) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for a in arrays:
        a = a.copy()
        a[row] = rng.standard_normal(a.shape[1:]) * 10.0
        out.append(a)
    return out


def assert_fold_local(fit, arrays: list[np.ndarray], test: np.ndarray) -> None:
    """`fit(arrays) -> (training-side output, (n_test, ...) test output)`: neither the training side nor any other
    test row may change when one test row of the inputs changes (what a transform fitted on all rows would do)."""
    train_out, test_out = fit(arrays)
    train_new, test_new = fit(_perturb_one_test_row(arrays, test[1]))
    np.testing.assert_allclose(train_new, train_out, rtol=1e-9, atol=1e-9, err_msg="training side saw a test row")
    others = np.arange(len(test)) != 1
    np.testing.assert_allclose(test_new[others], test_out[others], rtol=1e-9, atol=1e-9, err_msg="test rows leak")


class _LeakyStack(StackBand):
    """The planted leak: the same reduction fitted on every row (training and test; nuisances left in)."""

    def split(self, train, test, partial=None):
        every = np.arange(len(self))
        z, _ = StackBand.split(self, every, every[:2])
        return z[train], z[test]


class _LeakyPartial(Partial):
    """The planted leak: the nuisance regression fitted on the training and the test rows together."""

    def __call__(self, A_train, A_test):
        design = np.vstack([self.design_train, self.design_test])
        coef = np.linalg.pinv(design) @ np.vstack([A_train, A_test])
        return A_train - self.design_train @ coef, A_test - self.design_test @ coef


def _fold_data(n: int = 60, seed: int = 1):
    rng = np.random.default_rng(seed)
    blocks = _blocks(n, seed)
    grad = rng.standard_normal((n, 6)) + blocks[1][:, :6]
    Y = blocks[0][:, :3] @ rng.standard_normal((3, 4)) + grad[:, :4] + rng.standard_normal((n, 4))
    nuisance = rng.standard_normal((n, 2))
    train, test = np.arange(12, n), np.arange(12)
    return blocks, grad, Y, nuisance, train, test


def test_fitted_reductions_and_nuisance_fits_see_no_test_row(monkeypatch):
    blocks, grad, Y, nuisance, train, test = _fold_data()
    grid = banded_grid(ALPHAS, 2)

    def reduction(arrays):
        return StackBand(tuple(arrays), width=6).split(train, test)

    def partial(arrays):
        return fold_partial(arrays[0], train, test)(arrays[1][train], arrays[1][test])

    def whole_fold(arrays, stack=StackBand):
        *stack_blocks, g, y, n = arrays
        best, pred, _, _ = fold_predict([stack(tuple(stack_blocks), 6), g], y, train, test, grid, n)
        return best, pred

    assert_fold_local(reduction, blocks, test)
    assert_fold_local(partial, [nuisance, Y], test)
    assert_fold_local(whole_fold, [*blocks, grad, Y, nuisance], test)
    # The test responses never reach the fit: changing all of them changes no prediction.
    y_new = Y.copy()
    y_new[test] += 100.0
    np.testing.assert_array_equal(
        whole_fold([*blocks, grad, y_new, nuisance])[1], whole_fold([*blocks, grad, Y, nuisance])[1]
    )

    # The check catches a planted leak: the reduction fitted on all rows, then the nuisance fit on all rows.
    with pytest.raises(AssertionError, match="training side saw a test row"):
        assert_fold_local(lambda arrays: _LeakyStack(tuple(arrays), 6).split(train, test), blocks, test)
    with pytest.raises(AssertionError, match="training side saw a test row"):
        assert_fold_local(lambda arrays: whole_fold(arrays, _LeakyStack), [*blocks, grad, Y, nuisance], test)

    def leaky_fold_partial(N, train, test):
        real = fold_partial(N, train, test)
        return _LeakyPartial(real.design_train, real.design_test, real.pinv)

    monkeypatch.setattr(_banded, "fold_partial", leaky_fold_partial)
    with pytest.raises(AssertionError, match="training side saw a test row|test rows leak"):
        assert_fold_local(whole_fold, [*blocks, grad, Y, nuisance], test)


# ---------------------------------------------------------------- nuisances against scikit-learn and a plant


def _nuisance_ridge_by_refits(X, Y, nuisance, train, test, alphas):
    """Ridge with an intercept and unpenalised nuisance columns, the penalty of each target chosen by
    leaving each training row out and refitting: the independent reference of `ridge_cv(nuisance=...)`.

    The features are the training rows' nuisance residuals, standardised (a fixed transform, as in
    the pipeline); returns the chosen penalties and the held-out r against the test rows' residuals.
    """
    D = np.column_stack([np.ones(len(train)), nuisance[train]])
    D_test = np.column_stack([np.ones(len(test)), nuisance[test]])
    coef_x = np.linalg.lstsq(D, X[train], rcond=None)[0]
    x_train, x_test = X[train] - D @ coef_x, X[test] - D_test @ coef_x
    scaler = StandardScaler().fit(x_train)
    x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    A = np.hstack([D, x_train])
    y = Y[train]

    def solve(rows, alpha):
        penalty = np.diag(np.r_[np.zeros(D.shape[1]), np.full(x_train.shape[1], alpha)])
        return np.linalg.solve(A[rows].T @ A[rows] + penalty, A[rows].T @ y[rows])

    errors = []
    for alpha in alphas:
        loo = np.array([A[i] @ solve(np.delete(np.arange(len(train)), i), alpha) for i in range(len(train))])
        errors.append(((y - loo) ** 2).mean(axis=0))
    best = np.argmin(np.array(errors), axis=0)  # first minimum: ties to the smaller penalty
    coef_y = np.linalg.lstsq(D, y, rcond=None)[0]
    y_test = Y[test] - D_test @ coef_y
    r = []
    for j, b in enumerate(best):
        beta = solve(np.arange(len(train)), alphas[b])[D.shape[1] :, j]
        r.append(np.corrcoef(x_test @ beta, y_test[:, j])[0, 1])
    return np.asarray(alphas)[best], np.array(r)


def test_ridge_cv_with_nuisances_equals_refits_with_unpenalised_nuisance_columns():
    """Wide features (d > n_train, as every demo layer): the leave-one-out error must count the nuisance fit."""
    rng = np.random.default_rng(3)
    n = 60
    nuisance = rng.standard_normal((n, 3))
    nuisance[:, 2] = nuisance[:, 0] + 0.1 * rng.standard_normal(n)  # collinear, as confidence and entropy are
    X = rng.standard_normal((n, 80)) + nuisance[:, :1] * 2.0
    Y = (
        X[:, :3] @ rng.standard_normal((3, 4))
        + nuisance @ rng.standard_normal((3, 4))
        + 3 * rng.standard_normal((n, 4))
    )
    folds = make_folds(n, None, 4, 0)
    got = ridge_cv(X, Y, folds, ALPHAS, nuisance=nuisance)
    banded = joint_ridge_cv([X], Y, folds, ALPHAS, nuisance=nuisance)
    for f, (train, test) in enumerate(folds):
        alpha, r = _nuisance_ridge_by_refits(X, Y, nuisance, train, test, ALPHAS)
        np.testing.assert_array_equal(got.alpha[f], alpha)
        np.testing.assert_allclose(got.r_folds[f], r, atol=1e-8)
        np.testing.assert_array_equal(banded.alpha[f, :, 0], alpha)
        np.testing.assert_allclose(banded.r_folds[f], r, atol=1e-8)
    assert len(set(got.alpha.ravel())) > 1  # the check has penalties to tell apart
    assert not np.allclose(got.r, ridge_cv(X, Y, folds, ALPHAS).r, atol=1e-3)  # the nuisances did something


def _confidence_world(n: int = 240, seed: int = 4):
    """A model whose gradients carry its uncertainty (p − onehot) and a brain that responds to hard images."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.05, 1.0, n)
    features = 1.0 + 0.3 * rng.standard_normal((n, 12))
    act = features + 0.3 * rng.standard_normal((n, 12))
    grad = (1.0 - confidence)[:, None] * features  # every layer's gradient scaled by the uncertainty
    Y = (1.0 - confidence)[:, None] + 0.3 * rng.standard_normal((n, 5))  # no backprop in this brain
    return act, grad, Y, confidence, make_folds(n, None, 5, 0)


def test_partialling_the_confidence_removes_its_confound():
    act, grad, Y, confidence, folds = _confidence_world()
    without, _ = joint_encode(act, grad, Y, folds, ALPHAS)
    with_nuisance, _ = joint_encode(act, grad, Y, folds, ALPHAS, nuisance=confidence[:, None])
    assert without["unique_grad"].mean() > 0.3  # the gradient "predicts" the brain beyond the activations
    assert abs(with_nuisance["unique_grad"].mean()) < 0.03 and with_nuisance["r2_grad"].mean() < 0.03
    assert ridge_cv(grad, Y, folds, ALPHAS).r.mean() > 0.5
    assert abs(ridge_cv(grad, Y, folds, ALPHAS, nuisance=confidence[:, None]).r.mean()) < 0.15


# ---------------------------------------------------------------- the stack against a planted deep-layer confound


def _network_world(n: int = 240, seed: int = 5):
    """Layer 1, a deeper layer 2 with information layer 1 holds only nonlinearly, an output; layer 1's gradient
    carries layer 2 linearly (as dL/dh_1 depends on every deeper activation) plus a part of its own."""
    rng = np.random.default_rng(seed)
    h1 = rng.standard_normal((n, 10))
    h2 = np.tanh(h1 @ rng.standard_normal((10, 10)) + 1.5 * rng.standard_normal((n, 10)))
    output = h2 @ rng.standard_normal((10, 6))
    own = rng.standard_normal((n, 4))  # what only the gradient carries
    grad = np.hstack([h2 @ rng.standard_normal((10, 8)), own]) + 0.05 * rng.standard_normal((n, 12))
    noise = 0.5 * rng.standard_normal((n, 6))
    Y = np.hstack([h2 @ rng.standard_normal((10, 3)), own @ rng.standard_normal((4, 3))]) + noise
    return h1, h2, output, grad, Y, make_folds(n, None, 5, 0)


def test_the_stack_removes_what_deeper_layers_explain_and_keeps_the_gradients_own_part():
    h1, h2, output, grad, Y, folds = _network_world()
    per_target, counts = joint_encode(
        h1, grad, Y, folds, ALPHAS, references=("same_layer", "stack"), stack=[h1, h2, output], width=64
    )
    per_target = per_target.assign(column=np.tile(np.arange(Y.shape[1]), 2))
    unique = per_target.pivot(index="column", columns="reference", values="unique_grad")
    deep, own = unique.iloc[:3], unique.iloc[3:]
    # Targets driven by the deeper layer: against the layer's own activations the gradient seems to add a lot;
    # against the forward stack, nothing.
    assert (deep["same_layer"] > 0.1).all() and (deep["stack"].abs() < 0.03).all()
    # Targets driven by what only the gradient carries keep their unique variance against either reference.
    assert (own["same_layer"] > 0.3).all() and (own["stack"] > 0.3).all()
    assert counts["references"] == ["same_layer", "stack"] and counts["n_features_stack"] == 26


def test_nuisance_matrix_reads_the_extract_table_and_names_its_gaps():
    table = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "confidence": [0.9, 0.5, 0.2],
            "entropy": [0.1, 1.0, 2.0],
            "grad_norm_00": [1.0, 2.0, 4.0],
            "grad_norm_01": [np.nan, 1.0, 1.0],
        }
    )
    got = nuisance_matrix(table, ["confidence", "grad_norm"], 0, "features/m/demo/extract")
    np.testing.assert_allclose(got, np.column_stack([[0.9, 0.5, 0.2], np.log([1.0, 2.0, 4.0])]))
    with pytest.raises(ValueError, match=r"features/m/demo/extract: encoding.nuisance 'grad_norm' is not available"):
        nuisance_matrix(table, ["grad_norm"], 1, "features/m/demo/extract")
    with pytest.raises(ValueError, match=r"no column 'grad_norm_02'"):
        nuisance_matrix(table, ["grad_norm"], 2, "x")
    with pytest.raises(ValueError, match=r"encoding.nuisance: \['loss'\] unknown"):
        nuisance_matrix(table, ["loss"], 0, "x")


# ---------------------------------------------------------------- E names its reference; the sensitivity table


def _two_reference_joint(enc: pd.DataFrame) -> pd.DataFrame:
    """Joint summary rows of both references: the stack's unique variance is a third of the same layer's."""
    keys = ["dataset", "model", "subject", "layer_index", "modality", "atlas", "roi", "hemi", "time"]
    rows = enc[enc["signal"] == "act"][keys].drop_duplicates().reset_index(drop=True)
    value = 0.03 * (rows["subject"].astype(int).to_numpy() + 1) * np.where(rows["roi"].isin(["FFA", "IT"]), 1.0, 0.2)
    same = rows.assign(reference="same_layer", unique_grad=value, unique_act=0.1)
    return pd.concat([same, same.assign(reference="stack", unique_grad=value / 3)], ignore_index=True)


def test_sensitivity_reports_e_against_each_reference_and_the_new_choices():
    from brainprop.contract import validate_table
    from brainprop.hierarchy.scores import subject_hierarchy
    from brainprop.stats.group import group_tests
    from brainprop.stats.sensitivity import sensitivity_table

    enc = simulate(6)
    joint = _two_reference_joint(enc)
    params = PARAMS | {"n_permutations": 99, "reference": "stack"}
    best, tm, hier = subject_hierarchy(enc, "glasser", 0.95, 3)
    variant = group_tests(enc, best, tm, hier, params, joint).assign(model="m__grad_normalize_l2")
    out = sensitivity_table(
        enc,
        params,
        {"reference": ["stack", "same_layer"]},
        {"grad_normalize=l2": variant, "nuisance=confidence": variant},
        joint,
    )
    assert validate_table("sensitivity", out) == []
    e = out[(out["test"] == "E") & (out["measure"] == "unique_variance")].set_index(["choice", "modality", "level"])
    # high ROIs: 0.03·(s+1) against the same layer, a third of it against the stack; 6 subjects.
    assert e.loc[("default", "fmri", "high"), "effect"] == pytest.approx(0.035)
    assert e.loc[("default", "fmri", "high"), "reference"] == "stack"
    assert e.loc[("reference", "fmri", "high"), "effect"] == pytest.approx(0.105)
    assert e.loc[("reference", "fmri", "high"), "reference"] == "same_layer"
    assert {"grad_normalize", "nuisance"} <= set(e.index.get_level_values("choice"))
    assert set(out.loc[out["choice"] == "reference", "test"]) == {"E"}
    # Same sign, both significant or not: the reference does not change the conclusion here.
    assert out.loc[out["choice"] == "reference", "same_as_default"].all()


def test_variants_and_references_of_the_run_model():
    from brainprop.run import Run, model_variants

    model = {
        "source": "timm",
        "name": "resnet18",
        "weights": "pretrained",
        "loss": "cross_entropy",
        "loss_params": {},
        "pooling": {"mode": "grid", "grid": 2},
        "signals": ["act", "grad"],
        "grad_normalize": "none",
        "controls": [],
    }
    sensitivity = {
        "models": ["a"],
        "grad_normalize": ["none", "l2"],
        "nuisance": [[], ["confidence", "entropy", "grad_norm"]],
        "loss": [{"name": "head", "params": {"head": "h.pth"}}],
    }
    out = model_variants({"a": model, "b": model}, sensitivity)
    assert sorted(out) == [
        "a",
        "a__grad_normalize_l2",
        "a__loss_head",
        "a__nuisance_confidence_entropy_grad_norm",
        "b",
    ]
    assert out["a__grad_normalize_l2"]["grad_normalize"] == "l2"
    assert out["a__loss_head"]["loss_params"] == {"head": "h.pth"}
    nuisance = out["a__nuisance_confidence_entropy_grad_norm"]
    assert (nuisance["choice"], nuisance["value"]) == ("nuisance", "confidence+entropy+grad_norm")
    config = {
        "run": "r",
        "models": {"a": model, "b": model},
        "datasets": {},
        "sensitivity": sensitivity | {"reference": ["stack", "same_layer"]},
        "encoding": {"nuisance": []},
        "joint": {"reference": "stack"},
    }
    run = Run(config)
    assert run.nuisance("a") == [] and run.nuisance("a__nuisance_confidence_entropy_grad_norm") == [
        "confidence",
        "entropy",
        "grad_norm",
    ]
    assert run.joint_references("a") == ["stack", "same_layer"]
    assert run.joint_references("b") == run.joint_references("a__grad_normalize_l2") == ["stack"]


def test_joint_controls_false_leaves_only_the_controls_without_joint_fits():
    from brainprop.run import Run

    model = {"source": "timm", "name": "resnet18", "weights": "pretrained", "loss": "cross_entropy",
             "loss_params": {}, "pooling": {"mode": "grid", "grid": 2}, "signals": ["act", "grad"],
             "grad_normalize": "none", "controls": ["random_init", "shuffled_loss"]}  # fmt: skip
    config = {
        "run": "r",
        "models": {"a": model},
        "datasets": {},
        "sensitivity": {"models": ["a"], "grad_normalize": ["l2"]},
        "encoding": {"nuisance": []},
        "joint": {"enabled": True, "models": None, "reference": "stack"},
    }
    fitted = {alias: Run(config).has_joint(alias) for alias in Run(config).models}
    assert fitted == dict.fromkeys(["a", "a__random_init", "a__shuffled_loss", "a__grad_normalize_l2"], True)
    config["joint"]["controls"] = False
    run = Run(config)
    assert {alias: run.has_joint(alias) for alias in run.models} == fitted | {
        "a__random_init": False,
        "a__shuffled_loss": False,
    }


def test_config_names_the_loss_files_and_sensitivity_models(tmp_path):
    from pathlib import Path

    import yaml

    from brainprop.config import ConfigError, validate_config

    base = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())
    model = next(iter(base["models"]))
    config = yaml.safe_load(yaml.safe_dump(base))
    config["models"][model] |= {"loss": "head", "loss_params": {}}
    config["sensitivity"]["models"] = ["nope"]
    config["sensitivity"]["loss"] = [{"name": "contrastive", "params": {"text_embeddings": str(tmp_path / "t.npy")}}]
    with pytest.raises(ConfigError) as err:
        validate_config(config, check_models=False)
    message = str(err.value)
    assert f"models.{model}.loss_params.head: loss 'head' needs this file" in message
    assert "sensitivity.models: 'nope' is not a model alias" in message
    assert f"sensitivity.loss.0.params.text_embeddings: checkpoint {tmp_path / 't.npy'} does not exist" in message
