"""Tests of brainprop.figures on synthetic run tables.

2 models, 3 subjects, 6 layers, 6 ROIs, 20 MEG time points, signals act and grad.
"""

from __future__ import annotations

import matplotlib
import matplotlib.colors
import numpy as np
import pandas as pd
import pytest
import scipy.stats

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.image import imread
from matplotlib.text import Text

from brainprop.contract import validate_table
from brainprop.figures.catalog import FIGURE_TABLES, figure_names
from brainprop.figures.cka import plot_cka_grid
from brainprop.figures.comparison import plot_model_comparison, plot_rule_signatures, prediction_matched
from brainprop.figures.encoding import plot_encoding_by_layer, plot_meg_timecourses
from brainprop.figures.hierarchy import plot_spatial_hierarchy, plot_tmax
from brainprop.figures.report import write_tests_html
from brainprop.figures.rules import _plotters, make_figures
from brainprop.figures.simulation import plot_simulation_recovery
from brainprop.figures.style import depth_colors, save_figure

MODELS = ("vit_small", "resnet50")
SUBJECTS = ("s01", "s02", "s03")
N_LAYERS = 6
ROIS = {"V1": 0.0, "V2": 9.0, "V3": 17.5, "hV4": 28.0, "LO": 41.0, "FFA": 52.0}
TIMES = np.round(np.linspace(-0.1, 1.23, 20), 3)
SIGNALS = ("act", "grad")


def _encoding_rows(rng: np.random.Generator) -> list[dict]:
    """fMRI rows (hemi both/lh/rh per ROI) and MEG rows (one per time) with planted hierarchies."""
    rows = []
    jitter = {
        (m, s, subj, roi): rng.normal(0, 0.15) for m in MODELS for s in SIGNALS for subj in SUBJECTS for roi in ROIS
    }
    base = {"timm_name": "x", "noise_ceiling": 0.5, "n_targets": 40, "n_excluded": 0}
    for model in MODELS:
        for signal in SIGNALS:
            for k in range(N_LAYERS):
                depth = k / (N_LAYERS - 1)
                layer = {
                    "model": model,
                    "signal": signal,
                    "layer": f"blocks.{k}",
                    "layer_index": k,
                    "depth": depth,
                    **base,
                }
                for subject in SUBJECTS:
                    for roi, dist in ROIS.items():
                        planted = dist / 52.0 if signal == "act" else 1.0 - dist / 52.0
                        planted += jitter[model, signal, subject, roi]  # subjects differ in best layer
                        amp = 0.4 if signal == "act" else 0.15 + 0.2 * dist / 52.0
                        for hemi in ("both", "lh", "rh"):
                            r = amp * np.exp(-((depth - planted) ** 2) / 0.08) + rng.normal(0, 0.02)
                            # lh/rh rows are off by a constant so a missing hemi filter shows.
                            r += 0.0 if hemi == "both" else 0.3
                            rows.append(
                                {
                                    **layer,
                                    "dataset": "nsd_sim",
                                    "modality": "fmri",
                                    "subject": subject,
                                    "atlas": "streams",
                                    "roi": roi,
                                    "hemi": hemi,
                                    "roi_distance_mm": dist,
                                    "time": np.nan,
                                    "r": r,
                                    "r_normalized": r / np.sqrt(0.5),
                                }
                            )
                    peak = 0.08 + 0.3 * depth if signal == "act" else 0.95 - 0.25 * depth
                    amp = 0.3 if signal == "act" else 0.12
                    for t in TIMES:
                        r = amp * np.exp(-((t - peak) ** 2) / (2 * 0.09**2)) + rng.normal(0, 0.01)
                        rows.append(
                            {
                                **layer,
                                "dataset": "things_meg_sim",
                                "modality": "meg",
                                "subject": subject,
                                "atlas": "",
                                "roi": "",
                                "hemi": "",
                                "roi_distance_mm": np.nan,
                                "time": float(t),
                                "r": r,
                                "r_normalized": r / np.sqrt(0.5),
                            }
                        )
    return rows


def _best_layers(enc: pd.DataFrame) -> pd.DataFrame:
    """Argmax over layers of r per ROI (ties to the shallowest), as the hierarchy stage defines it."""
    fmri = enc[(enc["modality"] == "fmri")].sort_values("layer_index")
    keys = ["dataset", "model", "signal", "subject", "atlas", "roi", "hemi"]
    idx = fmri.groupby(keys)["r"].idxmax()
    best = fmri.loc[idx, [*keys, "layer_index", "depth", "r", "roi_distance_mm"]]
    return best.rename(columns={"layer_index": "best_layer_index", "depth": "best_depth", "r": "best_r"})


def _tmax(enc: pd.DataFrame) -> pd.DataFrame:
    """T_max = mean of the times where r(t) / max r(t) >= 0.95 (METHOD.md §5)."""
    out = []
    meg = enc[enc["modality"] == "meg"]
    for key, g in meg.groupby(["dataset", "model", "signal", "subject", "layer_index", "depth"]):
        r, t = g["r"].to_numpy(), g["time"].to_numpy()
        out.append(
            dict(
                zip(["dataset", "model", "signal", "subject", "layer_index", "depth"], key),
                t_max_s=float(t[r / r.max() >= 0.95].mean()),
                peak_r=float(r.max()),
            )
        )
    return pd.DataFrame(out)


