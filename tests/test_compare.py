"""Model comparisons, the sensitivity table and model variants (controls)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_group import PARAMS, simulate

from brainprop.contract import validate_table
from brainprop.hierarchy.scores import subject_hierarchy
from brainprop.run import model_variants
from brainprop.stats.compare import compare_models
from brainprop.stats.group import subject_statistics
from brainprop.stats.sensitivity import sensitivity_table


def _per_subject(model: str, grad_shift: float, seed: int) -> pd.DataFrame:
    """Hand-made per-subject statistics: 6 subjects, act and grad T1 / S1a, grad T2 / S1b."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(6):
        for signal, test, base in (
            ("act", "T1", 0.8),
            ("act", "S1a", 0.9),
            ("grad", "T1", -0.5),
            ("grad", "S1a", 0.3),
            ("grad", "S1b", 0.2),
            ("grad", "T2", 0.1),
        ):
            value = base + (grad_shift if signal == "grad" else 0.0) + rng.normal(0, 0.05)
            rows.append(
                {
                    "dataset": "sim",
                    "modality": "meg" if test.startswith("T") else "fmri",
                    "model": model,
                    "signal": signal,
                    "test": test,
                    "level": "",
                    "subject": f"{s:02d}",
                    "statistic": value,
                }
            )
    return pd.DataFrame(rows)


def test_act_vs_grad_is_a_paired_wilcoxon_of_score_differences():
    per = _per_subject("m", 0.0, 0)
    out = compare_models(per, seed=0, n_boot=200)
    assert validate_table("comparisons", out) == []
    row = out[(out["comparison"] == "act_vs_grad") & (out["measure"] == "temporal_score")].iloc[0]
    grad = per[(per["signal"] == "grad") & (per["test"] == "T1")]["statistic"].to_numpy()
    act = per[(per["signal"] == "act") & (per["test"] == "T1")]["statistic"].to_numpy()
    ref = stats.wilcoxon(grad - act, alternative="two-sided", method="exact")
    assert row["p"] == pytest.approx(ref.pvalue) and row["statistic"] == ref.statistic
    assert row["effect"] == pytest.approx((grad - act).mean())
    assert row["ci_low"] <= row["effect"] <= row["ci_high"]
    assert row["family"] == "sim/act_vs_grad" and row["n_subjects"] == 6


def test_models_are_ranked_by_closeness_to_the_backprop_signature():
    # Model "near" has gradients shifted by −0.3: T1 more negative (closer), S1a/S1b/T2 lower (farther).
    per = pd.concat([_per_subject("far", 0.0, 1), _per_subject("near", -0.3, 2)], ignore_index=True)
    out = compare_models(per, seed=0, n_boot=200)
    ranks = out[out["comparison"] == "rank"].set_index(["measure", "model_a"])["rank"]
    assert ranks[("T1_signed", "near")] == 1 and ranks[("T1_signed", "far")] == 2
    assert ranks[("S1a_signed", "far")] == 1
    pairs = out[out["comparison"] == "models"].set_index("measure")
    # a − b = far − near on the signed T1 statistic: −(−0.5) − (−(−0.8)) ≈ −0.3, every subject.
    assert pairs.loc["T1_signed", "effect"] == pytest.approx(-0.3, abs=0.1)
    assert pairs.loc["T1_signed", "p"] == pytest.approx(2.0**-5)
    assert set(pairs["family"]) == {"sim/models"}
    family = out[out["family"] == "sim/models"].dropna(subset=["p"])
    np.testing.assert_allclose(family["p_fdr"], stats.false_discovery_control(family["p"], method="bh"))


