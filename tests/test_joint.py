"""Joint models: unique variance against banded ridge and a planted split, summaries, and the E test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_group import PARAMS, simulate

from brainprop.encoding._banded import banded_ridge_cv
from brainprop.encoding.folds import make_folds
from brainprop.encoding.joint import joint_encode, joint_encode_shared, summarize_joint
from brainprop.hierarchy.scores import subject_hierarchy
from brainprop.stats.group import group_tests

ALPHAS = np.logspace(0, 6, 4)


def _planted(n: int = 120, seed: int = 0):
    """Targets 0-1 from activations only, 2-3 from gradients only, 4 constant, 5 with a NaN."""
    rng = np.random.default_rng(seed)
    act, grad = rng.standard_normal((n, 6)), rng.standard_normal((n, 5))
    Y = np.column_stack(
        [act[:, 0], act[:, 1] - act[:, 2], grad[:, 0], grad[:, 1] + grad[:, 3], np.ones(n), rng.standard_normal(n)]
    )
    Y[:, :4] += 0.3 * rng.standard_normal((n, 4))
    Y[3, 5] = np.nan
    return act, grad, Y, make_folds(n, None, 5, 0)


def test_unique_variance_matches_banded_ridge_and_plant():
    act, grad, Y, folds = _planted()
    per_target, counts = joint_encode(act, grad, Y, folds, ALPHAS)
    ref = banded_ridge_cv([act, grad], Y[:, :4], folds, ALPHAS)
    np.testing.assert_allclose(per_target["r2_joint"].to_numpy()[:4], ref.r2, atol=1e-12)
    np.testing.assert_allclose(per_target["unique_grad"].to_numpy()[:4], ref.unique[1], atol=1e-12)
    np.testing.assert_allclose(per_target["unique_act"].to_numpy()[:4], ref.unique[0], atol=1e-12)
    unique_grad = per_target["unique_grad"].to_numpy()
    unique_act = per_target["unique_act"].to_numpy()
    # Gradient-driven targets: most of their R² is unique to the gradients, and conversely.
    assert (unique_grad[2:4] > 0.5).all() and (np.abs(unique_grad[:2]) < 0.05).all()
    assert (unique_act[:2] > 0.5).all() and (np.abs(unique_act[2:4]) < 0.05).all()
    assert per_target["excluded"].tolist() == [False] * 4 + [True, True]
    assert counts["n_targets_excluded"] == 2 and counts["n_pairs"] == 16


@pytest.mark.parametrize("stacked", [False, True])
def test_shared_fit_of_several_subjects_equals_separate_fits(stacked):
    act, grad, Y, folds = _planted()
    rng = np.random.default_rng(5)
    subjects = [Y, Y[:, ::-1] + 0.5 * rng.standard_normal(Y.shape), Y[:, :3] * 2.0 + 1.0]
    # With the forward stack and nuisances too: both references, one block of rows per reference.
    options = (
        {"references": ("stack", "same_layer"), "stack": [act, rng.standard_normal((len(Y), 4))], "width": 5}
        | {"nuisance": rng.standard_normal((len(Y), 2))}
        if stacked
        else {}
    )
    shared = joint_encode_shared(act, grad, subjects, folds, ALPHAS, **options)
    for Ys, (per_target, counts) in zip(subjects, shared):
        alone, alone_counts = joint_encode(act, grad, Ys, folds, ALPHAS, **options)
        n_refs = len(options.get("references", ("same_layer",)))
        assert per_target.columns.equals(alone.columns) and len(per_target) == n_refs * Ys.shape[1]
        assert per_target["reference"].tolist() == alone["reference"].tolist()
        for column in per_target.columns.drop("reference"):
            np.testing.assert_allclose(per_target[column].to_numpy(float), alone[column].to_numpy(float), atol=1e-10)
        assert counts == alone_counts


def test_constant_gradient_band_has_zero_unique_variance():
    act, grad, Y, folds = _planted()
    per_target, counts = joint_encode(act, np.zeros_like(grad), Y, folds, ALPHAS)
    assert counts["n_features_grad_dropped"] == grad.shape[1]
    used = ~per_target["excluded"].to_numpy()
    assert (per_target["unique_grad"].to_numpy()[used] == 0).all()
    np.testing.assert_allclose(per_target["unique_act"].to_numpy()[used], per_target["r2_joint"].to_numpy()[used])


def test_bad_inputs_raise():
    act, grad, Y, folds = _planted()
    with pytest.raises(ValueError, match="same number of images"):
        joint_encode(act[:-1], grad, Y, folds)
    bad = act.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="activation features have 1 non-finite"):
        joint_encode(bad, grad, Y, folds)
    with pytest.raises(ValueError, match="all 2 targets are constant"):
        joint_encode(act, grad, np.ones((len(Y), 2)), folds)


def test_summary_means_per_roi_hemisphere_and_time():
    per_target = pd.DataFrame(
        {
            "target": range(5),
            "r_joint": 0.0,
            "r2_joint": [0.1, 0.3, 0.5, 0.2, np.nan],
            "r2_act": 0.0,
            "r2_grad": 0.0,
            "unique_act": 0.0,
            "unique_grad": [0.01, 0.03, 0.05, 0.02, np.nan],
            "excluded": [False, False, False, False, True],
        }
    )
    targets = pd.DataFrame(
        {
            "target": range(5),
            "modality": ["fmri"] * 3 + ["meg"] * 2,
            "atlas": ["a"] * 3 + [""] * 2,
            "roi": ["V1"] * 3 + [""] * 2,
            "hemi": ["lh", "rh", "rh", "", ""],
            "roi_distance_mm": [0.0] * 3 + [np.nan] * 2,
            "time": [np.nan] * 3 + [0.1, 0.2],
        }
    )
    out = summarize_joint(per_target, targets).set_index(["modality", "hemi", "time"], drop=False)
    assert out.loc[("fmri", "rh", np.nan), "unique_grad"].item() == pytest.approx(0.04)
    assert out.loc[("fmri", "both", np.nan), "r2_joint"].item() == pytest.approx(0.3)
    meg = out[out["modality"] == "meg"]
    assert meg["n_targets"].tolist() == [1, 0] and meg["n_excluded"].tolist() == [0, 1]
    assert np.isnan(meg["unique_grad"].iloc[1])


def _joint_rows(enc: pd.DataFrame) -> pd.DataFrame:
    """Joint summary rows for every subject × layer × ROI/time, unique_grad a known function of them."""
    keys = ["dataset", "model", "subject", "layer_index", "modality", "atlas", "roi", "hemi", "time"]
    rows = enc[enc["signal"] == "act"][keys].drop_duplicates().reset_index(drop=True)
    subject = rows["subject"].astype(int).to_numpy()
    value = 0.01 * (subject + 1) * np.where(rows["roi"].isin(["FFA", "IT"]), 1.0, -1.0)
    value = np.where(rows["modality"] == "meg", 0.002 * rows["layer_index"].to_numpy(), value)
    return rows.assign(unique_grad=value, unique_act=0.1, reference="stack")


def test_e_has_unique_variance_rows_in_its_family():
    enc = simulate(6)
    best, tm, hier = subject_hierarchy(enc, "glasser", 0.95, 3)
    joint = _joint_rows(enc)
    out = group_tests(enc, best, tm, hier, PARAMS, joint)
    e = out[out["test"] == "E"].set_index(["modality", "level", "measure"])
    levels = [("fmri", "early"), ("fmri", "high"), ("meg", "early"), ("meg", "late")]
    assert set(e.index) == {(*lv, m) for lv in levels for m in ("r_difference", "unique_variance")}
    # high ROIs: +0.01·(s+1), early ROIs: −0.01·(s+1); mean over 6 subjects = ±0.035.
    assert e.loc[("fmri", "high", "unique_variance"), "effect"] == pytest.approx(0.035)
    assert e.loc[("fmri", "early", "unique_variance"), "effect"] == pytest.approx(-0.035)
    assert e.loc[("meg", "late", "unique_variance"), "effect"] == pytest.approx(0.002 * 3.5)
    assert e.loc[("fmri", "high", "unique_variance"), "p"] == pytest.approx(2.0**-5)
    assert set(e["family"]) == {"sim/m/grad/E"}
    # Each E row names its reference: the same layer for the r difference, the forward stack (the default) for
    # the unique variance; a run whose joint models used another reference has no unique-variance rows.
    assert set(e.reset_index().groupby("measure")["reference"].unique().map(tuple)) == {("same_layer",), ("stack",)}
    assert not (
        group_tests(enc, best, tm, hier, PARAMS | {"reference": "same_layer"}, joint)["measure"] == "unique_variance"
    ).any()
    # Without joint models, E keeps only the r differences, with the same numbers.
    plain = group_tests(enc, best, tm, hier, PARAMS)
    plain_e = plain[plain["test"] == "E"].set_index(["modality", "level", "measure"])
    assert set(plain_e.index) == {(*lv, "r_difference") for lv in levels}
    for column in ("effect", "p", "ci_low", "ci_high"):
        np.testing.assert_allclose(plain_e[column], e.loc[plain_e.index, column])
    with pytest.raises(ValueError, match="joint table lacks columns"):
        group_tests(enc, best, tm, hier, PARAMS, joint.drop(columns="hemi"))


def test_joint_models_must_name_configured_models():
    from pathlib import Path

    import yaml

    from brainprop.config import ConfigError, validate_config

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())
    config["joint"]["models"] = ["resnet19"]
    with pytest.raises(ConfigError, match=r"joint.models: 'resnet19' is not a model alias"):
        validate_config(config, check_models=False)


def test_penalty_pairs_with_one_ratio_share_a_decomposition():
    from brainprop.encoding._banded import _ratio_groups, banded_grid

    grid = banded_grid(np.logspace(0, 8, 5), 2)
    groups = _ratio_groups(grid)
    assert len(groups) == 9  # ratios 10^-8 ... 10^8 in steps of 10^2
    assert sorted(np.concatenate([combos for _, combos in groups]).tolist()) == list(range(25))
    for weights, combos in groups:
        np.testing.assert_allclose(grid[combos, 1][:, None] / grid[combos], np.broadcast_to(weights, (combos.size, 2)))