def _hierarchy(best: pd.DataFrame, tm: pd.DataFrame) -> pd.DataFrame:
    """Spatial (best depth vs distance) and temporal (depth vs T_max) Pearson scores per subject."""
    out = []
    for (d, m, s, subj), g in best[best["hemi"] == "both"].groupby(["dataset", "model", "signal", "subject"]):
        out.append(
            {
                "dataset": d,
                "modality": "fmri",
                "model": m,
                "signal": s,
                "subject": subj,
                "score": "spatial",
                "atlas": "streams",
                "n_used": len(g),
                "n_excluded": 0,
                "value": scipy.stats.pearsonr(g["best_depth"], g["roi_distance_mm"])[0],
            }
        )
    for (d, m, s, subj), g in tm.groupby(["dataset", "model", "signal", "subject"]):
        out.append(
            {
                "dataset": d,
                "modality": "meg",
                "model": m,
                "signal": s,
                "subject": subj,
                "score": "temporal",
                "atlas": "",
                "n_used": len(g),
                "n_excluded": 0,
                "value": scipy.stats.pearsonr(g["depth"], g["t_max_s"])[0],
            }
        )
    return pd.DataFrame(out)


def _tests(hier: pd.DataFrame) -> pd.DataFrame:
    """S1a and T1 rows: group mean of the scores with a made-up CI around it and a p per signal."""
    out = []
    for (d, modality, m, s, score), g in hier.groupby(["dataset", "modality", "model", "signal", "score"]):
        mean = g["value"].mean()
        test = "S1a" if score == "spatial" else "T1"
        out.append(
            {
                "dataset": d,
                "modality": modality,
                "model": m,
                "signal": s,
                "test": test,
                "level": "",
                "method": "wilcoxon",
                "alternative": "greater",
                "statistic": 6.0,
                "effect": mean,
                "ci_low": mean - 0.1,
                "ci_high": mean + 0.05,
                "p": 0.125,
                "p_min": 0.125,
                "p_fdr": 0.01 if s == "act" else 0.5,
                "family": f"{d}/{m}/{s}",
                "n_subjects": len(g),
                "reference": "",
                "n_significant_subjects": 1,
            }
        )
    return pd.DataFrame(out)


def _cka(rng: np.random.Generator) -> pd.DataFrame:
    """Upper-triangle rows (with the diagonal) of a random symmetric matrix per model × signal."""
    out = []
    for model in MODELS:
        for signal in SIGNALS:
            for a in range(N_LAYERS):
                for b in range(a, N_LAYERS):
                    out.append(
                        {
                            "model": model,
                            "imageset": "demo",
                            "signal": signal,
                            "layer_a": f"blocks.{a}",
                            "layer_b": f"blocks.{b}",
                            "cka": 1.0 if a == b else float(rng.uniform(0, 1)),
                        }
                    )
    return pd.DataFrame(out)


def _truth(enc: pd.DataFrame) -> pd.DataFrame:
    """Planted depth per ROI (nsd_sim) and latency per layer (things_meg_sim) for resnet50."""
    out = []
    for subject in SUBJECTS:
        for signal in SIGNALS:
            for roi, dist in ROIS.items():
                out.append(
                    {
                        "dataset": "nsd_sim",
                        "subject": subject,
                        "source_model": "resnet50",
                        "kind": "roi",
                        "roi": roi,
                        "signal": signal,
                        "depth": dist / 52.0,
                        "latency_s": np.nan,
                    }
                )
            for k in range(N_LAYERS):
                depth = k / (N_LAYERS - 1)
                latency = 0.08 + 0.3 * depth if signal == "act" else 0.95 - 0.25 * depth
                out.append(
                    {
                        "dataset": "things_meg_sim",
                        "subject": subject,
                        "source_model": "resnet50",
                        "kind": "layer",
                        "roi": "",
                        "signal": signal,
                        "depth": depth,
                        "latency_s": latency,
                    }
                )
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    enc = pd.DataFrame(_encoding_rows(np.random.default_rng(0)))
    best = _best_layers(enc)
    tm = _tmax(enc)
    hier = _hierarchy(best, tm)
    out = {
        "encoding": enc,
        "best_layers": best,
        "tmax": tm,
        "hierarchy": hier,
        "tests": _tests(hier),
        "cka": _cka(np.random.default_rng(1)),
    }
    for name, table in out.items():
        assert validate_table(name, table) == [], name
    out["truth"] = _truth(enc)
    return out


@pytest.fixture(autouse=True)
def _close_all():
    yield
    plt.close("all")


def _series(ax, signal: str) -> tuple[int, int]:
    """Number of mean lines and SEM collections of `signal` in `ax`."""
    lines = [a for a in ax.get_lines() if a.get_gid() == f"{signal}:mean"]
    colls = [c for c in ax.collections if c.get_gid() == f"{signal}:sem"]
    return len(lines), len(colls)


def _line(ax, signal: str):
    return next(a for a in ax.get_lines() if a.get_gid() == f"{signal}:mean")


# ---------------------------------------------------------------- encoding by layer


