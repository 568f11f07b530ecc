"""Group tests against scipy's exact Wilcoxon, hand BH, exact permutation nulls and planted subjects."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from brainprop.contract import validate_table
from brainprop.hierarchy.scores import subject_hierarchy
from brainprop.stats.group import group_tests, subject_statistics
from brainprop.stats.inference import bh_fdr, bootstrap_ci, p_min, permutation_pvalue, wilcoxon_exact

N_LAYERS = 8
DEPTHS = np.arange(N_LAYERS) / (N_LAYERS - 1)
ROIS = {"V1": 0.0, "V2": 10.0, "V4": 20.0, "LO": 30.0, "FFA": 40.0, "IT": 50.0}
ACT_BEST = {"V1": 0, "V2": 1, "V4": 3, "LO": 4, "FFA": 6, "IT": 7}
GRAD_OFFSET = {"V1": 0.1, "V2": 0.1, "V4": 0.05, "LO": 0.05, "FFA": 0.0, "IT": 0.0}
TIMES = np.round(np.arange(51) * 0.02, 10)
BASE = {
    "dataset": "sim",
    "model": "m",
    "timm_name": "vit_tiny",
    "layer": "",
    "r_normalized": np.nan,
    "noise_ceiling": np.nan,
    "n_targets": 10,
    "n_excluded": 0,
}
PARAMS = {
    "seed": 0,
    "n_permutations": 200,
    "n_boot": 200,
    "alpha": 0.05,
    "atlas": "glasser",
    "min_count": 3,
    "threshold": 0.95,
    "roi_levels": {"early": ["V1", "V2"], "high": ["FFA", "IT"]},
    "meg_windows": {"early": [0.0, 0.4], "late": [0.5, 1.0]},
}


def _fmri(subject: str, signal: str, rng: np.random.Generator) -> list[dict]:
    """ROI r peaks at ACT_BEST for both signals; gradients are lower by GRAD_OFFSET exactly."""
    rows = []
    base = {
        k: 0.5 - 0.04 * np.abs(np.arange(N_LAYERS) - b) + rng.normal(0, 0.002, N_LAYERS) for k, b in ACT_BEST.items()
    }
    for sig in ("act", signal):
        for roi, r in base.items():
            r = r - (GRAD_OFFSET[roi] if sig != "act" else 0.0)
            rows += [
                BASE
                | {
                    "modality": "fmri",
                    "signal": sig,
                    "subject": subject,
                    "layer_index": k,
                    "depth": DEPTHS[k],
                    "atlas": "glasser",
                    "roi": roi,
                    "hemi": "both",
                    "roi_distance_mm": ROIS[roi],
                    "time": np.nan,
                    "r": r[k],
                }
                for k in range(N_LAYERS)
            ]
    return rows


def _meg(subject: str, signal: str, rng: np.random.Generator) -> list[dict]:
    """Activations peak at 0.1 + 0.04 k s, the signal in reverse order after them (0.9 − 0.04 k s)."""
    rows = []
    shift = 0.02 * rng.integers(0, 3)
    for sig, latency in (("act", 0.1 + 0.04 * np.arange(N_LAYERS)), (signal, 0.9 - 0.04 * np.arange(N_LAYERS))):
        for k in range(N_LAYERS):
            r = np.exp(-0.5 * ((TIMES - latency[k] - shift) / 0.05) ** 2) + rng.normal(0, 1e-3, TIMES.size)
            rows += [
                BASE
                | {
                    "modality": "meg",
                    "signal": sig,
                    "subject": subject,
                    "layer_index": k,
                    "depth": DEPTHS[k],
                    "atlas": "",
                    "roi": "",
                    "hemi": "",
                    "roi_distance_mm": np.nan,
                    "time": t,
                    "r": v,
                }
                for t, v in zip(TIMES, r)
            ]
    return rows


def simulate(n_subjects: int, modalities=("fmri", "meg"), signal: str = "grad", seed: int = 0) -> pd.DataFrame:
    """Encoding table of planted subjects (forward hierarchy for act, reversed-in-time signal)."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_subjects):
        for modality in modalities:
            rows += {"fmri": _fmri, "meg": _meg}[modality](f"{s:02d}", signal, rng)
    enc = pd.DataFrame(rows)
    return enc.assign(layer=[f"blocks.{k}" for k in enc["layer_index"]])


