"""Tests of brainprop.figures on synthetic run tables.

2 models, 3 subjects, 6 layers, 6 ROIs, 20 MEG time points, signals act and grad.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.image import imread  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from brainprop import figures  # noqa: E402
from brainprop.contract import validate_table  # noqa: E402
from brainprop.io import write_table  # noqa: E402

MODELS = ("vit_small", "resnet50")
SUBJECTS = ("s01", "s02", "s03")
N_LAYERS = 6
ROIS = {"V1": 0.0, "V2": 9.0, "V3": 17.5, "hV4": 28.0, "LO": 41.0, "FFA": 52.0}
TIMES = np.round(np.linspace(-0.1, 1.23, 20), 3)
SIGNALS = ("act", "grad")


def _encoding_rows(rng: np.random.Generator) -> list[dict]:
    """fMRI rows (hemi both/lh/rh per ROI) and MEG rows (one per time) with planted hierarchies."""
    rows = []
    jitter = {(m, s, subj, roi): rng.normal(0, 0.15)
              for m in MODELS for s in SIGNALS for subj in SUBJECTS for roi in ROIS}
    base = {"timm_name": "x", "noise_ceiling": 0.5, "n_targets": 40, "n_excluded": 0}
    for model in MODELS:
        for signal in SIGNALS:
            for k in range(N_LAYERS):
                depth = k / (N_LAYERS - 1)
                layer = {"model": model, "signal": signal, "layer": f"blocks.{k}", "layer_index": k,
                         "depth": depth, **base}
                for subject in SUBJECTS:
                    for roi, dist in ROIS.items():
                        planted = dist / 52.0 if signal == "act" else 1.0 - dist / 52.0
                        planted += jitter[model, signal, subject, roi]  # subjects differ in best layer
                        amp = 0.4 if signal == "act" else 0.15 + 0.2 * dist / 52.0
                        for hemi in ("both", "lh", "rh"):
                            r = amp * np.exp(-((depth - planted) ** 2) / 0.08) + rng.normal(0, 0.02)
                            # lh/rh rows are off by a constant so a missing hemi filter shows.
                            r += 0.0 if hemi == "both" else 0.3
                            rows.append({**layer, "dataset": "nsd_sim", "modality": "fmri",
                                         "subject": subject, "atlas": "streams", "roi": roi, "hemi": hemi,
                                         "roi_distance_mm": dist, "time": np.nan, "r": r,
                                         "r_normalized": r / np.sqrt(0.5)})
                    peak = 0.08 + 0.3 * depth if signal == "act" else 0.95 - 0.25 * depth
                    amp = 0.3 if signal == "act" else 0.12
                    for t in TIMES:
                        r = amp * np.exp(-((t - peak) ** 2) / (2 * 0.09**2)) + rng.normal(0, 0.01)
                        rows.append({**layer, "dataset": "things_meg_sim", "modality": "meg",
                                     "subject": subject, "atlas": "", "roi": "", "hemi": "",
                                     "roi_distance_mm": np.nan, "time": float(t), "r": r,
                                     "r_normalized": r / np.sqrt(0.5)})
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
        out.append(dict(zip(["dataset", "model", "signal", "subject", "layer_index", "depth"], key),
                        t_max_s=float(t[r / r.max() >= 0.95].mean()), peak_r=float(r.max())))
    return pd.DataFrame(out)


def _hierarchy(best: pd.DataFrame, tm: pd.DataFrame) -> pd.DataFrame:
    """Spatial (best depth vs distance) and temporal (depth vs T_max) Pearson scores per subject."""
    out = []
    for (d, m, s, subj), g in best[best["hemi"] == "both"].groupby(["dataset", "model", "signal", "subject"]):
        out.append({"dataset": d, "modality": "fmri", "model": m, "signal": s, "subject": subj,
                    "score": "spatial", "atlas": "streams", "n_used": len(g), "n_excluded": 0,
                    "value": scipy.stats.pearsonr(g["best_depth"], g["roi_distance_mm"])[0]})
    for (d, m, s, subj), g in tm.groupby(["dataset", "model", "signal", "subject"]):
        out.append({"dataset": d, "modality": "meg", "model": m, "signal": s, "subject": subj,
                    "score": "temporal", "atlas": "", "n_used": len(g), "n_excluded": 0,
                    "value": scipy.stats.pearsonr(g["depth"], g["t_max_s"])[0]})
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    enc = pd.DataFrame(_encoding_rows(np.random.default_rng(0)))
    best = _best_layers(enc)
    tm = _tmax(enc)
    out = {"encoding": enc, "best_layers": best, "tmax": tm, "hierarchy": _hierarchy(best, tm)}
    for name, table in out.items():
        assert validate_table(name, table) == [], name
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

def test_encoding_fmri_panels_series_and_values(tables):
    enc = tables["encoding"]
    fig = figures.plot_encoding_by_layer(enc, "nsd_sim")
    assert len(fig.axes) == len(MODELS) * len(ROIS)
    titles = [ax.get_title() for ax in fig.axes[: len(ROIS)]]
    assert [t.split(" ")[0] for t in titles] == list(ROIS)  # ordered by distance from V1
    for ax in fig.axes:
        for signal in SIGNALS:
            assert _series(ax, signal) == (1, 1)
    # Reference: hemi 'both' rows of one panel, mean and SEM over subjects per layer.
    model_row, roi_col = 1, 3
    model, roi = sorted(MODELS)[model_row], list(ROIS)[roi_col]
    ax = fig.axes[model_row * len(ROIS) + roi_col]
    rows = enc[(enc.dataset == "nsd_sim") & (enc.model == model) & (enc.roi == roi) & (enc.hemi == "both")
               & (enc.signal == "grad")]
    wide = rows.pivot(index="layer_index", columns="subject", values="r").to_numpy()
    np.testing.assert_allclose(_line(ax, "grad").get_ydata(), wide.mean(axis=1), rtol=1e-12)
    band = next(c for c in ax.collections if c.get_gid() == "grad:sem")
    top = band.get_paths()[0].vertices[:, 1].max()
    expected = (wide.mean(axis=1) + scipy.stats.sem(wide, axis=1, ddof=1)).max()
    np.testing.assert_allclose(top, expected, rtol=1e-12)


def test_encoding_meg_is_peak_over_time(tables):
    enc = tables["encoding"]
    fig = figures.plot_encoding_by_layer(enc, "things_meg_sim")
    assert len(fig.axes) == len(MODELS)
    for ax in fig.axes:
        assert all(_series(ax, s) == (1, 1) for s in SIGNALS)
    rows = enc[(enc.dataset == "things_meg_sim") & (enc.model == "resnet50") & (enc.signal == "act")]
    peak = rows.groupby(["layer_index", "subject"])["r"].max().unstack().to_numpy()
    np.testing.assert_allclose(_line(fig.axes[0], "act").get_ydata(), peak.mean(axis=1), rtol=1e-12)


def test_encoding_many_rois_become_levels(tables):
    enc = tables["encoding"]
    fmri = enc[(enc.dataset == "nsd_sim") & (enc.hemi == "both")]
    extra = [fmri.assign(roi=fmri.roi + f"_{i}", roi_distance_mm=fmri.roi_distance_mm + i) for i in range(2)]
    many = pd.concat(extra, ignore_index=True)  # 12 ROIs
    fig = figures.plot_encoding_by_layer(many, "nsd_sim")
    assert len(fig.axes) == len(MODELS) * 3
    levels = {"early": ["V1_0", "V1_1", "V2_0"], "late": ["FFA_0", "LO_1"], "absent": ["MT"]}
    fig = figures.plot_encoding_by_layer(many, "nsd_sim", roi_levels=levels)
    assert [ax.get_title().split(":")[0] for ax in fig.axes[:2]] == ["early", "late"]
    rows = many[(many.model == "resnet50") & (many.signal == "act") & many.roi.isin(levels["late"])]
    per_subject = rows.groupby(["layer_index", "subject"])["r"].mean().unstack().to_numpy()
    np.testing.assert_allclose(_line(fig.axes[1], "act").get_ydata(), per_subject.mean(axis=1), rtol=1e-12)


def test_extra_signal_gets_its_own_style(tables):
    enc = tables["encoding"]
    fa = enc[(enc.dataset == "things_meg_sim") & (enc.signal == "grad")].assign(signal="feedback_alignment")
    fig = figures.plot_encoding_by_layer(pd.concat([enc, fa]), "things_meg_sim")
    colors = {s: _line(fig.axes[0], s).get_color() for s in (*SIGNALS, "feedback_alignment")}
    assert colors["act"] == "#1b6ca8" and colors["grad"] == "#d1495b"
    assert len(set(colors.values())) == 3


# ---------------------------------------------------------------- spatial hierarchy

def test_spatial_panels_series_labels_and_scores(tables):
    fig = figures.plot_spatial_hierarchy(tables["best_layers"], tables["hierarchy"], "nsd_sim")
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
            assert not any(box.overlaps(other) for other in boxes[i + 1:])


def test_spatial_labels_stay_apart_when_rois_crowd(tables):
    crowded = {f"ROI{i}": float(i) for i in range(8)} | {"far": 50.0}
    rows = [{"dataset": "d", "model": "m", "signal": sig, "subject": subj, "atlas": "a", "roi": roi,
             "hemi": "both", "best_depth": 0.5 + 0.02 * i, "best_r": 0.2, "roi_distance_mm": dist}
            for sig in SIGNALS for subj in SUBJECTS for i, (roi, dist) in enumerate(crowded.items())]
    hier = tables["hierarchy"].assign(dataset="d", model="m")
    fig = figures.plot_spatial_hierarchy(pd.DataFrame(rows), hier, "d")
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts if str(t.get_gid()).startswith("roi:")]
    assert len(boxes) == len(crowded)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    markers = ax.transData.transform(np.vstack([_line(ax, s).get_xydata() for s in SIGNALS]))
    assert not any(box.contains(x, y) for box in boxes for x, y in markers)


def test_spatial_points_are_subject_means_by_distance(tables):
    best = tables["best_layers"]
    fig = figures.plot_spatial_hierarchy(best, tables["hierarchy"], "nsd_sim", min_best_r=None)
    line = _line(fig.axes[1], "act")  # vit_small, sorted second
    rows = best[(best.model == "vit_small") & (best.signal == "act") & (best.hemi == "both")]
    expected = rows.groupby("roi")["best_depth"].mean().loc[list(ROIS)].to_numpy()
    np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)
    x = np.asarray(line.get_xdata(), dtype=float)
    np.testing.assert_allclose(x - x[0], np.array(list(ROIS.values())), atol=1e-9)  # dodge is a shift


def test_spatial_distances_from_mapping(tables):
    best = tables["best_layers"].drop(columns="roi_distance_mm")
    with pytest.raises(ValueError, match="roi_distance_mm"):
        figures.plot_spatial_hierarchy(best, tables["hierarchy"], "nsd_sim")
    with pytest.raises(ValueError, match=r"no roi_distance_mm for ROI\(s\) \['FFA'\]"):
        figures.plot_spatial_hierarchy(best, tables["hierarchy"], "nsd_sim",
                                       roi_distance_mm={k: v for k, v in ROIS.items() if k != "FFA"})
    fig = figures.plot_spatial_hierarchy(best, tables["hierarchy"], "nsd_sim", roi_distance_mm=ROIS)
    assert len(fig.axes) == len(MODELS)


# ---------------------------------------------------------------- T_max

def test_tmax_panels_series_and_values(tables):
    tm = tables["tmax"]
    fig = figures.plot_tmax(tm, tables["hierarchy"], "things_meg_sim")
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
    fig = figures.plot_tmax(tm, tables["hierarchy"], "things_meg_sim")
    assert len(_line(fig.axes[0], "grad").get_xdata()) == N_LAYERS - 1
    assert len(_line(fig.axes[0], "act").get_xdata()) == N_LAYERS
    tm.loc[tm.model == "resnet50", "peak_r"] = -0.01  # a model with no usable layer keeps its panel
    fig = figures.plot_tmax(tm, tables["hierarchy"], "things_meg_sim")
    assert len(fig.axes) == len(MODELS) and fig.axes[0].get_lines() == []
    assert [t.get_text() for t in fig.axes[0].texts] == ["no layer with peak r > 0.0"]


def test_spatial_model_without_positive_roi_keeps_its_panel(tables):
    best = tables["best_layers"].copy()
    best.loc[best.model == "resnet50", "best_r"] = -0.1
    fig = figures.plot_spatial_hierarchy(best, tables["hierarchy"], "nsd_sim")
    assert len(fig.axes) == len(MODELS)
    assert [t.get_text() for t in fig.axes[0].texts] == ["no ROI with best r > 0.0"]
    assert len([t for t in fig.axes[1].texts if str(t.get_gid()).startswith("roi:")]) == len(ROIS)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, table, column", [
    (lambda t: figures.plot_encoding_by_layer(t["encoding"], "nsd_sim"), "encoding", "roi_distance_mm"),
    (lambda t: figures.plot_spatial_hierarchy(t["best_layers"], t["hierarchy"], "nsd_sim"),
     "best_layers", "best_depth"),
    (lambda t: figures.plot_spatial_hierarchy(t["best_layers"], t["hierarchy"], "nsd_sim"),
     "hierarchy", "value"),
    (lambda t: figures.plot_tmax(t["tmax"], t["hierarchy"], "things_meg_sim"), "tmax", "t_max_s"),
])
def test_missing_column_and_empty_table_raise(tables, call, table, column):
    broken = {**tables, table: tables[table].drop(columns=column)}
    with pytest.raises(ValueError, match=rf"{table} table lacks column\(s\) \['{column}'\]"):
        call(broken)
    empty = {**tables, table: tables[table].iloc[:0]}
    with pytest.raises(ValueError, match=rf"{table} table is empty"):
        call(empty)


def test_unknown_dataset_and_missing_hemi_raise(tables):
    with pytest.raises(ValueError, match=r"no rows for dataset 'nope'.*nsd_sim"):
        figures.plot_encoding_by_layer(tables["encoding"], "nope")
    lh_only = tables["encoding"][tables["encoding"].hemi != "both"]
    with pytest.raises(ValueError, match="hemi == 'both'"):
        figures.plot_encoding_by_layer(lh_only, "nsd_sim")
    with pytest.raises(ValueError, match="no rows for dataset 'nsd_sim'"):
        figures.plot_tmax(tables["tmax"], tables["hierarchy"], "nsd_sim")


# ---------------------------------------------------------------- files

def test_save_figure_writes_atomically_and_closes(tmp_path):
    fig, ax = plt.subplots(figsize=(2.0, 1.0))
    ax.plot([0, 1], [0, 1])
    paths = figures.save_figure(fig, tmp_path / "sub" / "plot.v1")
    assert paths == [tmp_path / "sub" / "plot.v1.png", tmp_path / "sub" / "plot.v1.svg"]
    assert imread(paths[0]).shape[:2] == (150, 300)  # 150 dpi
    assert paths[1].read_text().lstrip().startswith("<?xml")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["plot.v1.png", "plot.v1.svg"]
    assert not plt.fignum_exists(fig.number)
    fig2 = plt.figure()
    with pytest.raises(ValueError, match=r"unknown figure format\(s\) \['jpeg'\]"):
        figures.save_figure(fig2, tmp_path / "x", ("png", "jpeg"))
    assert not plt.fignum_exists(fig2.number) and not list(tmp_path.glob("x*"))


def test_figure_names():
    names = figures.figure_names({"things_meg_sim": {"meg"}, "nsd_sim": {"fmri"}}, formats=("png",))
    assert names == ["encoding_by_layer_nsd_sim.png", "spatial_hierarchy_nsd_sim.png",
                     "encoding_by_layer_things_meg_sim.png", "tmax_things_meg_sim.png"]
    with pytest.raises(ValueError, match=r"modality \['eeg'\]"):
        figures.figure_names({"x": {"eeg"}})


def test_make_figures_writes_the_announced_files(tables, tmp_path):
    for name, table in tables.items():
        write_table(tmp_path / "tables" / f"{name}.parquet", table)
    paths = figures.make_figures(tmp_path / "tables", tmp_path / "figures", formats=("png",))
    expected = figures.figure_names({"nsd_sim": {"fmri"}, "things_meg_sim": {"meg"}}, formats=("png",))
    assert sorted(p.name for p in paths) == sorted(expected)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(expected)
    assert all(p.stat().st_size > 10_000 for p in paths)
    assert plt.get_fignums() == []