def test_encoding_fmri_levels_series_and_values(tables):
    enc = tables["encoding"]
    fig = plot_encoding_by_layer(enc, "nsd_sim")  # 6 ROIs -> distance thirds
    values = ("r", "r_normalized")
    assert len(fig.axes) == len(MODELS) * len(values) * 3
    titles = [ax.get_title() for ax in fig.axes[:3]]
    assert [t.split(":")[0] for t in titles] == ["fMRI early", "fMRI intermediate", "fMRI high"]
    assert "V1, V2" in titles[0] and "LO, FFA" in titles[2]
    for ax in fig.axes:
        for signal in SIGNALS:
            assert _series(ax, signal) == (1, 1)
    # Reference: each subject's mean over the level's ROIs (hemi 'both'), then mean and SEM over subjects.
    model = sorted(MODELS)[1]
    for row, value in enumerate(values):
        ax = fig.axes[(2 + row) * 3 + 2]  # second model, high level
        assert fig.axes[(2 + row) * 3].get_ylabel().startswith(model)
        rows = enc[
            (enc.dataset == "nsd_sim")
            & (enc.model == model)
            & enc.roi.isin(["LO", "FFA"])
            & (enc.hemi == "both")
            & (enc.signal == "grad")
        ]
        wide = rows.groupby(["layer_index", "subject"])[value].mean().unstack().to_numpy()
        np.testing.assert_allclose(_line(ax, "grad").get_ydata(), wide.mean(axis=1), rtol=1e-12)
        band = next(c for c in ax.collections if c.get_gid() == "grad:sem")
        top = band.get_paths()[0].vertices[:, 1].max()
        expected = (wide.mean(axis=1) + scipy.stats.sem(wide, axis=1, ddof=1)).max()
        np.testing.assert_allclose(top, expected, rtol=1e-12)


def test_encoding_meg_is_peak_over_time(tables):
    enc = tables["encoding"]
    fig = plot_encoding_by_layer(enc, "things_meg_sim", values=("r",))
    assert len(fig.axes) == len(MODELS)
    for ax in fig.axes:
        assert all(_series(ax, s) == (1, 1) for s in SIGNALS)
    rows = enc[(enc.dataset == "things_meg_sim") & (enc.model == "resnet50") & (enc.signal == "act")]
    peak = rows.groupby(["layer_index", "subject"])["r"].max().unstack().to_numpy()
    np.testing.assert_allclose(_line(fig.axes[0], "act").get_ydata(), peak.mean(axis=1), rtol=1e-12)


def test_encoding_without_noise_ceiling_drops_the_normalised_row(tables):
    enc = tables["encoding"].assign(r_normalized=np.nan)
    fig = plot_encoding_by_layer(enc, "things_meg_sim")
    assert len(fig.axes) == len(MODELS)
    with pytest.raises(ValueError, match="no finite value"):
        plot_encoding_by_layer(enc, "things_meg_sim", values=("r_normalized",))


def test_encoding_roi_levels_from_config(tables):
    enc = tables["encoding"]
    levels = {"early": ["V1", "V2"], "late": ["FFA", "LO"], "absent": ["MT"]}
    fig = plot_encoding_by_layer(enc, "nsd_sim", roi_levels=levels, values=("r",))
    assert [ax.get_title().split(":")[0] for ax in fig.axes[:2]] == ["fMRI early", "fMRI late"]
    assert len(fig.axes) == len(MODELS) * 2
    rows = enc[(enc.model == "resnet50") & (enc.signal == "act") & enc.roi.isin(levels["late"]) & (enc.hemi == "both")]
    per_subject = rows.groupby(["layer_index", "subject"])["r"].mean().unstack().to_numpy()
    np.testing.assert_allclose(_line(fig.axes[1], "act").get_ydata(), per_subject.mean(axis=1), rtol=1e-12)
    with pytest.raises(ValueError, match="name none of the ROIs"):
        plot_encoding_by_layer(enc, "nsd_sim", roi_levels={"x": ["MT"]})


def test_extra_signal_gets_its_own_style(tables):
    enc = tables["encoding"]
    fa = enc[(enc.dataset == "things_meg_sim") & (enc.signal == "grad")].assign(signal="feedback_alignment")
    fig = plot_encoding_by_layer(pd.concat([enc, fa]), "things_meg_sim")
    colors = {s: _line(fig.axes[0], s).get_color() for s in (*SIGNALS, "feedback_alignment")}
    assert colors["act"] == "#1b6ca8" and colors["grad"] == "#d1495b"
    assert len(set(colors.values())) == 3


# ---------------------------------------------------------------- spatial hierarchy


def test_spatial_panels_series_labels_and_scores(tables):
    fig = plot_spatial_hierarchy(tables["best_layers"], tables["hierarchy"], "nsd_sim")
    assert len(fig.axes) == len(MODELS)
    renderer = fig.canvas.get_renderer()
    hier = tables["hierarchy"]
    for ax in fig.axes:
        model = ax.get_title().split(" · ")[1]
        for signal in SIGNALS:
            assert _series(ax, signal) == (1, 1)
            assert sum(a.get_gid() == f"{signal}:fit" for a in ax.get_lines()) == 1
            mine = (hier.model == model) & (hier.signal == signal) & (hier.score == "spatial")
            values = hier.loc[mine, "value"]
            label = next(t.get_text() for t in ax.get_legend().get_texts() if t.get_text().startswith(signal))
            assert f"{values.mean():+.2f}" in label
        labels = [t for t in ax.texts if str(t.get_gid()).startswith("roi:")]
        assert sorted(t.get_text() for t in labels) == sorted(ROIS)
        boxes = [Text.get_window_extent(t, renderer) for t in labels]
        frame = ax.get_window_extent(renderer)
        for i, box in enumerate(boxes):
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            assert not any(box.overlaps(other) for other in boxes[i + 1 :])