def run_all(enc: pd.DataFrame, **over) -> pd.DataFrame:
    best, tm, hier = subject_hierarchy(enc, "glasser", 0.95, 3)
    return group_tests(enc, best, tm, hier, PARAMS | over)


@pytest.fixture(scope="module")
def planted() -> pd.DataFrame:
    return run_all(simulate(8))


def test_p_min():
    assert p_min(4, "greater") == 0.0625 and p_min(4, "less") == 0.0625
    assert p_min(8, "greater") == 2.0**-8 and p_min(8, "two-sided") == 2.0**-7
    assert p_min(1, "two-sided") == 1.0 and np.isnan(p_min(0, "less"))


@pytest.mark.parametrize("alternative", ["less", "greater", "two-sided"])
def test_wilcoxon_matches_scipy_exact(alternative):
    rng = np.random.default_rng(1)
    x = rng.normal(0.3, 1.0, 9)
    w, p, pmin, n = wilcoxon_exact(np.append(x, np.nan), alternative)
    ref = stats.wilcoxon(x, alternative=alternative, method="exact")
    assert (w, p, n) == (ref.statistic, ref.pvalue, 9)
    assert pmin == p_min(9, alternative)
    # The extreme configuration reaches p_min exactly.
    assert wilcoxon_exact(np.array([0.1, 0.4, 0.2, 0.3]), "greater")[1] == pytest.approx(0.0625)
    assert wilcoxon_exact(-np.arange(1.0, 9.0), "less")[1] == pytest.approx(2.0**-8)


def test_wilcoxon_empty_and_zero():
    assert np.isnan(wilcoxon_exact(np.array([np.nan]), "less")[1])
    assert wilcoxon_exact(np.zeros(3), "greater")[1:] == (1.0, 1.0, 3)


def test_bh_matches_hand_computation():
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan, 0.5])
    finite = p[np.isfinite(p)]
    m = finite.size
    order = np.argsort(finite)
    adjusted = np.empty(m)
    running = 1.0
    for rank in range(m, 0, -1):  # step-up: q_(i) = min_{j >= i} p_(j) m / j
        running = min(running, finite[order[rank - 1]] * m / rank)
        adjusted[order[rank - 1]] = running
    out = bh_fdr(p)
    np.testing.assert_allclose(out[np.isfinite(p)], adjusted)
    assert np.isnan(out[4])
    np.testing.assert_allclose(adjusted[:4], [0.05, 0.0666666667, 0.0666666667, 0.25])


def test_bootstrap_ci_deterministic_and_normal_width():
    x = np.random.default_rng(2).normal(1.0, 2.0, 400)
    a = bootstrap_ci(x, 2000, np.random.default_rng(7))
    assert a == bootstrap_ci(x, 2000, np.random.default_rng(7))
    assert a != bootstrap_ci(x, 2000, np.random.default_rng(8))
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert a[0] < x.mean() < a[1]
    assert (a[1] - a[0]) / 2 == pytest.approx(half, rel=0.1)


def test_permutation_p_matches_full_enumeration():
    depth = np.array([0.0, 1 / 3, 2 / 3, 1.0])
    y = np.array([0.2, 0.1, 0.35, 0.3])
    obs = np.corrcoef(depth, y)[0, 1]
    null = np.array([np.corrcoef(depth[list(perm)], y)[0, 1] for perm in itertools.permutations(range(4))])
    exact = np.mean(null >= obs - 1e-12)
    r, p = permutation_pvalue(depth, np.arange(4), y, "greater", 20000, np.random.default_rng(0))
    assert r == pytest.approx(obs)
    assert p == pytest.approx(exact, abs=0.015)


def test_permutation_p_small_for_ordered_subject():
    depth = np.linspace(0, 1, 8)
    n = 1000
    r, p = permutation_pvalue(depth, np.arange(8), 0.1 + 0.3 * depth, "greater", n, np.random.default_rng(3))
    assert r == pytest.approx(1.0)
    assert 1 / (n + 1) <= p <= 3 / (n + 1)
    _, p_less = permutation_pvalue(depth, np.arange(8), 0.1 + 0.3 * depth, "less", n, np.random.default_rng(3))
    assert p_less == 1.0
    # Units may share a layer (several ROIs with one best layer): the null relabels layers.
    _, p_shared = permutation_pvalue(
        depth, np.array([0, 0, 3, 7, 7]), np.array([0, 1, 5, 9, 10.0]), "greater", n, np.random.default_rng(3)
    )
    assert 1 / (n + 1) <= p_shared <= 1.0