def test_sensitivity_varies_one_choice_at_a_time():
    enc = simulate(6)
    enc = pd.concat([enc, enc[enc["modality"] == "fmri"].assign(atlas="other")], ignore_index=True)
    params = PARAMS | {"n_permutations": 99}
    variant_tests = {"pooling=mean": _default_tests(enc, params).assign(model="m__pooling_mean")}
    out = sensitivity_table(
        enc, params, {"tmax_threshold": [0.9, 0.95, 0.99], "exclude": ["nonpositive", "none"]}, variant_tests
    )
    assert validate_table("sensitivity", out) == []
    assert set(zip(out["choice"], out["value"])) == {
        ("default", ""),
        ("tmax_threshold", "0.9"),
        ("tmax_threshold", "0.99"),
        ("exclude", "none"),
        ("atlas", "other"),
        ("pooling", "mean"),
    }
    # E (its r differences here: no joint models) sits beside the default and the variants' rows; the
    # threshold, exclusion and atlas choices do not change it.
    assert set(out["test"]) == {"T1", "T2", "S1a", "S1b", "E"}
    assert set(out.loc[out["choice"].isin(["default", "pooling"]) & (out["test"] == "E"), "measure"]) == {
        "r_difference"
    }
    assert set(out.loc[out["choice"].isin(["tmax_threshold", "exclude", "atlas"]), "test"]) == {
        "T1",
        "T2",
        "S1a",
        "S1b",
    }
    assert (out.loc[out["choice"] == "atlas", "modality"] == "fmri").all()
    assert set(out["model"]) == {"m"}
    # The planted effects are strong: no choice changes a conclusion here.
    assert out.loc[out["test"] != "E", "same_as_default"].all()
    default = out[(out["choice"] == "default") & (out["test"] != "E")].set_index(["signal", "test"])
    threshold = out[(out["choice"] == "tmax_threshold") & (out["value"] == "0.99")].set_index(["signal", "test"])
    best, tm, hier = subject_hierarchy(enc, "glasser", 0.99, 3)
    t1 = subject_statistics(enc, best, tm, hier, params | {"threshold": 0.99})
    t1 = t1[(t1["test"] == "T1") & (t1["signal"] == "grad")]
    assert threshold.loc[("grad", "T1"), "effect"] == pytest.approx(t1["statistic"].mean())
    assert default.loc[("grad", "S1a"), "effect"] == pytest.approx(threshold.loc[("grad", "S1a"), "effect"])


def _default_tests(enc: pd.DataFrame, params: dict) -> pd.DataFrame:
    from brainprop.stats.group import group_tests

    best, tm, hier = subject_hierarchy(enc, params["atlas"], params["threshold"], params["min_count"])
    return group_tests(enc, best, tm, hier, params)


def _model(**over) -> dict:
    return {
        "timm_name": "resnet18",
        "weights": "pretrained",
        "loss": "cross_entropy",
        "loss_params": {},
        "pooling": {"mode": "grid", "grid": 2},
        "signals": ["act", "grad"],
        "controls": ["random_init", "shuffled_loss"],
    } | over


def test_variants_make_the_controls_and_sensitivity_copies():
    models = {"a": _model(), "b": _model(weights="random", loss="self_distillation")}
    out = model_variants(models, {"pooling": ["mean", "grid"], "loss": ["self_distillation"]})
    assert set(out) == {
        "a",
        "a__random_init",
        "a__shuffled_loss",
        "a__pooling_mean",
        "a__loss_self_distillation",
        "b",
        "b__pooling_mean",
    }
    assert out["a__random_init"]["weights"] == "random" and out["a__random_init"]["loss"] == "cross_entropy"
    assert out["a__shuffled_loss"]["loss"] == "cross_entropy_shuffled"
    assert out["a__pooling_mean"]["pooling"] == {"mode": "mean", "grid": 2}
    assert (out["a"]["variant"], out["a__shuffled_loss"]["base_model"]) == ("", "a")
    assert "controls" not in out["a__random_init"]
    assert models["a"]["pooling"]["mode"] == "grid"  # the config is not modified
    with pytest.raises(ValueError, match="controls: 'nope' unknown"):
        model_variants({"a": _model(controls=["nope"])})
    with pytest.raises(ValueError, match="contains '__'"):
        model_variants({"a__b": _model()})