def test_spatial_labels_stay_apart_when_rois_crowd(tables):
    crowded = {f"ROI{i}": float(i) for i in range(8)} | {"far": 50.0}
    rows = [
        {
            "dataset": "d",
            "model": "m",
            "signal": sig,
            "subject": subj,
            "atlas": "a",
            "roi": roi,
            "hemi": "both",
            "best_depth": 0.5 + 0.02 * i,
            "best_r": 0.2,
            "roi_distance_mm": dist,
        }
        for sig in SIGNALS
        for subj in SUBJECTS
        for i, (roi, dist) in enumerate(crowded.items())
    ]
    hier = tables["hierarchy"].assign(dataset="d", model="m")
    fig = plot_spatial_hierarchy(pd.DataFrame(rows), hier, "d")
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts if str(t.get_gid()).startswith("roi:")]
    assert len(boxes) == len(crowded)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    markers = ax.transData.transform(np.vstack([_line(ax, s).get_xydata() for s in SIGNALS]))
    assert not any(box.contains(x, y) for box in boxes for x, y in markers)


def test_spatial_points_are_subject_means_by_distance(tables):
    best = tables["best_layers"]
    fig = plot_spatial_hierarchy(best, tables["hierarchy"], "nsd_sim", min_best_r=None)
    line = _line(fig.axes[1], "act")  # vit_small, sorted second
    rows = best[(best.model == "vit_small") & (best.signal == "act") & (best.hemi == "both")]
    expected = rows.groupby("roi")["best_depth"].mean().loc[list(ROIS)].to_numpy()
    np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)
    x = np.asarray(line.get_xdata(), dtype=float)
    np.testing.assert_allclose(x - x[0], np.array(list(ROIS.values())), atol=1e-9)  # dodge is a shift


def test_spatial_distances_from_mapping(tables):
    best = tables["best_layers"].drop(columns="roi_distance_mm")
    with pytest.raises(ValueError, match="roi_distance_mm"):
        plot_spatial_hierarchy(best, tables["hierarchy"], "nsd_sim")
    with pytest.raises(ValueError, match=r"no roi_distance_mm for ROI\(s\) \['FFA'\]"):
        plot_spatial_hierarchy(
            best, tables["hierarchy"], "nsd_sim", roi_distance_mm={k: v for k, v in ROIS.items() if k != "FFA"}
        )
    fig = plot_spatial_hierarchy(best, tables["hierarchy"], "nsd_sim", roi_distance_mm=ROIS)
    assert len(fig.axes) == len(MODELS)


# ---------------------------------------------------------------- T_max


def test_tmax_panels_series_and_values(tables):
    tm = tables["tmax"]
    fig = plot_tmax(tm, tables["hierarchy"], "things_meg_sim")
    assert len(fig.axes) == len(MODELS)
    for ax in fig.axes:
        assert all(_series(ax, s) == (1, 1) for s in SIGNALS)
        assert sum(a.get_gid() == "forward_sweep_end" for a in ax.get_lines()) == 1
        assert any("temporal score" in t.get_text() for t in ax.get_legend().get_texts())
    rows = tm[(tm.model == "vit_small") & (tm.signal == "grad")]
    wide = rows.pivot(index="layer_index", columns="subject", values="t_max_s").to_numpy()
    np.testing.assert_allclose(_line(fig.axes[1], "grad").get_ydata(), wide.mean(axis=1), rtol=1e-12)
    act_last = tm[(tm.model == "vit_small") & (tm.signal == "act") & (tm.layer_index == N_LAYERS - 1)]
    sweep = next(a for a in fig.axes[1].get_lines() if a.get_gid() == "forward_sweep_end")
    np.testing.assert_allclose(sweep.get_ydata()[0], act_last["t_max_s"].mean(), rtol=1e-12)


def test_tmax_leaves_out_layers_without_positive_peak(tables):
    tm = tables["tmax"].copy()
    drop = (tm.model == "resnet50") & (tm.signal == "grad") & (tm.layer_index == 2)
    tm.loc[drop, "peak_r"] = -0.01
    fig = plot_tmax(tm, tables["hierarchy"], "things_meg_sim")
    assert len(_line(fig.axes[0], "grad").get_xdata()) == N_LAYERS - 1
    assert len(_line(fig.axes[0], "act").get_xdata()) == N_LAYERS
    tm.loc[tm.model == "resnet50", "peak_r"] = -0.01  # a model with no usable layer keeps its panel
    fig = plot_tmax(tm, tables["hierarchy"], "things_meg_sim")
    assert len(fig.axes) == len(MODELS) and fig.axes[0].get_lines() == []
    assert [t.get_text() for t in fig.axes[0].texts] == ["no layer with peak r > 0.0"]


