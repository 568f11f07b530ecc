"""Tests of brainprop.maps: fsaverage5 projection, group vertex maps, brain maps and MEG topomaps."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.stats

from brainprop.brain.files import load_targets
from brainprop.brain.simulate import SIM_ROIS, ctf275_sensors
from brainprop.encoding.files import save_target_scores
from brainprop.figures import maps
from brainprop.hierarchy.files import load_target_depths, save_subject_table
from brainprop.hierarchy.scores import subject_target_depths
from brainprop.io import save_array, write_table

SUBJECTS = ("sub-01", "sub-02", "sub-03", "sub-04")
DEPTHS = {0: 0.0, 1: 0.5, 2: 1.0}
SIGNALS = ("act", "grad")


@pytest.fixture(autouse=True)
def _close_all():
    yield
    plt.close("all")


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p, written out (independent of scipy's implementation)."""
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out


# ---------------------------------------------------------------- projection


def test_projection_is_the_mean_of_targets_in_reach():
    rng = np.random.default_rng(0)
    pial = {"lh": rng.uniform(-40, 40, (300, 3)), "rh": rng.uniform(-40, 40, (300, 3))}
    targets = pd.DataFrame(rng.uniform(-40, 40, (120, 3)), columns=["x", "y", "z"]).assign(
        hemi=np.where(np.arange(120) % 2 == 0, "lh", "rh")
    )
    targets.loc[5, "x"] = np.nan  # a target without coordinates reaches no vertex
    values = rng.normal(size=120)
    weights = maps.project_to_fsaverage5(targets, pial, radius_mm=12.0)
    assert weights.shape == (600, 120)
    projected = weights @ values
    xyz = targets[["x", "y", "z"]].to_numpy()
    for offset, hemi in ((0, "lh"), (300, "rh")):
        for v, point in enumerate(pial[hemi]):
            near = (targets["hemi"].to_numpy() == hemi) & (np.linalg.norm(xyz - point, axis=1) <= 12.0)
            if near.any():
                assert projected[offset + v] == pytest.approx(values[near].mean(), rel=1e-12)
            else:
                assert weights[offset + v].nnz == 0
    assert weights[:, 5].nnz == 0
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['z'\]"):
        maps.project_to_fsaverage5(targets.drop(columns="z"), pial)


def test_simulated_rois_land_on_their_own_cortex():
    mesh = maps.fsaverage5()
    pial = {h: np.asarray(mesh[h]["pial"].coordinates) for h in maps.HEMIS}
    assert all(len(c) == maps.N_FSAVERAGE5 for c in pial.values())
    rows = [
        {"roi": roi, "hemi": hemi, "x": sign * x, "y": y, "z": z}
        for roi, (x, y, z) in SIM_ROIS.items()
        for hemi, sign in (("lh", -1), ("rh", 1))
    ]
    targets = pd.DataFrame(rows)
    weights = maps.project_to_fsaverage5(targets, pial, radius_mm=10.0)
    for i, row in targets.iterrows():
        offset = 0 if row.hemi == "lh" else maps.N_FSAVERAGE5
        nearest = np.argmin(np.linalg.norm(pial[row.hemi] - row[["x", "y", "z"]].to_numpy(float), axis=1))
        reached = weights[offset + nearest].indices
        assert i in reached, row.roi  # the vertex nearest a centroid averages that ROI
        assert set(targets.loc[reached, "hemi"]) == {row.hemi}


# ---------------------------------------------------------------- group maps


