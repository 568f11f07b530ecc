"""Hierarchy scores against hand-computed best layers, T_max and np.corrcoef."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from brainprop.contract import validate_table
from brainprop.encoding.files import save_target_scores
from brainprop.hierarchy.files import TARGET_DEPTH_COLUMNS, load_target_depths
from brainprop.hierarchy.rules import run_hierarchy, run_hierarchy_shared
from brainprop.hierarchy.scores import (
    best_layers,
    exclusion_mask,
    pearson,
    spatial_score,
    subject_hierarchy,
    subject_target_depths,
    target_depths,
    temporal_score,
    tmax,
    weighted_depth,
)
from brainprop.io import read_table, write_table

DEPTHS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
BASE = {
    "dataset": "sim",
    "model": "m",
    "timm_name": "vit_tiny",
    "signal": "act",
    "subject": "01",
    "r_normalized": np.nan,
    "noise_ceiling": np.nan,
    "n_targets": 10,
    "n_excluded": 0,
    "n_significant": np.nan,
}


def fmri_rows(
    r_by_roi: dict[str, list[float]], dist: dict[str, float], hemi: str = "both", atlas: str = "glasser", **over
) -> pd.DataFrame:
    """Encoding rows of one subject: r of each ROI at each of the layers in DEPTHS."""
    rows = [
        BASE
        | {
            "modality": "fmri",
            "layer": f"blocks.{k}",
            "layer_index": k,
            "depth": DEPTHS[k],
            "atlas": atlas,
            "roi": roi,
            "hemi": hemi,
            "roi_distance_mm": dist[roi],
            "time": np.nan,
            "r": r,
        }
        | over
        for roi, rs in r_by_roi.items()
        for k, r in enumerate(rs)
    ]
    return pd.DataFrame(rows)


def meg_rows(r_by_layer: list[list[float]], times: np.ndarray, **over) -> pd.DataFrame:
    """Encoding rows of one subject: r(t) (mean over sensors) of each layer."""
    rows = [
        BASE
        | {
            "modality": "meg",
            "layer": f"blocks.{k}",
            "layer_index": k,
            "depth": DEPTHS[k],
            "atlas": "",
            "roi": "",
            "hemi": "",
            "roi_distance_mm": np.nan,
            "time": t,
            "r": r,
        }
        | over
        for k, rs in enumerate(r_by_layer)
        for t, r in zip(times, rs)
    ]
    return pd.DataFrame(rows)


# Best layers planted: V1 -> 0, V2 -> 1, V4 -> 2 (tie with 3: shallowest wins), LO -> 4,
# IT never positive (excluded under 'nonpositive', best layer 3 under 'none').
R_ROI = {
    "V1": [0.5, 0.4, 0.3, 0.2, 0.1],
    "V2": [0.2, 0.6, 0.3, 0.2, 0.1],
    "V4": [0.1, 0.2, 0.7, 0.7, 0.1],
    "LO": [0.1, 0.2, 0.3, 0.4, 0.8],
    "IT": [-0.3, -0.2, -0.4, -0.1, -0.2],
}
DIST = {"V1": 0.0, "V2": 12.0, "V4": 25.0, "LO": 41.0, "IT": 30.0}
TIMES = np.round(np.arange(6) * 0.1, 10)
# T_max: layer 0 -> mean(0.1, 0.2) = 0.15 (0.96 ≥ 0.95); layer 1 -> mean(0.3, 0.5) = 0.4 (1.9/2 is
# exactly 0.95, kept; 1.89/2 is not); layer 2: peak negative (excluded); layer 3 -> 0.4 (ties at
# 1.0: none); layer 4 -> mean(0.4, 0.5) = 0.45.
R_TIME = [
    [0.0, 1.0, 0.96, 0.5, 0.0, 0.0],
    [0.0, 0.5, 1.0, 2.0, 1.89, 1.9],
    [-0.5, -0.2, -0.3, -0.1, -0.4, -0.6],
    [0.0, 0.1, 0.2, 0.5, 1.0, 0.9],
    [0.0, 0.0, 0.1, 0.3, 0.7, 0.7],
]


def test_pearson_matches_numpy_and_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=20), rng.normal(size=20)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    assert np.isnan(pearson(np.ones(5), y[:5]))
    with pytest.raises(ValueError, match="equal length"):
        pearson(x, y[:3])


def test_exclusion_rules():
    r = np.array([-0.1, 0.0, 0.2, np.nan, np.inf])
    assert exclusion_mask(r, "nonpositive").tolist() == [False, False, True, False, False]
    assert exclusion_mask(r, "none").tolist() == [True, True, True, False, False]


def test_best_layers_argmax_with_ties_to_shallowest():
    enc = pd.concat([fmri_rows(R_ROI, DIST), fmri_rows({"V1": [0.1, 0.9, 0.1, 0.1, 0.1]}, DIST, hemi="lh")])
    best = best_layers(enc)
    assert not validate_table("best_layers", best)
    both = best[best["hemi"] == "both"].set_index("roi")
    assert both["best_layer_index"].to_dict() == {"V1": 0, "V2": 1, "V4": 2, "LO": 4, "IT": 3}
    assert both.loc["V4", "best_depth"] == 0.5 and both.loc["V4", "best_r"] == 0.7
    assert both.loc["LO", "roi_distance_mm"] == 41.0
    lh = best[best["hemi"] == "lh"]
    assert lh["best_layer_index"].tolist() == [1]  # hemispheres are grouped apart


def test_best_layers_all_nan_group_is_undefined():
    best = best_layers(fmri_rows({"V1": [np.nan] * 5, "V2": [0.1, np.nan, 0.3, 0.2, 0.1]}, DIST))
    best = best.set_index("roi")
    assert best.loc["V1", "best_layer_index"] == -1 and np.isnan(best.loc["V1", "best_depth"])
    assert best.loc["V2", "best_layer_index"] == 2


def test_spatial_score_closed_form_with_exclusion():
    best = best_layers(fmri_rows(R_ROI, DIST))
    value, used, excluded = spatial_score(best, "glasser")
    expected = np.corrcoef([0.0, 0.25, 0.5, 1.0], [0.0, 12.0, 25.0, 41.0])[0, 1]
    assert value == pytest.approx(expected, abs=1e-12) and (used, excluded) == (4, 1)
    value, used, excluded = spatial_score(best, "glasser", exclude="none")
    expected = np.corrcoef([0.0, 0.25, 0.5, 1.0, 0.75], [0.0, 12.0, 25.0, 41.0, 30.0])[0, 1]
    assert value == pytest.approx(expected, abs=1e-12) and (used, excluded) == (5, 0)


def test_spatial_score_uses_only_both_hemispheres_of_the_atlas():
    enc = pd.concat(
        [
            fmri_rows(R_ROI, DIST),
            fmri_rows(R_ROI, DIST, hemi="lh"),
            fmri_rows({"V1": [0.9, 0, 0, 0, 0]}, DIST, atlas="other"),
        ]
    )
    assert spatial_score(best_layers(enc), "glasser")[1:] == (4, 1)
    assert spatial_score(best_layers(enc), "other")[1:] == (1, 0)


def test_spatial_score_nan_below_min_count_and_when_constant():
    few = best_layers(fmri_rows({k: R_ROI[k] for k in ("V1", "V2", "IT")}, DIST))
    value, used, excluded = spatial_score(few, "glasser")
    assert np.isnan(value) and (used, excluded) == (2, 1)
    flat = best_layers(fmri_rows({k: [0.1, 0.5, 0.2, 0.1, 0.1] for k in ("V1", "V2", "V4")}, DIST))
    value, used, _ = spatial_score(flat, "glasser")
    assert np.isnan(value) and used == 3


def test_tmax_mean_of_times_above_threshold():
    tm = tmax(meg_rows(R_TIME, TIMES))
    assert not validate_table("tmax", tm)
    np.testing.assert_allclose(tm["t_max_s"][[0, 1, 3, 4]], [0.15, 0.4, 0.4, 0.45], atol=1e-12)
    np.testing.assert_allclose(tm["peak_r"], [1.0, 2.0, -0.1, 1.0, 0.7])
    np.testing.assert_allclose(tm["depth"], DEPTHS)
    # A non-positive peak: times within 5% of |peak| of it (only t = 0.3 here).
    assert tm["t_max_s"][2] == pytest.approx(0.3)
    strict = tmax(meg_rows(R_TIME, TIMES), threshold=1.0)
    np.testing.assert_allclose(strict["t_max_s"][[0, 1, 4]], [0.1, 0.3, 0.45], atol=1e-12)


def test_tmax_ignores_nan_times_and_rejects_bad_threshold():
    tm = tmax(meg_rows([[np.nan, 0.2, 1.0, np.nan, 0.97, 0.1]], TIMES))
    assert tm["t_max_s"].iloc[0] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="threshold=1.5"):
        tmax(meg_rows(R_TIME, TIMES), threshold=1.5)


def test_temporal_score_closed_form_with_exclusion():
    tm = tmax(meg_rows(R_TIME, TIMES))
    value, used, excluded = temporal_score(tm)
    expected = np.corrcoef(DEPTHS[[0, 1, 3, 4]], [0.15, 0.4, 0.4, 0.45])[0, 1]
    assert value == pytest.approx(expected, abs=1e-12) and (used, excluded) == (4, 1)
    value, used, excluded = temporal_score(tm, exclude="none")
    expected = np.corrcoef(DEPTHS, [0.15, 0.4, 0.3, 0.4, 0.45])[0, 1]
    assert value == pytest.approx(expected, abs=1e-12) and (used, excluded) == (5, 0)
    value, used, excluded = temporal_score(tm.iloc[[0, 1, 2]])
    assert np.isnan(value) and (used, excluded) == (2, 1)


def test_subject_hierarchy_both_modalities_and_signals():
    enc = pd.concat(
        [
            fmri_rows(R_ROI, DIST),
            meg_rows(R_TIME, TIMES),
            fmri_rows(R_ROI, DIST, signal="grad"),
            meg_rows(R_TIME[::-1], TIMES, signal="grad"),
        ]
    )
    best, tm, hier = subject_hierarchy(enc, "glasser", threshold=0.95, min_count=3)
    for name, table in (("best_layers", best), ("tmax", tm), ("hierarchy", hier)):
        assert not validate_table(name, table), name
    assert len(hier) == 6 and set(hier["score"]) == {"spatial", "temporal"}
    units = [("spatial", "roi"), ("temporal", "layer"), ("temporal", "time")]
    assert sorted(zip(hier["score"], hier["unit"])) == sorted(units * 2)
    row = hier[(hier["signal"] == "act") & (hier["score"] == "temporal") & (hier["unit"] == "layer")].iloc[0]
    assert row["atlas"] == "" and row["modality"] == "meg"
    assert row["value"] == pytest.approx(temporal_score(tm[tm["signal"] == "act"])[0])
    assert (row["n_used"], row["n_excluded"]) == (4, 1)
    spatial = hier[(hier["signal"] == "grad") & (hier["score"] == "spatial")].iloc[0]
    assert spatial["atlas"] == "glasser" and spatial["value"] == pytest.approx(
        spatial_score(best[best["signal"] == "grad"], "glasser")[0]
    )


@pytest.mark.parametrize("modality", ["fmri", "meg"])
def test_subject_hierarchy_one_modality(modality):
    enc = fmri_rows(R_ROI, DIST) if modality == "fmri" else meg_rows(R_TIME, TIMES)
    best, tm, hier = subject_hierarchy(enc, "glasser", 0.95, 3)
    assert hier["score"].tolist() == ["spatial"] if modality == "fmri" else ["temporal"] * 2
    assert not validate_table("hierarchy", hier) and not validate_table("tmax", tm)
    assert len(best if modality == "fmri" else tm) > 0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="exclude='sometimes'"):
        exclusion_mask(np.zeros(3), "sometimes")
    with pytest.raises(ValueError, match="atlas='nope'"):
        subject_hierarchy(fmri_rows(R_ROI, DIST), "nope")
    with pytest.raises(ValueError, match="duplicated"):
        best_layers(pd.concat([fmri_rows(R_ROI, DIST)] * 2))
    two = best_layers(pd.concat([fmri_rows(R_ROI, DIST), fmri_rows(R_ROI, DIST, subject="02")]))
    with pytest.raises(ValueError, match="expected one"):
        spatial_score(two, "glasser")
    with pytest.raises(ValueError, match="lacks columns"):
        best_layers(fmri_rows(R_ROI, DIST).drop(columns="roi_distance_mm"))


# ---------------------------------------------------------------- per-target best layers and weighted depth

# r of four targets (columns) at the layers of DEPTHS (rows). t0: tie of layers 1 and 2 -> 1, weighted
# depth (0.1·0 + 0.3·0.25 + 0.3·0.5) / 0.7; t1: never positive, tie of layers 0 and 3 -> 0, weighted NaN;
# t2: NaN at two layers, best 3, weighted (0.2·0.25 + 0.6·0.75 + 0.2·1) / 1.0; t3: NaN everywhere.
R_TARGET = np.array(
    [
        [0.1, -0.1, np.nan, np.nan],
        [0.3, -0.2, 0.2, np.nan],
        [0.3, -0.3, np.nan, np.nan],
        [0.0, -0.1, 0.6, np.nan],
        [-0.2, -0.5, 0.2, np.nan],
    ]
)
EXPECTED_TARGET = {
    "best_layer_index": [1, 0, 3, -1],
    "best_depth": [0.25, 0.0, 0.75, np.nan],
    "best_r": [0.3, -0.1, 0.6, np.nan],
    "weighted_depth": [0.225 / 0.7, np.nan, 0.7, np.nan],
    "n_layers": [5, 5, 3, 0],
}


def test_target_depths_closed_form_with_ties_in_any_layer_order():
    order = np.array([3, 0, 4, 2, 1])  # layers given out of order: ties still go to the shallowest
    out = target_depths(R_TARGET[order], DEPTHS[order], np.arange(5)[order])
    for key, expected in EXPECTED_TARGET.items():
        np.testing.assert_allclose(out[key], expected, rtol=1e-12, err_msg=key)
    assert out["best_layer_index"].dtype == np.int64 and out["n_layers"].dtype == np.int64
    np.testing.assert_allclose(weighted_depth(R_TARGET, DEPTHS), EXPECTED_TARGET["weighted_depth"], rtol=1e-12)
    with pytest.raises(ValueError, match="expected \\(5 layers"):
        weighted_depth(R_TARGET[:4], DEPTHS)


def _long_scores(signal: str, r: np.ndarray, targets: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"signal": signal, "layer_index": k, "depth": DEPTHS[k], "target": t, "r": r[k, j]}
            for k in range(r.shape[0])
            for j, t in enumerate(targets)
        ]
    )


@pytest.mark.parametrize(
    "exclude, excluded", [("nonpositive", [False, True, False, True]), ("none", [False, False, False, True])]
)
def test_subject_target_depths_keeps_and_marks_excluded_targets(exclude, excluded):
    targets = np.array([10, 11, 12, 13])
    scores = pd.concat([_long_scores("act", R_TARGET, targets), _long_scores("grad", R_TARGET[::-1], targets)])
    table = subject_target_depths(
        scores.sample(frac=1.0, random_state=0), {"dataset": "d", "model": "m", "subject": "01"}, exclude
    )
    assert list(table.columns) == list(TARGET_DEPTH_COLUMNS) and len(table) == 8
    act = table[table["signal"] == "act"].set_index("target").loc[targets]
    for key, expected in EXPECTED_TARGET.items():
        np.testing.assert_allclose(act[key].to_numpy(), expected, rtol=1e-12, err_msg=key)
    assert act["excluded"].tolist() == excluded
    grad = table[table["signal"] == "grad"].set_index("target").loc[10]
    assert (grad["best_layer_index"], grad["best_depth"]) == (2, 0.5)  # reversed: 0.3 at layers 2 and 3 -> 2
    with pytest.raises(ValueError, match="duplicated"):
        subject_target_depths(pd.concat([scores, scores]), {"dataset": "d", "model": "m", "subject": "01"})


def _subject_files(folder, subject: str = "01", null: bool = False):
    """One subject's encode outputs on disk: per layer a summary and per-target scores; target 99 is MEG.

    With `null` the scores carry the encoding null's p: 0.001 for targets 10 and 11, 0.9 for 12 and 13.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fmri, meg = np.array([10, 11, 12, 13]), 99
    n = len(fmri) + 1
    targets = pd.DataFrame(
        {
            "target": [*fmri, meg], "modality": ["fmri"] * 4 + ["meg"], "atlas": ["glasser"] * 4 + [""],
            "roi": ["V1"] * 4 + [""], "hemi": ["lh"] * 4 + [""], "x": 0.0, "y": 0.0, "z": 0.0,
            "roi_distance_mm": 0.0, "sensor": [""] * 4 + ["MLO11"], "time": [np.nan] * 4 + [0.1],
            "noise_ceiling": [np.nan] * n,
        }
    )  # fmt: skip
    write_table(folder / "targets.parquet", targets)
    enc = fmri_rows(R_ROI, DIST).assign(subject=subject)
    summaries, scores = [], []
    for k in range(len(DEPTHS)):
        summaries.append(folder / f"{k}.summary.parquet")
        scores.append(folder / f"{k}.targets.parquet")
        write_table(summaries[-1], enc[enc["layer_index"] == k])
        per_target = pd.DataFrame(
            {
                "target": [*fmri[::-1], meg],
                "r": [*R_TARGET[k, ::-1], 0.9],
                "r2": 0.0,
                "alpha": 1.0,
                "r_normalized": np.nan,
                "excluded": False,
                "p": [0.9, 0.9, 0.001, 0.001, 0.5] if null else np.nan,
                "q": np.nan,
            }
        )
        identity = {"dataset": "sim", "model": "m", "signal": "act", "layer_index": k, "subject": subject}
        save_target_scores(scores[-1], per_target, identity, {"n_images": 50})
    return SimpleNamespace(summaries=summaries, scores=scores, targets=folder / "targets.parquet")