def test_spatial_model_without_positive_roi_keeps_its_panel(tables):
    best = tables["best_layers"].copy()
    best.loc[best.model == "resnet50", "best_r"] = -0.1
    fig = plot_spatial_hierarchy(best, tables["hierarchy"], "nsd_sim")
    assert len(fig.axes) == len(MODELS)
    assert [t.get_text() for t in fig.axes[0].texts] == ["no ROI with best r > 0.0"]
    assert len([t for t in fig.axes[1].texts if str(t.get_gid()).startswith("roi:")]) == len(ROIS)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, table, column",
    [
        (lambda t: plot_encoding_by_layer(t["encoding"], "nsd_sim"), "encoding", "roi_distance_mm"),
        (
            lambda t: plot_spatial_hierarchy(t["best_layers"], t["hierarchy"], "nsd_sim"),
            "best_layers",
            "best_depth",
        ),
        (lambda t: plot_spatial_hierarchy(t["best_layers"], t["hierarchy"], "nsd_sim"), "hierarchy", "value"),
        (lambda t: plot_tmax(t["tmax"], t["hierarchy"], "things_meg_sim"), "tmax", "t_max_s"),
        (lambda t: plot_meg_timecourses(t["encoding"], "things_meg_sim"), "encoding", "time"),
        (lambda t: plot_model_comparison(t["tests"], "nsd_sim"), "tests", "ci_low"),
        (lambda t: plot_cka_grid(t["cka"]), "cka", "layer_b"),
        (
            lambda t: plot_simulation_recovery(t["truth"], t["best_layers"], t["tmax"], "nsd_sim"),
            "best_layers",
            "best_depth",
        ),
    ],
)
def test_missing_column_and_empty_table_raise(tables, call, table, column):
    broken = {**tables, table: tables[table].drop(columns=column)}
    with pytest.raises(ValueError, match=rf"{table} table lacks column\(s\) \['{column}'\]"):
        call(broken)
    empty = {**tables, table: tables[table].iloc[:0]}
    with pytest.raises(ValueError, match=rf"{table} table is empty"):
        call(empty)


def test_unknown_dataset_and_missing_hemi_raise(tables):
    with pytest.raises(ValueError, match=r"no rows for dataset 'nope'.*nsd_sim"):
        plot_encoding_by_layer(tables["encoding"], "nope")
    lh_only = tables["encoding"][tables["encoding"].hemi != "both"]
    with pytest.raises(ValueError, match="hemi == 'both'"):
        plot_encoding_by_layer(lh_only, "nsd_sim")
    with pytest.raises(ValueError, match="no rows for dataset 'nsd_sim'"):
        plot_tmax(tables["tmax"], tables["hierarchy"], "nsd_sim")


# ---------------------------------------------------------------- files


def test_save_figure_writes_atomically_and_closes(tmp_path):
    fig, ax = plt.subplots(figsize=(2.0, 1.0))
    ax.plot([0, 1], [0, 1])
    paths = save_figure(fig, tmp_path / "sub" / "plot.v1")
    assert paths == [tmp_path / "sub" / "plot.v1.png", tmp_path / "sub" / "plot.v1.svg"]
    assert imread(paths[0]).shape[:2] == (150, 300)  # 150 dpi
    assert paths[1].read_text().lstrip().startswith("<?xml")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["plot.v1.png", "plot.v1.svg"]
    assert not plt.fignum_exists(fig.number)
    fig_pdf, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    (pdf,) = save_figure(fig_pdf, tmp_path / "plot", ("pdf",))
    assert pdf.read_bytes().startswith(b"%PDF") and b"CreationDate" not in pdf.read_bytes()  # reproducible
    fig2 = plt.figure()
    with pytest.raises(ValueError, match=r"unknown figure format\(s\) \['jpeg'\]"):
        save_figure(fig2, tmp_path / "x", ("png", "jpeg"))
    assert not plt.fignum_exists(fig2.number) and not list(tmp_path.glob("x*"))


def test_figure_names():
    names = figure_names(
        {"things_meg_sim": {"meg"}, "nsd_sim": {"fmri"}},
        formats=("png",),
        models=["m2", "m1"],
        simulated=["nsd_sim"],
        signals=["act", "grad"],
    )
    assert names == [
        "encoding_by_layer_nsd_sim_m1.png",
        "encoding_by_layer_nsd_sim_m2.png",
        "spatial_hierarchy_nsd_sim_m1.png",
        "spatial_hierarchy_nsd_sim_m2.png",
        "model_comparison_nsd_sim.png",
        "rule_signatures_nsd_sim.png",
        "simulation_recovery_nsd_sim.png",
        "encoding_by_layer_things_meg_sim_m1.png",
        "encoding_by_layer_things_meg_sim_m2.png",
        "meg_timecourses_things_meg_sim_m1.png",
        "meg_timecourses_things_meg_sim_m2.png",
        "tmax_things_meg_sim_m1.png",
        "tmax_things_meg_sim_m2.png",
        "model_comparison_things_meg_sim.png",
        "rule_signatures_things_meg_sim.png",
        "cka.png",
    ]
    # A run of activations only has no learning rule to draw.
    only_act = figure_names({"nsd_sim": {"fmri"}}, formats=("png",), models=["m1"], signals=["act"])
    assert not any(n.startswith("rule_signatures") for n in only_act) and "model_comparison_nsd_sim.png" in only_act
    with pytest.raises(ValueError, match=r"modality \['eeg'\]"):
        figure_names({"x": {"eeg"}})