def test_group_tests_contract_and_rows(planted):
    assert not validate_table("tests", planted)
    got = {(r.signal, r.test, r.level, r.modality, r.alternative, r.family) for r in planted.itertuples()}
    h, e, f = "sim/m/grad/hierarchy", "sim/m/grad/E", "sim/m/act/forward"
    assert got == {
        ("act", "T1", "", "meg", "greater", f),
        ("act", "S1a", "", "fmri", "greater", f),
        ("grad", "T1", "", "meg", "less", h),
        ("grad", "T2", "", "meg", "greater", h),
        ("grad", "S1a", "", "fmri", "greater", h),
        ("grad", "S1b", "", "fmri", "greater", h),
        ("grad", "E", "early", "fmri", "two-sided", e),
        ("grad", "E", "high", "fmri", "two-sided", e),
        ("grad", "E", "early", "meg", "two-sided", e),
        ("grad", "E", "late", "meg", "two-sided", e),
    }
    # The method names the per-subject null of the tests that have one (stats.subject_null).
    per_subject = planted["test"].isin(["T1", "S1a", "S1b"])
    assert (planted.loc[per_subject, "method"] == "wilcoxon+variogram").all()
    assert (planted.loc[~per_subject, "method"] == "wilcoxon").all() and (planted["n_subjects"] == 8).all()


def test_group_tests_recover_planted_effects(planted):
    row = planted.set_index(["signal", "test", "level", "modality"])
    t1 = row.loc[("grad", "T1", "", "meg")]
    assert t1["effect"] == pytest.approx(-1.0, abs=0.01) and t1["p"] == pytest.approx(2.0**-8)
    assert t1["p_min"] == 2.0**-8 and t1["n_significant_subjects"] == 8
    assert row.loc[("act", "T1", "", "meg"), "effect"] == pytest.approx(1.0, abs=0.01)
    assert row.loc[("grad", "T2", "", "meg"), "effect"] == pytest.approx(0.24, abs=1e-9)
    assert row.loc[("grad", "T2", "", "meg"), "n_significant_subjects"] == -1
    assert row.loc[("grad", "S1b", "", "fmri"), "effect"] == pytest.approx(1.0)
    s1a = np.corrcoef(DEPTHS[list(ACT_BEST.values())], list(ROIS.values()))[0, 1]
    assert row.loc[("grad", "S1a", "", "fmri"), "effect"] == pytest.approx(s1a)
    early = row.loc[("grad", "E", "early", "fmri")]
    assert early["effect"] == pytest.approx(-0.1) and early["ci_low"] == pytest.approx(-0.1)
    assert early["p"] == pytest.approx(2.0**-7) and early["n_positive"] == 0
    assert row.loc[("grad", "E", "high", "fmri"), "effect"] == pytest.approx(0.0, abs=1e-12)
    t1s = [r for r in planted.itertuples() if r.signal == "act"]
    assert all(r.ci_low <= r.effect <= r.ci_high for r in t1s)


def test_group_tests_fdr_within_families(planted):
    for _family, rows in planted.groupby("family"):
        np.testing.assert_allclose(rows["p_fdr"], bh_fdr(rows["p"].to_numpy()))
    assert planted.groupby("family").size().to_dict() == {
        "sim/m/act/forward": 2,
        "sim/m/grad/E": 4,
        "sim/m/grad/hierarchy": 4,
    }


def test_group_tests_deterministic_for_a_seed():
    enc = simulate(4, seed=3)
    a, b = run_all(enc), run_all(enc)
    pd.testing.assert_frame_equal(a, b)
    c = run_all(enc, seed=1)
    assert not np.allclose(a["ci_low"], c["ci_low"])


@pytest.mark.parametrize("modality,tests", [("meg", {"T1", "T2", "E"}), ("fmri", {"S1a", "S1b", "E"})])
def test_group_tests_one_modality(modality, tests):
    out = run_all(simulate(3, modalities=(modality,)))
    assert set(out["test"]) == tests and set(out["modality"]) == {modality}
    assert not validate_table("tests", out)
    assert (out["p_min"] >= 0.125).all()  # 3 subjects: never below 2^-3