def test_group_vertex_maps_against_scipy_and_plant():
    rng = np.random.default_rng(1)
    n_sub, n_vert = 8, 60
    depths = np.array([0.0, 0.5, 1.0])
    r = rng.normal(0, 0.05, (n_sub, 3, n_vert))
    best = np.arange(n_vert) % 3
    signal = np.arange(n_vert) < 40  # the last 20 vertices carry nothing
    r[:, best[signal], np.flatnonzero(signal)] += 0.3
    r[:2, :, 0] = np.nan  # vertex 0 mapped in 6 subjects only
    r[:, :, 1] = np.nan  # vertex 1 never mapped
    out = maps.group_vertex_maps(r, depths, fdr=0.01)
    p = np.array(
        [
            [
                scipy.stats.ttest_1samp(r[:, k, v][np.isfinite(r[:, k, v])], 0.0, alternative="greater").pvalue
                if v != 1
                else np.nan
                for v in range(n_vert)
            ]
            for k in range(3)
        ]
    )
    q = np.full(p.shape, np.nan)
    q[np.isfinite(p)] = _bh(p[np.isfinite(p)])
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning, match="Mean of empty slice"):
        mean = np.nanmean(r, axis=0)  # vertex 1 has no data
    for v in range(2, n_vert):
        k = int(np.argmax(mean[:, v]))
        assert out["best"][v] == k
        assert out["q"][v] == pytest.approx(q[k, v], rel=1e-9)
        shown = q[k, v] <= 0.01 and mean[k, v] > 0
        assert np.isfinite(out["r"][v]) == shown
        if shown:
            assert out["r"][v] == pytest.approx(mean[k, v]) and out["depth"][v] == depths[k]
    assert out["best"][1] == -1 and np.isnan(out["r"][1])
    assert out["n"][0] == 6
    assert np.isfinite(out["r"][2:40]).all() and (out["depth"][2:40] == depths[best[2:40]]).all()
    assert np.isfinite(out["r"][40:]).sum() <= 1  # null vertices: FDR keeps false positives rare
    with pytest.raises(ValueError, match="expected"):
        maps.group_vertex_maps(r[:, :2], depths, fdr=0.01)
    # The weighted depth: subject mean (NaN subjects left out) where r is shown, NaN elsewhere.
    weighted = rng.uniform(0, 1, (n_sub, n_vert))
    weighted[0, 2:5] = np.nan
    out_w = maps.group_vertex_maps(r, depths, fdr=0.01, weighted=weighted)
    shown = np.isfinite(out["r"])
    np.testing.assert_array_equal(out_w["r"], out["r"])
    np.testing.assert_allclose(
        out_w["weighted_depth"][shown],
        [weighted[np.isfinite(weighted[:, v]), v].mean() for v in np.flatnonzero(shown)],
        rtol=1e-12,
    )
    assert np.isnan(out_w["weighted_depth"][~shown]).all()
    with pytest.raises(ValueError, match="n_subjects, n_vertices"):
        maps.group_vertex_maps(r, depths, fdr=0.01, weighted=weighted[:, :5])


# ---------------------------------------------------------------- end to end on subject folders