def test_make_figures_writes_the_announced_files(tables, tmp_path):
    truth = tables["truth"]
    paths = {dataset: truth[truth.dataset == dataset] for dataset in ("nsd_sim", "things_meg_sim")}
    read = {name: tables[name] for name in FIGURE_TABLES}
    written = make_figures(read, tmp_path / "figures", formats=("png", "svg"), truth=paths)
    expected = figure_names(
        {"nsd_sim": {"fmri"}, "things_meg_sim": {"meg"}},
        formats=("png", "svg"),
        models=MODELS,
        simulated=paths,
        signals=SIGNALS,
    )
    assert sorted(p.name for p in written) == sorted(expected)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(expected)
    # Two drawing processes write the same files, pixel for pixel.
    forked = make_figures(read, tmp_path / "forked", formats=("png",), truth=paths, workers=2)
    assert [p.name for p in forked] == [p.name for p in written if p.suffix == ".png"]
    for path in forked:
        assert path.read_bytes() == (tmp_path / "figures" / path.name).read_bytes(), path.name
    assert all(p.stat().st_size > 10_000 for p in written)
    assert all(p.read_text().lstrip().startswith("<?xml") for p in written if p.suffix == ".svg")
    assert plt.get_fignums() == []  # every figure closed once written
    # Per-model figures draw only their model: the T_max figure of resnet50 has one panel.
    plot = _plotters(tables, None, 0.05)
    assert [ax.get_title() for ax in plot["tmax"]("things_meg_sim", "resnet50").axes] == ["things_meg_sim · resnet50"]
    assert len(plot["encoding_by_layer"]("nsd_sim", "vit_small").axes) == 2 * 3  # r, r_normalized x 3 levels


def test_tests_html_lists_every_row(tables, tmp_path):
    write_tests_html(tables["tests"], tmp_path / "report" / "tests.html")
    html = (tmp_path / "report" / "tests.html").read_text()
    assert html.index("<h2>Verdicts") < html.index("<h2>Findings") < html.index("<h2>Tests")  # the answer first
    full = html[html.index("<h2>Tests") :]
    assert full.count("<tr") == len(tables["tests"]) + 1  # header + rows
    findings = html[html.index("<h2>Findings") : html.index("<h2>Tests")]
    assert findings.count("<tr") == len(tables["tests"]) + 1
    first = tables["tests"].sort_values(["dataset", "model", "signal"]).iloc[0]
    assert f"{first['effect']:.4g}" in html


# ---------------------------------------------------------------- MEG time courses