def test_group_tests_without_act_skips_comparisons():
    enc = simulate(3)
    out = run_all(enc[enc["signal"] != "act"])
    assert set(out["test"]) == {"T1", "S1a"}


def test_nan_subjects_are_dropped_and_counted():
    enc = simulate(4, modalities=("meg",))
    best, tm, hier = subject_hierarchy(enc, "glasser", 0.95, 3)
    sub = tm["subject"] == "00"
    tm.loc[sub, "peak_r"] = -1.0  # every layer of subject 00 excluded
    hier.loc[hier["subject"] == "00", ["value", "n_used"]] = [np.nan, 0]
    out = group_tests(enc, best, tm, hier, PARAMS).set_index(["signal", "test", "level"])
    assert out.loc[("grad", "T1", ""), "n_subjects"] == 3
    assert out.loc[("grad", "T1", ""), "p_min"] == 2.0**-3
    per = subject_statistics(enc, best, tm, hier, PARAMS)
    assert per.loc[(per["subject"] == "00") & (per["test"] == "T2"), "statistic"].isna().all()


def test_null_calibration_of_t1():
    """Pure-noise subjects: group T1 and per-subject layer-shuffle tests reject at about the nominal rate."""
    n_sub, n_seeds, times = 8, 200, np.arange(30) * 0.02
    group_hits, subject_hits = 0, 0
    base = pd.DataFrame(
        [
            BASE
            | {
                "modality": "meg",
                "signal": "grad",
                "subject": f"{s}",
                "layer_index": k,
                "depth": DEPTHS[k],
                "atlas": "",
                "roi": "",
                "hemi": "",
                "roi_distance_mm": np.nan,
                "time": t,
            }
            for s in range(n_sub)
            for k in range(N_LAYERS)
            for t in times
        ]
    )
    # With 199 permutations p < 0.05 means at most 8 nulls as extreme: nominal size 9/200. The
    # layer shuffle is exact on exchangeable layers (the smooth nulls: tests/test_calibration.py).
    params = PARAMS | {"n_permutations": 199, "n_boot": 1, "null": "layer_shuffle"}
    for seed in range(n_seeds):
        enc = base.assign(r=np.random.default_rng(seed).normal(0.5, 0.1, len(base)))
        best, tm, hier = subject_hierarchy(enc, "glasser", 0.95, 3)
        row = group_tests(enc, best, tm, hier, params | {"seed": seed}).iloc[0]
        assert (row["test"], row["signal"]) == ("T1", "grad")
        group_hits += row["p"] < 0.05
        subject_hits += row["n_significant_subjects"]
    slack = 3 * np.sqrt(0.05 * 0.95 / n_seeds)
    assert group_hits / n_seeds <= 0.05 + slack
    rate, size = subject_hits / (n_seeds * n_sub), 9 / 200
    # Valid (ties in T_max only make it conservative) and not degenerate.
    assert 0.5 * size <= rate <= size + 3 * np.sqrt(size * (1 - size) / (n_seeds * n_sub))


def test_bad_params_and_inconsistent_hierarchy_raise():
    enc = simulate(3, modalities=("meg",))
    best, tm, hier = subject_hierarchy(enc, "glasser", 0.95, 3)
    with pytest.raises(ValueError, match=r"missing \['seed'\]"):
        group_tests(enc, best, tm, hier, {k: v for k, v in PARAMS.items() if k != "seed"})
    with pytest.raises(ValueError, match="unknown \\['n_perm'\\]"):
        group_tests(enc, best, tm, hier, PARAMS | {"n_perm": 5})
    with pytest.raises(ValueError, match="alpha=2"):
        group_tests(enc, best, tm, hier, PARAMS | {"alpha": 2})
    with pytest.raises(ValueError, match="meg_windows\\['w'\\]"):
        group_tests(enc, best, tm, hier, PARAMS | {"meg_windows": {"w": [0.5, 0.1]}})
    hier.loc[0, "value"] = 0.123
    with pytest.raises(ValueError, match="hierarchy table gives temporal score 0.123"):
        group_tests(enc, best, tm, hier, PARAMS)