def _write_subject_folders(tmp_path, modality: str) -> tuple[list[str], dict, pd.DataFrame]:
    """Brain-stage subject folders and encode-stage per-target score files with a planted answer.

    fMRI: V1 targets best at layer 0, FFA targets at layer 2 (activations; gradients reversed).
    MEG: every sensor's r peaks at time 0.1 + 0.2 k for layer k, stronger on the right (x > 0).
    """
    rng = np.random.default_rng(2)
    sensors = ctf275_sensors()
    times = np.round(np.arange(-0.1, 0.7, 0.05), 3)
    scores, dirs, tmax_rows = [], {}, []
    for subject in SUBJECTS:
        long = []
        folder = tmp_path / "brain" / subject
        if modality == "fmri":
            rows = [
                {
                    "modality": "fmri",
                    "roi": roi,
                    "hemi": hemi,
                    "sensor": "",
                    "time": np.nan,
                    **dict(zip("xyz", np.asarray(SIM_ROIS[roi]) * [sign, 1, 1] + rng.normal(0, 2, 3))),
                }
                for roi in ("V1", "FFA")
                for hemi, sign in (("lh", -1), ("rh", 1))
                for _ in range(5)
            ]
        else:
            rows = [
                {
                    "modality": "meg",
                    "roi": "",
                    "hemi": "",
                    "sensor": s,
                    "time": t,
                    "x": np.nan,
                    "y": np.nan,
                    "z": np.nan,
                }
                for s in sensors["sensor"]
                for t in times
            ]
        targets = pd.DataFrame(rows).assign(
            target=lambda t: np.arange(len(t)), atlas="", noise_ceiling=0.5, roi_distance_mm=np.nan
        )
        write_table(folder / "targets.parquet", targets)
        save_array(folder / "Y.npy", np.zeros((4, len(targets)), dtype=np.float32))
        write_table(folder / "samples.parquet", pd.DataFrame({"image_id": np.arange(4), "group": np.arange(4)}))
        dirs[subject] = folder
        for signal in SIGNALS:
            for k, depth in DEPTHS.items():
                if modality == "fmri":
                    best = np.where(targets["roi"] == "V1", 0, 2)
                    best = best if signal == "act" else 2 - best
                    r = np.where(best == k, 0.3, 0.02) + rng.normal(0, 0.02, len(targets))
                else:
                    peak = 0.1 + 0.2 * k if signal == "act" else 0.6 - 0.2 * k
                    right = targets["sensor"].map(sensors.set_index("sensor")["px"]).to_numpy() > 0
                    r = (0.1 + 0.2 * right) * np.exp(-((targets["time"].to_numpy() - peak) ** 2) / 0.005)
                    tmax_rows.append(
                        {
                            "dataset": "d",
                            "model": "m",
                            "signal": signal,
                            "subject": subject,
                            "layer_index": k,
                            "depth": depth,
                            "t_max_s": peak,
                            "peak_r": 0.3,
                        }
                    )
                path = tmp_path / "encoding" / signal / f"{k:02d}" / f"{subject}.targets.parquet"
                per_target = pd.DataFrame(
                    {
                        "target": targets["target"],
                        "r": r,
                        "r2": r**2,
                        "alpha": 1.0,
                        "r_normalized": r,
                        "excluded": False,
                        "p": np.nan,  # no encoding null: the brain map thresholds across subjects
                        "q": np.nan,
                    }
                )
                identity = {"dataset": "d", "model": "m", "signal": signal, "layer_index": k, "subject": subject}
                save_target_scores(path, per_target, identity, {})
                scores.append(str(path))
                long.append(per_target.assign(signal=signal, layer_index=k, depth=depth)[targets["modality"] == "fmri"])
        identity = {"dataset": "d", "model": "m", "subject": subject}
        depths = subject_target_depths(pd.concat(long, ignore_index=True), identity)
        save_subject_table(folder / "target_depths.parquet", depths)
    enc = pd.DataFrame(
        [{"dataset": "d", "model": "m", "modality": modality, "layer_index": k, "depth": d} for k, d in DEPTHS.items()]
    )
    write_table(tmp_path / "tables" / "encoding.parquet", enc)
    return scores, dirs, pd.DataFrame(tmax_rows)


def _subject_files(dirs: dict) -> tuple[dict, dict]:
    """Each subject's target table and per-target depth table, read through their stages' loaders."""
    targets = {s: load_targets(folder / "targets.parquet") for s, folder in dirs.items()}
    depths = {s: load_target_depths(folder / "target_depths.parquet") for s, folder in dirs.items()}
    return targets, depths


def _weighted_at(targets: pd.DataFrame, r: dict, signal: str, subject: str, hemi: str, xyz: np.ndarray) -> float:
    """Mean over one subject's targets within 10 mm of `xyz` of sum_k max(r_k, 0) d_k / sum_k max(r_k, 0)."""
    rk = np.vstack([r[signal, k, subject] for k in DEPTHS])
    w = np.clip(rk, 0, None)
    per_target = np.array(list(DEPTHS.values())) @ w / w.sum(axis=0)
    near = (targets["hemi"] == hemi) & (np.linalg.norm(targets[["x", "y", "z"]].to_numpy() - xyz, axis=1) <= 10)
    return float(per_target[near.to_numpy()].mean())