HIERARCHY_PARAMS = SimpleNamespace(
    hierarchy={
        "atlas": "glasser",
        "threshold": 0.95,
        "min_count": 3,
        "exclude": "nonpositive",
        "spatial_unit": "roi",
        "tmax_window": [0.0, None],
        "map_fdr": 0.01,
    }  # fmt: skip
)
HIERARCHY_OUTPUTS = ("encoding", "best_layers", "tmax", "hierarchy", "target_depths")


@pytest.mark.parametrize("null", [False, True], ids=["t-test", "encoding null"])
def test_run_hierarchy_writes_target_depths_of_fmri_targets_only(tmp_path, null):
    # With the encoding null's p in the scores, the map threshold is theirs: targets 10 and 11 pass, 12 and 13 not.
    fmri = np.array([10, 11, 12, 13])
    inputs = _subject_files(tmp_path, null=null)
    params = HIERARCHY_PARAMS
    outputs = SimpleNamespace(**{k: tmp_path / f"{k}.parquet" for k in HIERARCHY_OUTPUTS})
    scores = inputs.scores
    run_hierarchy(inputs=inputs, outputs=outputs, params=params)
    table = load_target_depths(outputs.target_depths)
    assert table["target"].tolist() == fmri.tolist() and set(table["subject"]) == {"01"}
    np.testing.assert_allclose(table["weighted_depth"], EXPECTED_TARGET["weighted_depth"], rtol=1e-12)
    if null:
        assert table["passes"].tolist() == [True, True, False, False]
        # BH over the 13 finite targets × layers: ten p of 0.001, three of 0.9; target 13 has no r
        np.testing.assert_allclose(table["q"], [0.0013, 0.0013, 0.9, np.nan])
    else:
        t_test = target_depths(R_TARGET, DEPTHS, np.arange(len(DEPTHS)), 50, 0.01)
        np.testing.assert_allclose(table["p"], t_test["p"], rtol=1e-12)
    with pytest.raises(ValueError, match="one per signal × layer"):
        run_hierarchy(inputs=SimpleNamespace(**{**vars(inputs), "scores": scores[:2]}), outputs=outputs, params=params)
    with pytest.raises(ValueError, match="holds the scores of act layer 1"):
        swapped = [scores[1], scores[0], *scores[2:]]
        run_hierarchy(inputs=SimpleNamespace(**{**vars(inputs), "scores": swapped}), outputs=outputs, params=params)
    with pytest.raises(ValueError, match="lacks columns"):
        load_target_depths(outputs.best_layers)