def test_meg_timecourses_one_line_per_layer_coloured_by_depth(tables):
    enc = tables["encoding"]
    fig = plot_meg_timecourses(enc, "things_meg_sim")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == len(MODELS) * len(SIGNALS)
    ax = next(a for a in panels if a.get_title() == "vit_small · grad")
    lines = [ln for ln in ax.get_lines() if str(ln.get_gid()).startswith("grad:layer")]
    assert len(lines) == N_LAYERS
    rows = enc[
        (enc.dataset == "things_meg_sim") & (enc.model == "vit_small") & (enc.signal == "grad") & (enc.layer_index == 4)
    ]
    expected = rows.groupby("time")["r"].mean()
    line = next(ln for ln in lines if ln.get_gid() == "grad:layer4")
    np.testing.assert_allclose(line.get_xdata(), expected.index.to_numpy())
    np.testing.assert_allclose(line.get_ydata(), expected.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(matplotlib.colors.to_rgba(line.get_color()), depth_colors([4 / (N_LAYERS - 1)])[0])
    with pytest.raises(ValueError, match="no MEG rows"):
        plot_meg_timecourses(enc, "nsd_sim")


# ---------------------------------------------------------------- T_max prediction, model comparison


def test_tmax_draws_the_backprop_prediction(tables):
    tm = tables["tmax"]
    fig = plot_tmax(tm, tables["hierarchy"], "things_meg_sim", tests=tables["tests"])
    ax = fig.axes[0]  # resnet50
    act = tm[(tm.model == "resnet50") & (tm.signal == "act")].groupby("depth")["t_max_s"].mean()
    predicted = next(ln for ln in ax.get_lines() if ln.get_gid() == "backprop_prediction")
    np.testing.assert_allclose(predicted.get_ydata(), 2 * act.iloc[-1] - act.to_numpy(), rtol=1e-12)
    row = tables["tests"].query("model == 'resnet50' and signal == 'grad' and test == 'T1'").iloc[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(f"95% CI [{row.ci_low:+.2f}, {row.ci_high:+.2f}]" in t for t in texts)
    fig = plot_tmax(tm, tables["hierarchy"], "things_meg_sim", tests=tables["tests"], alpha=0.1)
    assert any("90% CI [" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_model_comparison_values_order_and_fill(tables):
    tests = tables["tests"]
    extra = tests[tests.model == "vit_small"].assign(
        model="convnext",
        effect=lambda t: t.effect - 0.5,
        ci_low=lambda t: t.ci_low - 0.5,
        ci_high=lambda t: t.ci_high - 0.5,
    )
    both = pd.concat([tests, extra], ignore_index=True)
    fig = plot_model_comparison(both, "nsd_sim")
    (ax,) = [a for a in fig.axes if a.get_title()]  # fMRI only: the spatial panel
    rows = both[(both.dataset == "nsd_sim") & (both.test == "S1a")]
    # Every model x signal is its own labelled row: models by the activations' score, act above grad.
    labels = {tick.get_position()[1]: tick.get_text() for tick in ax.get_yticklabels()}
    act = rows[rows.signal == "act"].set_index("model")["effect"]
    top_first = [labels[y] for y in sorted(labels, reverse=True)]
    assert top_first == [f"{m} · {s}" for m in act.sort_values(ascending=False).index for s in SIGNALS]
    for signal in SIGNALS:
        line = next(ln for ln in ax.get_lines() if ln.get_gid() == f"{signal}:mean")
        drawn = {labels[y]: x for x, y in zip(line.get_xdata(), line.get_ydata())}
        expected = rows[rows.signal == signal].set_index("model")["effect"]
        assert drawn == pytest.approx({f"{m} · {signal}": v for m, v in expected.items()}, rel=1e-12)
    filled = next(ln for ln in ax.get_lines() if ln.get_gid() == "act:significant")
    assert len(filled.get_xdata()) == len(act)  # act rows have p_fdr 0.01
    assert len(next(ln for ln in ax.get_lines() if ln.get_gid() == "grad:significant").get_xdata()) == 0
    fig = plot_model_comparison(both, "things_meg_sim")
    assert [a.get_title().split(" ")[0] for a in fig.axes if a.get_title()] == ["temporal"]


# ---------------------------------------------------------------- learning-rule signatures


def _rule_tests() -> pd.DataFrame:
    """Hand-built group rows: grad matches backprop, dfa shows no order, fa fails S1a; act is left out."""
    effects = {  # signal -> test -> (effect, half CI width, p_fdr), the same for both models but shifted
        "act": {"T1": (0.8, 0.1, 0.01), "S1a": (0.9, 0.05, 0.01)},
        "grad": {"T1": (-0.7, 0.2, 0.01), "T2": (0.3, 0.1, 0.02), "S1a": (0.6, 0.2, 0.01), "S1b": (0.5, 0.3, 0.04)},
        "fa": {"T1": (-0.5, 0.3, 0.03), "T2": (0.2, 0.1, 0.2), "S1a": (-0.2, 0.3, 0.9), "S1b": (0.4, 0.2, 0.01)},
        "dfa": {"T1": (0.05, 0.3, 0.6), "T2": (0.1, 0.05, 0.01), "S1a": (0.5, 0.2, 0.01), "S1b": (0.0, 0.2, 0.9)},
    }
    rows = []
    for m, model in enumerate(("resnet50", "vit_small")):
        for signal, tests in effects.items():
            for test, (effect, half, p_fdr) in tests.items():
                effect += 0.05 * m
                rows.append(
                    {
                        "dataset": "ds",
                        "model": model,
                        "signal": signal,
                        "test": test,
                        "effect": effect,
                        "ci_low": effect - half,
                        "ci_high": effect + half,
                        "p_fdr": p_fdr,
                        "n_subjects": 8,
                    }
                )
    return pd.DataFrame(rows)


def _by_gid(ax, gid: str):
    return next(a for a in [*ax.get_lines(), *ax.patches, *ax.texts] if a.get_gid() == gid)


def test_rule_signatures_regions_markers_and_verdicts():
    tests = _rule_tests()
    fig = plot_rule_signatures(tests, "ds")
    grid = fig.axes[0].get_gridspec().get_geometry()
    assert grid == (3, 4) and len(fig.axes) == 12  # rows grad, fa, dfa (no act, no sign); columns T1 T2 S1a S1b
    axes = {
        (s, t): fig.axes[i * 4 + j]
        for i, s in enumerate(("grad", "fa", "dfa"))
        for j, t in enumerate(("T1", "T2", "S1a", "S1b"))
    }
    assert [ax.get_title() for ax in fig.axes[:4]] == ["T1", "T2", "S1a", "S1b"]
    assert axes["dfa", "T1"].get_ylabel().startswith("dfa")

    def region(signal: str, test: str) -> tuple[float, float]:
        box = _by_gid(axes[signal, test], f"prediction:{signal}:{test}").get_bbox()
        return box.x0, box.x1

    lo, hi = axes["grad", "T1"].get_xlim()
    assert region("grad", "T1") == (lo, 0.0) and region("fa", "T1") == (lo, 0.0)  # backprop, fa: T1 < 0
    assert region("grad", "S1a") == (0.0, hi) and region("fa", "S1b") == (0.0, hi)
    for test in ("T1", "S1a", "S1b"):  # dfa: no order in time or space, a narrow band around 0
        dfa_lo, dfa_hi = region("dfa", test)
        assert dfa_lo == -dfa_hi and 0 < dfa_hi < 0.2 * (hi - lo)
    assert region("dfa", "T2")[0] == 0.0 and region("dfa", "T2")[1] == axes["dfa", "T2"].get_xlim()[1]
    # Markers: each model's effect at its row (resnet50 on top), filled only where p_fdr < alpha.
    mean = _by_gid(axes["fa", "S1a"], "fa:S1a:mean")
    rows = tests[(tests.signal == "fa") & (tests.test == "S1a")].set_index("model")
    np.testing.assert_allclose(mean.get_xdata(), rows.loc[["vit_small", "resnet50"], "effect"])
    np.testing.assert_array_equal(mean.get_ydata(), [0.0, 1.0])
    assert len(_by_gid(axes["fa", "S1a"], "fa:S1a:significant").get_xdata()) == 0
    assert len(_by_gid(axes["grad", "T1"], "grad:T1:significant").get_xdata()) == 2
    assert len(_by_gid(axes["dfa", "T1"], "dfa:T1:significant").get_xdata()) == 0
    verdict = {k: _by_gid(ax, f"verdict:{k[0]}:{k[1]}").get_text().split("\n") for k, ax in axes.items()}
    assert verdict["grad", "T1"] == ["predicts < 0", "2/2 CI in region"]
    assert verdict["fa", "S1a"] == ["predicts > 0", "0/2 CI in region"]
    assert verdict["dfa", "T1"] == ["predicts ≈ 0", "2/2 CI in region"]  # the CI covers 0
    assert verdict["dfa", "S1a"] == ["predicts ≈ 0", "0/2 CI in region"]  # a spatial order dfa does not predict
    assert verdict["fa", "T2"] == ["predicts > 0", "2/2 CI in region"]
    # A missing effect (too few ROIs for S1b) is drawn as nothing and said so.
    nan = tests.assign(ci_low=np.where((tests.signal == "grad") & (tests.test == "S1b"), np.nan, tests.ci_low))
    note = _by_gid(plot_rule_signatures(nan, "ds").axes[3], "verdict:grad:S1b").get_text()
    assert note.split("\n")[1] == "no finite CI"
    # A dataset with MEG only has the T columns; a signal without a prediction is refused by name.
    fig = plot_rule_signatures(tests[tests.test.isin(["T1", "T2"])], "ds")
    assert [ax.get_title() for ax in fig.axes[:2]] == ["T1", "T2"] and len(fig.axes) == 6
    with pytest.raises(ValueError, match=r"signal\(s\) \['hebb'\].*known: \['dfa', 'fa', 'grad', 'sign'\]"):
        plot_rule_signatures(pd.concat([tests, tests.assign(signal="hebb")]), "ds")
    with pytest.raises(ValueError, match="no .* rows of a learning signal"):
        plot_rule_signatures(tests[tests.signal == "act"], "ds")


def test_prediction_matched():
    assert prediction_matched("greater", 0.1, 0.5) and not prediction_matched("greater", -0.1, 0.5)
    assert prediction_matched("less", -0.5, -0.1) and not prediction_matched("less", -0.5, 0.0)
    assert prediction_matched("zero", -0.2, 0.3) and not prediction_matched("zero", 0.1, 0.3)
    assert not prediction_matched("zero", np.nan, 0.3)


# ---------------------------------------------------------------- CKA and simulation recovery


def test_cka_grid_matrices_in_depth_order(tables):
    cka = tables["cka"]
    shuffled = cka.sample(frac=1.0, random_state=0)  # layer order must come from the encoding table
    fig = plot_cka_grid(shuffled, tables["encoding"])
    images = {ax.get_images()[0].get_gid(): ax.get_images()[0] for ax in fig.axes if ax.get_images()}
    assert sorted(images) == sorted(f"cka:{m}:{s}" for m in MODELS for s in SIGNALS)
    matrix = images["cka:vit_small:grad"].get_array()
    row = cka[
        (cka.model == "vit_small") & (cka.signal == "grad") & (cka.layer_a == "blocks.1") & (cka.layer_b == "blocks.4")
    ]["cka"].iloc[0]
    assert matrix[1, 4] == matrix[4, 1] == row
    np.testing.assert_array_equal(np.diag(matrix), 1.0)
    many = pd.concat([cka.assign(model=f"m{i}") for i in range(7)], ignore_index=True)
    fig = plot_cka_grid(many)  # 7 models x 2 signals: 3 models a row, 3 rows
    assert sum(bool(ax.get_images()) for ax in fig.axes) == 14
    assert fig.axes[0].get_gridspec().get_geometry() == (3, 6)
    with pytest.raises(ValueError, match=r"cka table lacks column\(s\) \['cka'\]"):
        plot_cka_grid(cka.drop(columns="cka"))


def test_simulation_recovery_points(tables):
    fig = plot_simulation_recovery(tables["truth"], tables["best_layers"], tables["tmax"], "nsd_sim")
    ax_roi = fig.axes[0]
    best = tables["best_layers"]
    rows = best[(best.model == "resnet50") & (best.signal == "act") & (best.hemi == "both")]
    expected = rows.groupby("roi")["best_depth"].mean().loc[list(ROIS)].to_numpy()  # ROIS sorted by depth
    line = _line(ax_roi, "act")
    np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), expected, rtol=1e-12)
    assert any(ln.get_gid() == "identity" for ln in ax_roi.get_lines())
    fig = plot_simulation_recovery(tables["truth"], tables["best_layers"], tables["tmax"], "things_meg_sim")
    tm = tables["tmax"]
    grad = tm[(tm.model == "resnet50") & (tm.signal == "grad")].groupby("depth")["t_max_s"].mean()
    line = _line(fig.axes[1], "grad")
    np.testing.assert_allclose(np.sort(np.asarray(line.get_ydata(), dtype=float)), np.sort(grad.to_numpy()), rtol=1e-12)
    with pytest.raises(ValueError, match="no recovered row"):
        plot_simulation_recovery(
            tables["truth"].assign(source_model="nope"), tables["best_layers"], tables["tmax"], "nsd_sim"
        )
    with pytest.raises(ValueError, match=r"truth table lacks column\(s\) \['latency_s'\]"):
        plot_simulation_recovery(
            tables["truth"].drop(columns="latency_s"), tables["best_layers"], tables["tmax"], "nsd_sim"
        )