def test_brain_map_recovers_the_planted_depths(tmp_path):
    scores, dirs, _ = _write_subject_folders(tmp_path, "fmri")
    targets, depths = _subject_files(dirs)
    r = maps._subject_scores(scores, targets)
    mesh = maps.fsaverage5()
    out = maps._brain_maps(targets, r, DEPTHS, 0.01, 10.0, mesh, maps._weighted_depths(depths, targets))
    for hemi, sign in (("lh", -1), ("rh", 1)):
        pial = np.asarray(mesh[hemi]["pial"].coordinates)
        for roi, act_depth in (("V1", 0.0), ("FFA", 1.0)):
            v = np.argmin(np.linalg.norm(pial - np.asarray(SIM_ROIS[roi]) * [sign, 1, 1], axis=1))
            assert out["act"][hemi]["depth"][v] == act_depth, (hemi, roi)
            assert out["grad"][hemi]["depth"][v] == 1.0 - act_depth, (hemi, roi)
            assert out["act"][hemi]["r"][v] == pytest.approx(0.3, abs=0.03)
            for signal in SIGNALS:
                expected = np.mean([_weighted_at(targets[s], r, signal, s, hemi, pial[v]) for s in SUBJECTS])
                assert out[signal][hemi]["weighted_depth"][v] == pytest.approx(expected, rel=1e-9)
            # 0.3 at the best layer, about 0.02 elsewhere: about (0.3·d + 0.02·(sum of the others)) / 0.34.
            assert abs(out["act"][hemi]["weighted_depth"][v] - act_depth) < 0.15
    far = np.argmax(np.asarray(mesh["lh"]["pial"].coordinates)[:, 1])  # frontal pole: no target in reach
    assert np.isnan(out["act"]["lh"]["r"][far])
    # SVG only: the PNG path of save_figure is tested in test_figures (a PNG of 24 surfaces takes ~8 s).
    enc = pd.read_parquet(tmp_path / "tables" / "encoding.parquet")
    paths = maps.make_brain_map(scores, targets, depths, enc, tmp_path / "figures", "d", "m", ("svg",), fdr=0.01)
    assert [p.name for p in paths] == ["brain_map_d_m.svg"]
    assert 20_000 < paths[0].stat().st_size < 3_000_000  # surfaces are rasterised in the SVG
    assert "<image" in paths[0].read_text()
    assert plt.get_fignums() == []


def test_glass_brain_markers_are_subject_means(tmp_path):
    scores, dirs, _ = _write_subject_folders(tmp_path, "fmri")
    targets, _ = _subject_files(dirs)
    best = pd.DataFrame(
        [
            {
                "dataset": "d",
                "model": "m",
                "signal": sig,
                "subject": sub,
                "atlas": "",
                "roi": roi,
                "hemi": hemi,
                "best_layer_index": 0,
                "best_depth": depth + 0.1 * i,
                "best_r": r_best,
            }
            for i, sub in enumerate(SUBJECTS)
            for sig in SIGNALS
            for hemi in ("lh", "rh", "both")
            for roi, depth, r_best in (("V1", 0.0, 0.3), ("FFA", 0.5, -0.2))
        ]
    )
    markers = maps.roi_markers(best, targets)
    assert sorted(markers["hemi"]) == ["lh", "lh", "rh", "rh"] and set(markers["roi"]) == {"V1"}  # FFA: r < 0
    row = markers[(markers.signal == "act") & (markers.hemi == "lh")].iloc[0]
    assert row["best_depth"] == pytest.approx(np.mean([0.1 * i for i in range(len(SUBJECTS))]))
    xyz = pd.concat([t[(t.roi == "V1") & (t.hemi == "lh")] for t in targets.values()])[["x", "y", "z"]].mean()
    np.testing.assert_allclose(row[["x", "y", "z"]].to_numpy(float), xyz.to_numpy(), rtol=1e-12)
    assert row["x"] < 0  # left hemisphere
    fig = maps.plot_glass_brain(markers, title="t")
    assert sorted(ax.get_gid() for ax in fig.axes if str(ax.get_gid()).startswith("glass:")) == [
        "glass:act:2",
        "glass:grad:2",
    ]
    paths = maps.make_glass_brain(targets, best, tmp_path / "figures", "d", "m", ("png", "svg"))
    assert [p.name for p in paths] == ["glass_brain_d_m.png", "glass_brain_d_m.svg"]
    with pytest.raises(ValueError, match="no ROI with a positive best r"):
        maps.plot_glass_brain(markers.iloc[:0], title="t")


def test_plot_brain_map_panels():
    mesh = maps.fsaverage5()
    empty = np.full(maps.N_FSAVERAGE5, np.nan)
    values = {s: {h: {"r": empty, "depth": empty, "weighted_depth": empty} for h in maps.HEMIS} for s in SIGNALS}
    fig = maps.plot_brain_map(values, mesh, title="t", fdr=0.05, views=("ventral",))
    gids = [ax.get_gid() for ax in fig.axes if str(ax.get_gid()).startswith("map:")]
    assert len(gids) == 6 * len(SIGNALS)
    assert {"map:grad:rh:depth:ventral", "map:grad:rh:weighted_depth:ventral"} <= set(gids)
    # Without the weighted depth: the r and best-layer depth rows only.
    fig = maps.plot_brain_map(
        {"act": {h: {"r": empty, "depth": empty} for h in maps.HEMIS}}, mesh, title="t", fdr=0.05, views=("lateral",)
    )
    assert sorted(ax.get_gid() for ax in fig.axes if str(ax.get_gid()).startswith("map:")) == [
        f"map:act:{h}:{q}:lateral" for h in maps.HEMIS for q in ("depth", "r")
    ]
    with pytest.raises(ValueError, match="no signal"):
        maps.plot_brain_map({}, mesh, title="t", fdr=0.05)