def test_run_hierarchy_shared_equals_one_job_per_subject(tmp_path):
    subjects = ["01", "02"]
    each = [_subject_files(tmp_path / s, s, null=(s == "02")) for s in subjects]
    alone = [SimpleNamespace(**{k: tmp_path / s / f"alone.{k}.parquet" for k in HIERARCHY_OUTPUTS}) for s in subjects]
    for inputs, outputs in zip(each, alone):
        run_hierarchy(inputs=inputs, outputs=outputs, params=HIERARCHY_PARAMS)
    shared = SimpleNamespace(**{k: [tmp_path / s / f"shared.{k}.parquet" for s in subjects] for k in HIERARCHY_OUTPUTS})
    inputs = SimpleNamespace(
        summaries=[p for i in each for p in i.summaries],
        scores=[p for i in each for p in i.scores],
        targets=[i.targets for i in each],
    )
    run_hierarchy_shared(
        inputs=inputs, outputs=shared, params=SimpleNamespace(**vars(HIERARCHY_PARAMS), subjects=subjects)
    )
    for i, outputs in enumerate(alone):
        for kind in HIERARCHY_OUTPUTS:
            pd.testing.assert_frame_equal(read_table(getattr(shared, kind)[i]), read_table(getattr(outputs, kind)))
    assert read_table(shared.target_depths[1])["passes"].tolist() == [True, True, False, False]
    short = SimpleNamespace(**{**vars(inputs), "scores": inputs.scores[:-1]})
    with pytest.raises(ValueError, match="expected the same number of fits for every subject"):
        run_hierarchy_shared(
            inputs=short, outputs=shared, params=SimpleNamespace(**vars(HIERARCHY_PARAMS), subjects=subjects)
        )


def _planted_targets(seed: int = 3):
    """Per-target r of 6 ROIs x 8 targets at the 5 layers of DEPTHS: ROI k peaks at layer min(k, 4), a third
    of the targets weak (below any threshold); ROI distances rise with k. Returns (long scores, targets)."""
    rng = np.random.default_rng(seed)
    rois = [f"R{k}" for k in range(6)]
    dist = {roi: 12.0 * k + rng.uniform(0, 3) for k, roi in enumerate(rois)}
    rows, targets = [], []
    for k, roi in enumerate(rois):
        for j in range(8):
            t = 100 + 8 * k + j
            peak = min(k, 4) if j % 4 else int(rng.integers(0, 5))  # every 4th target: another best layer
            scale = 0.02 if j % 3 == 0 else 0.5  # weak targets fail the map threshold
            r = scale * np.exp(-0.5 * (np.arange(5) - peak) ** 2) + 0.01 * rng.standard_normal(5)
            rows += [{"signal": "act", "layer_index": i, "depth": DEPTHS[i], "target": t, "r": r[i]} for i in range(5)]
            targets.append({"target": t, "atlas": "glasser", "roi": roi, "hemi": "lh" if j < 4 else "rh",
                            "roi_distance_mm": dist[roi]})  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(targets)


def test_target_level_spatial_score_equals_a_hand_computation():
    scores, targets = _planted_targets()
    n_images, fdr = 60, 0.01
    identity = {"dataset": "sim", "model": "m", "subject": "01"}
    depths = subject_target_depths(scores, identity, "nonpositive", targets, {"n_images": n_images, "fdr": fdr})
    # By hand: r per target and layer, its one-sided t-test p over n images, BH over targets x layers
    # (scipy's false_discovery_control), the best layer's q, Pearson over the passing targets.
    wide = scores.pivot(index="target", columns="layer_index", values="r")
    r = wide.to_numpy()
    t = r * np.sqrt((n_images - 2) / (1 - r**2))
    p = stats.t.sf(t, n_images - 2)
    q = stats.false_discovery_control(p.ravel()).reshape(p.shape)
    best = r.argmax(axis=1)
    q_best = q[np.arange(len(r)), best]
    passing = (q_best <= fdr) & (r.max(axis=1) > 0)
    dist = targets.set_index("target").loc[wide.index, "roi_distance_mm"].to_numpy()
    expected = np.corrcoef(DEPTHS[best][passing], dist[passing])[0, 1]
    assert 10 < passing.sum() < len(r)  # the threshold keeps some targets and drops others
    by_target = depths.set_index("target").loc[wide.index]
    np.testing.assert_array_equal(by_target["passes"].to_numpy(), q_best <= fdr)
    np.testing.assert_allclose(by_target["q"], q_best, rtol=1e-10)
    enc = pd.concat(
        [fmri_rows({roi: [0.1, 0.2, 0.3, 0.2, 0.1]}, {roi: 1.0}, roi=roi) for roi in targets["roi"].unique()]
    )
    _, _, hier = subject_hierarchy(enc, "glasser", targets=depths)
    row = hier[hier["unit"] == "target"].iloc[0]
    assert row["value"] == pytest.approx(expected, abs=1e-12)
    assert (row["n_used"], row["n_excluded"]) == (passing.sum(), len(r) - passing.sum())
    # The same rows recompute it from the per-target depth table, as docs/results.md says.
    used = depths[depths["passes"] & ~depths["excluded"]]
    assert np.corrcoef(used["best_depth"], used["roi_distance_mm"])[0, 1] == pytest.approx(expected, abs=1e-12)
    # S1a with spatial_unit target: the same statistic per subject, and its layer-order permutation p
    # from per-layer sums equals the p of permuting each target's depth one by one.
    from brainprop.stats.group import subject_statistics
    from brainprop.stats.inference import permutation_pvalue

    best_t, tm, hier = subject_hierarchy(enc, "glasser", targets=depths)
    params = {"seed": 0, "n_permutations": 200, "n_boot": 10, "alpha": 0.05, "atlas": "glasser", "min_count": 3,
              "spatial_unit": "target"}  # fmt: skip
    per = subject_statistics(enc, best_t, tm, hier, params, targets=depths)
    s1a = per[(per["test"] == "S1a")].iloc[0]
    assert s1a["statistic"] == pytest.approx(expected, abs=1e-12) and 0 < s1a["p_perm"] <= 1
    pos, y = best[passing], dist[passing]
    assert pos.size > 4 * len(DEPTHS)  # the per-layer-sums path of permutation_pvalue
    fast = permutation_pvalue(DEPTHS, pos, y, "greater", 500, np.random.default_rng(7))
    perms = np.random.default_rng(7).permuted(np.broadcast_to(DEPTHS, (500, 5)), axis=1)
    null = np.array([np.corrcoef(perm[pos], y)[0, 1] for perm in perms])
    assert fast[1] == pytest.approx((1 + np.sum(null >= expected - 1e-12)) / 501)