def test_meg_topomaps_at_each_layers_tmax(tmp_path):
    scores, dirs, tm = _write_subject_folders(tmp_path, "meg")
    picked = maps.topomap_layers(tm)
    assert sorted(picked["layer_index"]) == [0, 0, 1, 1, 2, 2]
    targets, _ = _subject_files(dirs)
    values = maps._topomap_values(targets, maps._subject_scores(scores, targets), tm)
    row = values[(values.signal == "grad") & (values.depth == 0.0)].iloc[0]
    assert row["time"] == pytest.approx(0.6)
    sensors = ctf275_sensors().set_index("sensor").loc[row["sensors"]]
    np.testing.assert_allclose(row["r"], 0.1 + 0.2 * (sensors["px"].to_numpy() > 0), rtol=1e-9)
    fig = maps.plot_meg_topomaps(values, title="t")
    images = [im.get_gid() for ax in fig.axes for im in ax.get_images()]
    assert sorted(images) == sorted(f"topo:{s}:{d:.3f}" for s in SIGNALS for d in DEPTHS.values())
    paths = maps.make_meg_topomaps(scores, targets, tm, tmp_path / "figures", "d", "m", ("png", "svg"))
    assert [p.name for p in paths] == ["meg_topomaps_d_m.png", "meg_topomaps_d_m.svg"]
    with pytest.raises(ValueError, match="no layer with a positive peak"):
        maps.topomap_layers(tm.assign(peak_r=-1.0))
    with pytest.raises(ValueError, match="not on the CTF-275 layout"):
        maps._layout_positions(["EEG001", "EEG002"])


def test_map_names():
    names = maps.map_names({"a": {"fmri", "meg"}, "b": {"meg"}}, ["m2", "m1"], ("png",))
    assert [n[3] for n in names] == [
        "brain_map_a_m1.png",
        "glass_brain_a_m1.png",
        "meg_topomaps_a_m1.png",
        "brain_map_a_m2.png",
        "glass_brain_a_m2.png",
        "meg_topomaps_a_m2.png",
        "meg_topomaps_b_m1.png",
        "meg_topomaps_b_m2.png",
    ]


def test_recorded_ctf_names_with_the_system_suffix_map_onto_the_layout():
    from brainprop.figures.maps import _layout_positions

    # THINGS-MEG's channels are named like "MLC11-1609"; the CTF-275 layout has "MLC11".
    suffixed, on = _layout_positions(["MLC11-1609", "MRO52-1609", "EEG001"])
    bare, _ = _layout_positions(["MLC11", "MRO52"])
    np.testing.assert_array_equal(suffixed, bare)
    assert on.tolist() == [True, True, False]  # a sensor off the layout is left out, not fatal


def test_eeg_10_10_names_map_onto_the_easycap_layout():
    """THINGS-EEG2's 17 channels (modality meg) are drawn on the EasyCap-M1 layout: posterior, left odd, right even."""
    from brainprop.figures.maps import _layout_positions, sensor_layout

    names = ["O1", "Oz", "O2", "PO7", "PO3", "POz", "PO4", "PO8", "P7", "P5", "P3", "P1", "Pz", "P2", "P4", "P6", "P8"]
    assert sensor_layout(names) == "EasyCap-M1 10-10 EEG" and sensor_layout(["MLC11-1609"]) == "CTF-275"
    pos, on = _layout_positions(names)
    assert on.all() and (pos[:, 1] < 0).all()  # behind the head's centre
    x = dict(zip(names, pos[:, 0]))
    assert x["O1"] < 0 < x["O2"] and x["PO7"] < x["PO3"] < 0 < x["PO4"] < x["PO8"] and abs(x["Oz"]) < 0.005
