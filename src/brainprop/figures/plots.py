"""Figures of a run's tables: encoding by layer, MEG time courses, hierarchies, models, rule signatures, CKA, recovery.

Every figure is drawn from the results tables (docs/results.md) with one style: activations
blue (solid line, circles), gradients red (dashed line, squares), layer depth on a shared
colormap (viridis, whose lightness rises with depth, so it reads in greyscale), units on every
axis. Per-target brain maps and MEG topomaps are in `brainprop.maps`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from ..io import atomic_path, read_table
from ..stats.group import RULE_PREDICTIONS
from .catalog import FIGURES, MODALITIES, figure_entries, figure_names

__all__ = [
    "DEPTH_CMAP",
    "FIGURES",
    "SIGNAL_STYLES",
    "cka_matrix",
    "depth_colors",
    "figure_entries",
    "figure_names",
    "make_figures",
    "plot_cka_grid",
    "plot_encoding_by_layer",
    "plot_meg_timecourses",
    "plot_model_comparison",
    "plot_rule_signatures",
    "plot_simulation_recovery",
    "plot_spatial_hierarchy",
    "plot_tmax",
    "prediction_matched",
    "save_figure",
    "signal_styles",
    "tests_html",
    "write_tests_html",
]

# Fixed colours for the two signals every run has, with marker and line style so they read in greyscale.
SIGNAL_STYLES: dict[str, dict] = {
    "act": {"color": "#1b6ca8", "marker": "o", "linestyle": "-"},
    "grad": {"color": "#d1495b", "marker": "s", "linestyle": "--"},
}
# Further signals (other learning rules) take these in order of their sorted names.
_EXTRA_STYLES: tuple[dict, ...] = (
    {"color": "#2a9d8f", "marker": "^", "linestyle": "-."},
    {"color": "#7b5ea7", "marker": "D", "linestyle": ":"},
    {"color": "#e09f3e", "marker": "v", "linestyle": (0, (5, 1, 1, 1, 1, 1))},
    {"color": "#555555", "marker": "P", "linestyle": (0, (1, 1))},
)
# Layer depth in [0, 1] on every figure that colours by depth (lightness rises with depth).
DEPTH_CMAP = "viridis"
# Colour of the brain's reference lines (end of the forward sweep, backprop prediction, identity).
REFERENCE_COLOR = "0.35"

FORMATS: dict[str, dict] = {
    "png": {"dpi": 150},
    "svg": {"metadata": {"Date": None}},
    "pdf": {"metadata": {"CreationDate": None}},
}
ROI_LEVEL_NAMES = ("early", "intermediate", "high")

# Columns each plot reads (a subset of brainprop.contract.TABLES).
_ENCODING_COLUMNS = (
    "dataset",
    "modality",
    "model",
    "signal",
    "layer_index",
    "depth",
    "subject",
    "atlas",
    "roi",
    "hemi",
    "roi_distance_mm",
    "time",
)
_BEST_COLUMNS = ("dataset", "model", "signal", "subject", "atlas", "roi", "hemi", "best_depth", "best_r")
_TMAX_COLUMNS = ("dataset", "model", "signal", "subject", "layer_index", "depth", "t_max_s", "peak_r")
_HIER_COLUMNS = ("dataset", "model", "signal", "subject", "score", "atlas", "value")
_TESTS_COLUMNS = ("dataset", "model", "signal", "test", "effect", "ci_low", "ci_high", "p_fdr", "n_subjects")
_CKA_COLUMNS = ("model", "imageset", "signal", "layer_a", "layer_b", "cka")
_TRUTH_COLUMNS = ("dataset", "subject", "source_model", "kind", "roi", "signal", "depth", "latency_s")

_VALUE_LABELS = {"r": "Pearson r", "r_normalized": "noise-normalised r"}
_DEPTH_LABEL = "layer depth (0 = first, 1 = last)"
# Test rows that carry each hierarchy score's group mean and bootstrap CI (tests.parquet).
_SCORE_TESTS = {"spatial": "S1a", "temporal": "T1"}
_RC = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "brainprop",
}


# ---------------------------------------------------------------- checks and statistics


def _check_table(table: pd.DataFrame, name: str, columns: Iterable[str]) -> None:
    """Raise ValueError when `table` is empty or lacks one of `columns`."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"{name} table lacks column(s) {missing}; expected the columns of brainprop.contract.TABLES['{name}']"
        )
    if len(table) == 0:
        raise ValueError(f"{name} table is empty; expected at least one row")


def _select_dataset(table: pd.DataFrame, name: str, dataset: str) -> pd.DataFrame:
    """Rows of `table` for `dataset`, or a ValueError naming the datasets present."""
    rows = table[table["dataset"] == dataset]
    if rows.empty:
        present = sorted(table["dataset"].unique())
        raise ValueError(f"{name} table has no rows for dataset {dataset!r}; datasets present: {present}")
    return rows


def _figure_name(dataset: str, rows: pd.DataFrame) -> str:
    """'dataset · model' when `rows` hold one model, else the dataset."""
    models = rows["model"].unique()
    return f"{dataset} · {models[0]}" if len(models) == 1 else dataset


def _mean_sem(rows: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Mean, SEM (ddof=1) and n over subjects of `value` per `keys`, in float64.

    Several rows of one subject within a key (ROIs of a level) are averaged first.
    """
    values = rows.assign(_v=rows[value].astype("float64"))
    per_subject = values.groupby([*keys, "subject"], sort=True)["_v"].mean()
    groups = per_subject.groupby(level=keys, sort=True)
    out = pd.DataFrame({"mean": groups.mean(), "sem": groups.std(ddof=1), "n": groups.count()})
    out["sem"] = out["sem"] / np.sqrt(out["n"])
    return out.reset_index()


def _ci_name(alpha: float) -> str:
    """Name of the tests table's bootstrap interval, whose level is 1 − `stats.alpha`."""
    return f"{100 * (1 - alpha):g}% CI"


def _score_label(
    hier: pd.DataFrame, model: str, signal: str, score: str, tests: pd.DataFrame | None = None, alpha: float = 0.05
) -> str:
    """Legend text for one signal: its mean ± SEM hierarchy score over subjects, and the tests' CI."""
    rows = hier[(hier["model"] == model) & (hier["signal"] == signal) & (hier["score"] == score)]
    values = rows["value"].to_numpy(dtype="float64")
    values = values[np.isfinite(values)]
    if values.size == 0:
        return f"{signal}: {score} score n/a"
    sem = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else np.nan
    spread = f" ± {sem:.2f}" if np.isfinite(sem) else ""
    ci = ""
    if tests is not None:
        row = tests[(tests["model"] == model) & (tests["signal"] == signal) & (tests["test"] == _SCORE_TESTS[score])]
        if len(row) == 1 and np.isfinite(row[["ci_low", "ci_high"]].to_numpy(dtype="float64")).all():
            ci = f"\n{_ci_name(alpha)} [{row['ci_low'].iloc[0]:+.2f}, {row['ci_high'].iloc[0]:+.2f}]"
    return f"{signal}: {score} score {values.mean():+.2f}{spread} (n={values.size}){ci}"


# ---------------------------------------------------------------- styles and drawing helpers


def _signal_order(signals: Iterable[str]) -> list[str]:
    """Signals with act and grad first, then the others sorted by name."""
    signals = set(signals)
    return [s for s in SIGNAL_STYLES if s in signals] + sorted(signals - set(SIGNAL_STYLES))


def signal_styles(signals: Iterable[str]) -> dict[str, dict]:
    """Colour, marker and line style of each signal (act and grad fixed, others from a palette)."""
    styles, extra = {}, 0
    for signal in _signal_order(signals):
        if signal in SIGNAL_STYLES:
            styles[signal] = SIGNAL_STYLES[signal]
        else:
            styles[signal] = _EXTRA_STYLES[extra % len(_EXTRA_STYLES)]
            extra += 1
    return styles


def _draw_curve(ax: Axes, stats: pd.DataFrame, x: str, signal: str, style: dict, label: str) -> None:
    """Plot a mean line with markers and a ± SEM band; artists carry gid '<signal>:mean' / ':sem'."""
    stats = stats.sort_values(x)
    xs = stats[x].to_numpy(dtype="float64")
    mean = stats["mean"].to_numpy(dtype="float64")
    sem = np.nan_to_num(stats["sem"].to_numpy(dtype="float64"))
    ax.fill_between(xs, mean - sem, mean + sem, color=style["color"], alpha=0.2, linewidth=0, gid=f"{signal}:sem")
    ax.plot(
        xs,
        mean,
        color=style["color"],
        marker=style["marker"],
        linestyle=style["linestyle"],
        markersize=4,
        linewidth=1.5,
        label=label,
        gid=f"{signal}:mean",
    )


def _depth_axis(ax: Axes) -> None:
    """Depth runs over [0, 1] with three readable ticks."""
    ax.set_xlim(-0.04, 1.04)
    ax.set_xticks([0.0, 0.5, 1.0])


def _legend_below(ax: Axes, empty_note: str) -> None:
    """Legend under the panel, or a note in it when nothing was drawn."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), frameon=False)
    else:
        ax.text(0.5, 0.5, empty_note, transform=ax.transAxes, ha="center", va="center", color="0.4")


def _panel_grid(n_panels: int, max_cols: int = 3, size: tuple[float, float] = (4.2, 3.4)):
    """A figure with exactly `n_panels` axes, at most `max_cols` per row."""
    ncols = min(n_panels, max_cols)
    nrows = -(-n_panels // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(max(5.6, size[0] * ncols), size[1] * nrows + 0.6), squeeze=False, layout="constrained"
    )
    for ax in axes.ravel()[n_panels:]:
        ax.remove()
    return fig, list(axes.ravel()[:n_panels])


# ---------------------------------------------------------------- encoding by layer


def _levels_by_distance(distance: pd.Series) -> dict[str, list[str]]:
    """Split ROIs sorted by distance from the reference ROI into early / intermediate / high thirds."""
    groups = np.array_split(np.arange(len(distance)), len(ROI_LEVEL_NAMES))
    return {name: list(distance.index[idx]) for name, idx in zip(ROI_LEVEL_NAMES, groups) if len(idx)}


def _fmri_panels(rows: pd.DataFrame, roi_levels: Mapping[str, Sequence[str]] | None) -> list[tuple[str, pd.DataFrame]]:
    """One panel per ROI level (hemi 'both'): the config's `roi_levels`, or distance thirds."""
    rows = rows[rows["hemi"] == "both"]
    if rows.empty:
        raise ValueError("encoding table has fMRI rows but none with hemi == 'both'")
    distance = rows.groupby("roi")["roi_distance_mm"].mean().sort_values(kind="stable")
    levels = roi_levels if roi_levels else _levels_by_distance(distance)
    panels = []
    for level, rois in levels.items():
        present = [r for r in rois if r in distance.index]
        if present:
            names = ", ".join(present) if len(present) <= 4 else f"{len(present)} ROIs"
            span = f"{distance[present].min():.0f}–{distance[present].max():.0f} mm from V1"
            panels.append((f"fMRI {level}: {names}\n({span})", rows[rows["roi"].isin(present)]))
    if not panels:
        raise ValueError(f"roi_levels {dict(levels)} name none of the ROIs present: {list(distance.index)}")
    return panels


def _meg_panels(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One panel: each subject's peak over time of r(t) per layer (values peaked column by column)."""
    keys = ["model", "signal", "layer_index", "depth", "subject"]
    values = [v for v in ("r", "r_normalized") if v in rows.columns]
    per_time = rows.groupby([*keys, "time"])[values].mean()
    peak = per_time.groupby(level=keys).max().reset_index()
    return [("MEG: peak of r(t) over time\n(all sensors)", peak)]


def _value_rows(rows: pd.DataFrame, values: Sequence[str]) -> list[str]:
    """The requested values that have at least one finite entry (r_normalized needs a noise ceiling)."""
    present = [v for v in values if np.isfinite(rows[v].to_numpy(dtype="float64")).any()]
    if not present:
        raise ValueError(f"encoding rows have no finite value in column(s) {list(values)}")
    return present


def plot_encoding_by_layer(
    enc: pd.DataFrame,
    dataset: str,
    *,
    values: Sequence[str] = ("r", "r_normalized"),
    roi_levels: Mapping[str, Sequence[str]] | None = None,
) -> Figure:
    """Encoding score against layer depth per signal, mean ± SEM over subjects.

    Columns are fMRI ROI levels (hemi 'both'; `roi_levels` maps level -> ROI names, default
    the ROIs split into distance thirds; a subject's ROIs of a level are averaged first) and,
    for MEG, each layer's peak over time of the sensor-averaged r(t). Rows are models × `values`
    (r, and noise-normalised r where a noise ceiling exists).
    """
    _check_table(enc, "encoding", (*_ENCODING_COLUMNS, *values))
    rows = _select_dataset(enc, "encoding", dataset)
    panels = []
    if (rows["modality"] == "fmri").any():
        panels += _fmri_panels(rows[rows["modality"] == "fmri"], roi_levels)
    if (rows["modality"] == "meg").any():
        panels += _meg_panels(rows[rows["modality"] == "meg"])
    if not panels:
        raise ValueError(
            f"encoding rows of {dataset!r} have modality {sorted(rows['modality'].unique())}, "
            f"expected one of {list(MODALITIES)}"
        )
    present = _value_rows(rows, values)
    grid = [(model, value) for model in sorted(rows["model"].unique()) for value in present]
    styles = signal_styles(rows["signal"].unique())
    with plt.rc_context(_RC):
        # y axes are not shared: MEG and fMRI scores, and early and late ROIs, differ in range.
        fig, axes = plt.subplots(
            len(grid),
            len(panels),
            sharex=True,
            squeeze=False,
            figsize=(1.0 + 2.9 * len(panels), 1.3 + 2.0 * len(grid)),
            layout="constrained",
        )
        for j, (title, panel) in enumerate(panels):
            stats = {v: _mean_sem(panel, ["model", "signal", "layer_index", "depth"], v) for v in present}
            for i, (model, value) in enumerate(grid):
                ax = axes[i, j]
                ax.axhline(0.0, color="0.6", linewidth=0.6, zorder=0)
                for signal, style in styles.items():
                    curve = stats[value][(stats[value]["model"] == model) & (stats[value]["signal"] == signal)]
                    if not curve.empty:
                        _draw_curve(ax, curve, "depth", signal, style, signal)
                _depth_axis(ax)
                if i == 0:
                    ax.set_title(title)
                if j == 0:
                    ax.set_ylabel(f"{model}\n{_VALUE_LABELS.get(value, value)}")
                if i == len(grid) - 1:
                    ax.set_xlabel(_DEPTH_LABEL)
        n_subjects = rows["subject"].nunique()
        fig.suptitle(f"{_figure_name(dataset, rows)}: encoding by layer (mean ± SEM over {n_subjects} subjects)")
        handles = [
            plt.Line2D([], [], color=s["color"], marker=s["marker"], linestyle=s["linestyle"]) for s in styles.values()
        ]
        fig.legend(handles, list(styles), loc="outside lower center", ncols=len(styles), frameon=False)
    return fig


# ---------------------------------------------------------------- MEG time courses


def depth_colors(depths: Iterable[float]) -> list[tuple]:
    """RGBA colour of each depth on the shared depth colormap (0 = first layer, 1 = last)."""
    cmap, norm = plt.get_cmap(DEPTH_CMAP), Normalize(0.0, 1.0)
    return [cmap(norm(float(d))) for d in depths]


def _depth_colorbar(fig: Figure, axes: Sequence[Axes], label: str = _DEPTH_LABEL) -> None:
    """One colorbar of the shared depth colormap beside `axes`."""
    mappable = plt.cm.ScalarMappable(norm=Normalize(0.0, 1.0), cmap=DEPTH_CMAP)
    bar = fig.colorbar(mappable, ax=list(axes), shrink=0.85, aspect=30, pad=0.02)
    bar.set_label(label)
    bar.set_ticks([0.0, 0.5, 1.0])


def plot_meg_timecourses(enc: pd.DataFrame, dataset: str, *, value: str = "r") -> Figure:
    """Sensor-averaged r(t) of every layer, coloured by depth, mean over subjects.

    Rows are models, columns signals, all on one time axis (s after image onset) and, per
    model, one y axis, so activations and gradients compare directly.
    """
    _check_table(enc, "encoding", (*_ENCODING_COLUMNS, value))
    rows = _select_dataset(enc, "encoding", dataset)
    rows = rows[rows["modality"] == "meg"]
    if rows.empty:
        raise ValueError(f"encoding table has no MEG rows (modality == 'meg') for dataset {dataset!r}")
    models = sorted(rows["model"].unique())
    signals = _signal_order(rows["signal"].unique())
    stats = _mean_sem(rows, ["model", "signal", "layer_index", "depth", "time"], value)
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(
            len(models),
            len(signals),
            sharex=True,
            sharey="row",
            squeeze=False,
            figsize=(1.2 + 3.6 * len(signals), 1.0 + 2.3 * len(models)),
            layout="constrained",
        )
        for i, model in enumerate(models):
            for j, signal in enumerate(signals):
                ax = axes[i, j]
                ax.axhline(0.0, color="0.6", linewidth=0.6, zorder=0)
                ax.axvline(0.0, color="0.6", linewidth=0.6, linestyle=":", zorder=0)
                curves = stats[(stats["model"] == model) & (stats["signal"] == signal)]
                for (k, depth), curve in curves.groupby(["layer_index", "depth"], sort=True):
                    curve = curve.sort_values("time")
                    ax.plot(
                        curve["time"],
                        curve["mean"],
                        color=depth_colors([depth])[0],
                        linewidth=1.2,
                        gid=f"{signal}:layer{int(k)}",
                    )
                ax.set_title(f"{model} · {signal}")
                if j == 0:
                    ax.set_ylabel(f"{_VALUE_LABELS.get(value, value)}\n(mean over sensors)")
                if i == len(models) - 1:
                    ax.set_xlabel("time after image onset (s)")
        _depth_colorbar(fig, axes.ravel())
        fig.suptitle(
            f"{_figure_name(dataset, rows)}: MEG encoding time course per layer "
            f"(mean over {rows['subject'].nunique()} subjects)"
        )
    return fig


# ---------------------------------------------------------------- spatial hierarchy


def _spatial_rows(best: pd.DataFrame, hier: pd.DataFrame, dataset: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Best-layer rows (hemi 'both', the spatial score's atlas) and spatial-score rows of `dataset`."""
    rows = _select_dataset(best, "best_layers", dataset)
    rows = rows[rows["hemi"] == "both"]
    if rows.empty:
        raise ValueError(f"best_layers table has no rows with hemi == 'both' for dataset {dataset!r}")
    scores = hier[(hier["dataset"] == dataset) & (hier["score"] == "spatial")]
    atlases = set(scores["atlas"]) & set(rows["atlas"])
    if len(atlases) == 1:
        rows = rows[rows["atlas"] == atlases.pop()]
    return rows, scores


def _roi_distances(rows: pd.DataFrame, roi_distance_mm: Mapping[str, float] | None) -> pd.Series:
    """Distance from the reference ROI (mm) of every ROI in `rows`."""
    if roi_distance_mm is None:
        if "roi_distance_mm" not in rows.columns:
            raise ValueError(
                "best_layers table lacks column 'roi_distance_mm' and no roi_distance_mm "
                "mapping was given; pass the distances from the encoding table"
            )
        distance = rows.groupby("roi")["roi_distance_mm"].mean()
    else:
        distance = pd.Series({k: float(v) for k, v in roi_distance_mm.items()}, dtype="float64")
    missing = sorted(set(rows["roi"]) - set(distance.dropna().index))
    if missing:
        raise ValueError(f"no roi_distance_mm for ROI(s) {missing}; expected a distance for every ROI")
    return distance.loc[sorted(set(rows["roi"]))]


def _distance_label(distance: pd.Series) -> str:
    """X-axis label naming the reference ROI when one ROI sits at 0 mm."""
    reference = distance.index[distance.to_numpy() == 0.0]
    name = reference[0] if len(reference) == 1 else "the reference ROI"
    return f"ROI centroid distance from {name} (mm)"


def _obstacles(ax: Axes) -> list[Bbox]:
    """Display-space boxes of the plotted markers and error bars (labels must avoid them)."""
    boxes = []
    for line in ax.get_lines():
        if str(line.get_gid()).endswith(":mean"):
            for px, py in ax.transData.transform(np.asarray(line.get_xydata(), dtype="float64")):
                boxes.append(Bbox.from_extents(px - 4, py - 4, px + 4, py + 4))
    for coll in ax.collections:
        if str(coll.get_gid()).endswith(":sem"):
            for seg in coll.get_segments():
                (x0, y0), (x1, y1) = ax.transData.transform(np.asarray(seg, dtype="float64"))[[0, -1]]
                boxes.append(Bbox.from_extents(min(x0, x1) - 2, min(y0, y1), max(x0, x1) + 2, max(y0, y1)))
    return boxes


# Label offsets (points) tried in order: near the point first, then further out.
_LABEL_OFFSETS = [
    (dx * d, dy * d, ha, va)
    for d in (7, 14, 22, 32)
    for dx, dy, ha, va in (
        (0, 1, "center", "bottom"),
        (1, 0.3, "left", "bottom"),
        (-1, 0.3, "right", "bottom"),
        (0, -1, "center", "top"),
        (1, -0.3, "left", "top"),
        (-1, -0.3, "right", "top"),
    )
]


def _place(text: Text, offset: tuple, renderer) -> Bbox:
    """Move an annotation to `offset` (dx, dy points, ha, va); return its text's display box."""
    dx, dy, ha, va = offset
    text.xyann = (dx, dy)
    text.set_horizontalalignment(ha)
    text.set_verticalalignment(va)
    text.update_positions(renderer)
    # Text's own extent: the annotation's would include the leader line, which touches its point.
    return Text.get_window_extent(text, renderer).expanded(1.06, 1.15)


def _inside(box: Bbox, frame: Bbox) -> bool:
    """Whether `box` lies within `frame`."""
    return frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1


def _label_points(ax: Axes, anchors: pd.DataFrame) -> list[Text]:
    """Label each anchor (roi, x, y) with its name, at the first offset clear of labels, markers and edges."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = _obstacles(ax)
    texts = []
    for roi, x, y in anchors[["roi", "x", "y"]].itertuples(index=False):
        text = ax.annotate(
            roi,
            (x, y),
            xytext=(0, 0),
            textcoords="offset points",
            fontsize=8,
            gid=f"roi:{roi}",
            arrowprops={"arrowstyle": "-", "color": "0.55", "linewidth": 0.5, "shrinkA": 0, "shrinkB": 4},
        )
        for offset in _LABEL_OFFSETS:
            box = _place(text, offset, renderer)
            if _inside(box, frame) and not any(box.overlaps(b) for b in taken):
                break
        else:  # nowhere clear: the nearest position
            box = _place(text, _LABEL_OFFSETS[0], renderer)
        taken.append(box)
        texts.append(text)
    return texts


def _spatial_panel(
    ax: Axes,
    rows: pd.DataFrame,
    distance: pd.Series,
    styles: dict[str, dict],
    labels: dict[str, str],
    min_best_r: float | None,
) -> pd.DataFrame:
    """Draw best depth vs ROI distance per signal on `ax`; return label anchors (roi, x, y)."""
    if min_best_r is not None:
        rows = rows[rows["best_r"] > min_best_r]
    stats = _mean_sem(rows, ["signal", "roi"], "best_depth")
    stats["x"] = stats["roi"].map(distance).astype("float64")
    span = float(np.ptp(distance.to_numpy())) or 1.0
    present = [s for s in styles if s in set(stats["signal"])]
    for k, signal in enumerate(present):
        style, curve = styles[signal], stats[stats["signal"] == signal].sort_values("x")
        dodge = (k - (len(present) - 1) / 2) * 0.012 * span
        xs, mean = curve["x"].to_numpy() + dodge, curve["mean"].to_numpy()
        bars = ax.errorbar(
            xs,
            mean,
            yerr=np.nan_to_num(curve["sem"].to_numpy()),
            color=style["color"],
            marker=style["marker"],
            linestyle="none",
            markersize=5,
            capsize=2,
            elinewidth=1,
            label=labels[signal],
        )
        bars.lines[0].set_gid(f"{signal}:mean")
        for coll in bars.lines[2]:
            coll.set_gid(f"{signal}:sem")
        if len(xs) >= 2 and np.ptp(xs) > 0:
            slope, intercept = np.polyfit(xs, mean, 1)
            grid = np.array([distance.min(), distance.max()], dtype="float64")
            ax.plot(
                grid,
                intercept + slope * grid,
                color=style["color"],
                linestyle=style["linestyle"],
                linewidth=1,
                alpha=0.7,
                gid=f"{signal}:fit",
            )
    top = (stats["mean"] + stats["sem"].fillna(0.0)).groupby(stats["roi"]).max()
    return pd.DataFrame({"roi": top.index, "x": distance[top.index].to_numpy(), "y": top.to_numpy()})


def _dataset_tests(tests: pd.DataFrame | None, dataset: str) -> pd.DataFrame | None:
    """The tests rows of `dataset` (None passes through), after a column check."""
    if tests is None:
        return None
    _check_table(tests, "tests", _TESTS_COLUMNS)
    return tests[tests["dataset"] == dataset]


def plot_spatial_hierarchy(
    best: pd.DataFrame,
    hier: pd.DataFrame,
    dataset: str,
    *,
    tests: pd.DataFrame | None = None,
    alpha: float = 0.05,
    roi_distance_mm: Mapping[str, float] | None = None,
    min_best_r: float | None = 0.0,
) -> Figure:
    """Best layer depth (mean ± SEM over subjects) against ROI distance from V1, one panel per model.

    Distances come from `roi_distance_mm` (ROI -> mm) or a `roi_distance_mm` column of `best`.
    Subjects whose best r for an ROI is not above `min_best_r` are left out of that ROI's mean,
    as the spatial score leaves them out (None keeps all). Dashed/solid lines are least-squares
    fits through the ROI means; the legend gives each signal's spatial score over subjects and,
    with `tests`, the bootstrap CI of its S1a row (level 1 − `alpha`, as the group stage computes it).
    """
    _check_table(best, "best_layers", _BEST_COLUMNS)
    _check_table(hier, "hierarchy", _HIER_COLUMNS)
    tests = _dataset_tests(tests, dataset)
    rows, scores = _spatial_rows(best, hier, dataset)
    distance = _roi_distances(rows, roi_distance_mm)
    models = sorted(rows["model"].unique())
    styles = signal_styles(rows["signal"].unique())
    with plt.rc_context(_RC):
        fig, axes = _panel_grid(len(models))
        anchors = {}
        for ax, model in zip(axes, models):
            labels = {s: _score_label(scores, model, s, "spatial", tests, alpha) for s in styles}
            anchors[model] = _spatial_panel(ax, rows[rows["model"] == model], distance, styles, labels, min_best_r)
            pad = 0.06 * (float(np.ptp(distance.to_numpy())) or 1.0)
            ax.set_xlim(distance.min() - pad, distance.max() + pad)
            ax.set_ylim(-0.08, 1.15)
            ax.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0])
            ax.set_xlabel(_distance_label(distance))
            ax.set_ylabel(f"best {_DEPTH_LABEL}")
            ax.set_title(f"{dataset} · {model}")
            _legend_below(ax, f"no ROI with best r > {min_best_r}")
        fig.suptitle(
            f"{_figure_name(dataset, rows)}: best layer per ROI\n(mean ± SEM over {rows['subject'].nunique()} subjects)"
        )
        # Labels are placed in display space, so the layout must be final first.
        fig.canvas.draw()
        fig.set_layout_engine("none")
        for ax, model in zip(axes, models):
            _label_points(ax, anchors[model])
    return fig


# ---------------------------------------------------------------- T_max


def _backprop_prediction(act: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Gradient T_max that backprop predicts from the activations' curve (depth, mean T_max).

    The error reaches layer k after the forward sweep ends (the last layer's T_max, T_end), in
    reverse order, as fast as the forward sweep went: T_pred(k) = T_end + (T_end − T_act(k)).
    """
    act = act.sort_values("depth")
    end = float(act["mean"].iloc[-1])
    return act["depth"].to_numpy(dtype="float64"), 2.0 * end - act["mean"].to_numpy(dtype="float64")


def plot_tmax(
    tm: pd.DataFrame,
    hier: pd.DataFrame,
    dataset: str,
    *,
    tests: pd.DataFrame | None = None,
    alpha: float = 0.05,
    min_peak_r: float | None = 0.0,
) -> Figure:
    """T_max (s) against layer depth per signal, mean ± SEM over subjects, one panel per model.

    Layers whose peak r(t) is not above `min_peak_r` are left out for that subject, as the
    temporal score leaves them out (None keeps all). A dotted line marks the activations'
    last-layer T_max: the end of the forward sweep, after which backprop puts the gradients;
    a dash-dotted line gives backprop's prediction for the gradients (`_backprop_prediction`).
    The legend gives each signal's temporal score and, with `tests`, its T1 row's CI (level 1 − `alpha`).
    """
    _check_table(tm, "tmax", _TMAX_COLUMNS)
    _check_table(hier, "hierarchy", _HIER_COLUMNS)
    tests = _dataset_tests(tests, dataset)
    rows = _select_dataset(tm, "tmax", dataset)
    models = sorted(rows["model"].unique())
    styles = signal_styles(rows["signal"].unique())
    n_subjects = rows["subject"].nunique()
    if min_peak_r is not None:
        rows = rows[rows["peak_r"] > min_peak_r]
    rows = rows[np.isfinite(rows["t_max_s"].to_numpy(dtype="float64"))]
    scores = hier[(hier["dataset"] == dataset) & (hier["score"] == "temporal")]
    stats = _mean_sem(rows, ["model", "signal", "layer_index", "depth"], "t_max_s")
    with plt.rc_context(_RC):
        fig, axes = _panel_grid(len(models), size=(4.4, 3.8))
        for ax, model in zip(axes, models):
            for signal, style in styles.items():
                curve = stats[(stats["model"] == model) & (stats["signal"] == signal)]
                if not curve.empty:
                    label = _score_label(scores, model, signal, "temporal", tests, alpha)
                    _draw_curve(ax, curve, "depth", signal, style, label)
            act = stats[(stats["model"] == model) & (stats["signal"] == "act")]
            if not act.empty:
                ax.axhline(
                    act.loc[act["depth"].idxmax(), "mean"],
                    color=REFERENCE_COLOR,
                    linestyle=":",
                    linewidth=1,
                    label="act, last layer (end of forward sweep)",
                    gid="forward_sweep_end",
                )
                if len(act) >= 2:
                    depth, predicted = _backprop_prediction(act)
                    ax.plot(
                        depth,
                        predicted,
                        color=REFERENCE_COLOR,
                        linestyle="-.",
                        linewidth=1.2,
                        label="backprop prediction for grad\n(reverse order, after the sweep)",
                        gid="backprop_prediction",
                    )
            _depth_axis(ax)
            ax.set_xlabel(_DEPTH_LABEL)
            ax.set_ylabel("T_max (s after image onset)")
            ax.set_title(f"{dataset} · {model}")
            _legend_below(ax, f"no layer with peak r > {min_peak_r}")
        fig.suptitle(
            f"{_figure_name(dataset, rows)}: time of peak encoding per layer\n(mean ± SEM over {n_subjects} subjects)"
        )
    return fig


# ---------------------------------------------------------------- model comparison


def _comparison_rows(tests: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Spatial (S1a) and temporal (T1) score rows of `dataset`: score, model, signal, effect, CI, p_fdr."""
    rows = _select_dataset(tests, "tests", dataset)
    rows = rows[rows["test"].isin(_SCORE_TESTS.values())]
    if rows.empty:
        raise ValueError(f"tests table has no {sorted(_SCORE_TESTS.values())} rows for dataset {dataset!r}")
    score = {test: name for name, test in _SCORE_TESTS.items()}
    return rows.assign(score=rows["test"].map(score))


def _comparison_rows_y(part: pd.DataFrame, models: list[str], signals: list[str]) -> dict[tuple[str, str], float]:
    """y of each (model, signal) row: models sorted by the activations' effect (best on top), a gap between them."""
    key = part[part["signal"] == "act"].set_index("model")["effect"]
    order = sorted(models, key=lambda m: (-key.get(m, -np.inf), m))  # best first
    y_of, y = {}, 0.0
    for model in order[::-1]:  # drawn from the bottom up
        present = [s for s in signals if ((part["model"] == model) & (part["signal"] == s)).any()]
        for signal in present[::-1]:  # act on top within a model
            y_of[model, signal] = y
            y += 1.0
        y += 0.5
    return dict(sorted(y_of.items(), key=lambda item: item[1]))


def plot_model_comparison(tests: pd.DataFrame, dataset: str, *, alpha: float = 0.05) -> Figure:
    """Every model's spatial and temporal score per signal with its bootstrap CI, one panel each.

    Values are the group effects of the S1a (spatial) and T1 (temporal) rows of the tests table:
    the mean score over subjects. Each model × signal is a labelled row; models are sorted by
    the activations' score (highest on top), their signals grouped beneath; filled markers have
    p_fdr < `alpha` in the direction the test checks, open ones do not. The CI's level is
    1 − `alpha`, as the group stage computes it.
    """
    _check_table(tests, "tests", _TESTS_COLUMNS)
    rows = _comparison_rows(tests, dataset)
    scores = [s for s in _SCORE_TESTS if (rows["score"] == s).any()]
    styles = signal_styles(rows["signal"].unique())
    models = sorted(rows["model"].unique())
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(
            1,
            len(scores),
            squeeze=False,
            layout="constrained",
            figsize=(2.2 + 3.4 * len(scores), 1.6 + 0.3 * len(models) * (len(styles) + 0.5)),
        )
        for ax, score in zip(axes[0], scores):
            part = rows[rows["score"] == score]
            y_of = _comparison_rows_y(part, models, list(styles))
            for signal, style in styles.items():
                curve = part[part["signal"] == signal]
                if curve.empty:
                    continue
                ys = curve["model"].map(lambda m, s=signal, y_of=y_of: y_of[m, s]).to_numpy(dtype="float64")
                x = curve["effect"].to_numpy(dtype="float64")
                err = np.abs(
                    np.vstack(
                        [x - curve["ci_low"].to_numpy(dtype="float64"), curve["ci_high"].to_numpy(dtype="float64") - x]
                    )
                )
                bars = ax.errorbar(
                    x,
                    ys,
                    xerr=np.nan_to_num(err),
                    color=style["color"],
                    marker="none",
                    linestyle="none",
                    capsize=2,
                    elinewidth=1,
                )
                for coll in bars.lines[2]:
                    coll.set_gid(f"{signal}:ci")
                significant = curve["p_fdr"].to_numpy(dtype="float64") < alpha
                ax.plot(
                    x,
                    ys,
                    linestyle="none",
                    marker=style["marker"],
                    color=style["color"],
                    markerfacecolor="none",
                    markersize=6,
                    label=signal,
                    gid=f"{signal}:mean",
                )
                ax.plot(
                    x[significant],
                    ys[significant],
                    linestyle="none",
                    marker=style["marker"],
                    color=style["color"],
                    markersize=6,
                    gid=f"{signal}:significant",
                )
            ax.axvline(0.0, color="0.6", linewidth=0.6, zorder=0)
            ax.set_yticks(list(y_of.values()), [f"{m} · {s}" for m, s in y_of])
            for k, label in enumerate(ax.get_yticklabels()):
                label.set_color(styles[list(y_of)[k][1]]["color"])
            ax.set_ylim(-0.6, max(y_of.values()) + 0.6)
            ax.set_xlim(-1.05, 1.05)
            test = _SCORE_TESTS[score]
            ax.set_xlabel(f"{score} score (Pearson r, mean over subjects)")
            ax.set_title(f"{score} score ({test} row), {_ci_name(alpha)}")
        handles = [plt.Line2D([], [], color=s["color"], marker=s["marker"], linestyle="none") for s in styles.values()]
        handles.append(plt.Line2D([], [], color="0.3", marker="o", markerfacecolor="none", linestyle="none"))
        fig.legend(
            handles, [*styles, f"open: p_fdr ≥ {alpha}"], loc="outside lower center", ncols=len(handles), frameon=False
        )
        fig.suptitle(f"{dataset}: hierarchy scores of every model")
    return fig


# ---------------------------------------------------------------- rule signatures

# The tests each learning rule makes a prediction for (columns), and their x axes.
_RULE_TESTS: dict[str, str] = {
    "T1": "T1 temporal score\n(Pearson r, depth vs T_max)",
    "T2": "T2 lag after the forward sweep\n(s, earliest T_max − act's last)",
    "S1a": "S1a spatial score\n(Pearson r, depth vs ROI distance)",
    "S1b": "S1b alignment with act\n(Pearson r of best depths)",
}
_RULE_NAMES = {"grad": "backprop", "fa": "feedback align.", "sign": "sign-symmetric", "dfa": "direct FA"}
_PREDICTION_TEXT = {"less": "< 0", "greater": "> 0", "zero": "≈ 0"}
_PREDICTION_COLOR = "0.85"
# Half-width of the 'zero' prediction's band, as a fraction of the axis span: a visual mark of 0;
# the match criterion is that the CI covers 0 (`prediction_matched`).
_ZERO_BAND = 0.05


def prediction_matched(prediction: str, ci_low: float, ci_high: float) -> bool:
    """Whether a CI lies in the predicted region: above 0 ('greater'), below ('less') or around it ('zero')."""
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return False
    return {"greater": ci_low > 0, "less": ci_high < 0, "zero": ci_low <= 0 <= ci_high}[prediction]


def _rule_rows(tests: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """T1, T2, S1a and S1b rows of `dataset`'s learning signals; ValueError for a signal with no prediction."""
    rows = _select_dataset(tests, "tests", dataset)
    rows = rows[rows["test"].isin(_RULE_TESTS) & (rows["signal"] != "act")]
    unknown = sorted(set(rows["signal"]) - set(RULE_PREDICTIONS))
    if unknown:
        raise ValueError(
            f"tests table has signal(s) {unknown} for dataset {dataset!r} with no predicted "
            f"signature; known: {sorted(RULE_PREDICTIONS)} (brainprop.group.RULE_PREDICTIONS)"
        )
    if rows.empty:
        raise ValueError(
            f"tests table has no {list(_RULE_TESTS)} rows of a learning signal "
            f"{sorted(RULE_PREDICTIONS)} for dataset {dataset!r}"
        )
    return rows


def _rule_limits(rows: pd.DataFrame, test: str) -> tuple[float, float]:
    """x limits of a test's column: [-1.05, 1.05] for correlations, symmetric around 0 for T2 (s)."""
    if test != "T2":
        return -1.05, 1.05
    values = np.abs(rows[["effect", "ci_low", "ci_high"]].to_numpy(dtype="float64"))
    values = values[np.isfinite(values)]
    half = 1.15 * max(float(values.max()) if values.size else 0.0, 0.05)
    return -half, half


def _prediction_span(ax: Axes, prediction: str, lim: tuple[float, float], gid: str) -> None:
    """Shade the region a rule predicts for a test's effect: x > 0, x < 0, or a narrow band at 0."""
    half = _ZERO_BAND * (lim[1] - lim[0])
    x0, x1 = {"greater": (0.0, lim[1]), "less": (lim[0], 0.0), "zero": (-half, half)}[prediction]
    ax.axvspan(
        x0,
        x1,
        facecolor=_PREDICTION_COLOR,
        edgecolor="0.55",
        linewidth=0,
        zorder=0,
        gid=gid,
        hatch="///" if prediction == "zero" else None,
    )


def _rule_cell(
    ax: Axes, part: pd.DataFrame, signal: str, test: str, y_of: dict[str, int], style: dict, alpha: float
) -> str:
    """One signal's effect ± CI per model on one test's axis; return how many CIs match the prediction."""
    part = part.assign(_y=part["model"].map(y_of)).sort_values("_y")
    x = part["effect"].to_numpy(dtype="float64")
    ys = part["_y"].to_numpy(dtype="float64")
    low, high = part["ci_low"].to_numpy(dtype="float64"), part["ci_high"].to_numpy(dtype="float64")
    bars = ax.errorbar(
        x,
        ys,
        xerr=np.nan_to_num(np.abs(np.vstack([x - low, high - x]))),
        color=style["color"],
        marker="none",
        linestyle="none",
        capsize=2,
        elinewidth=1,
    )
    for coll in bars.lines[2]:
        coll.set_gid(f"{signal}:{test}:ci")
    significant = part["p_fdr"].to_numpy(dtype="float64") < alpha
    ax.plot(
        x,
        ys,
        linestyle="none",
        marker=style["marker"],
        color=style["color"],
        markerfacecolor="none",
        markersize=6,
        gid=f"{signal}:{test}:mean",
    )
    ax.plot(
        x[significant],
        ys[significant],
        linestyle="none",
        marker=style["marker"],
        color=style["color"],
        markersize=6,
        gid=f"{signal}:{test}:significant",
    )
    prediction = RULE_PREDICTIONS[signal][test]
    finite = int(np.count_nonzero(np.isfinite(low) & np.isfinite(high)))
    if finite == 0:
        return "no finite CI"
    matched = sum(prediction_matched(prediction, lo, hi) for lo, hi in zip(low, high))
    return f"{matched}/{finite} CI in region"


def plot_rule_signatures(tests: pd.DataFrame, dataset: str, *, alpha: float = 0.05) -> Figure:
    """Each learning rule's predicted sign of T1, T2, S1a and S1b (shaded) beside the observed group effects.

    Rows are the dataset's learning signals (grad, fa, sign, dfa: `RULE_PREDICTIONS`), columns
    the tests present; each cell shows every model's group effect with its bootstrap CI (level
    1 − `alpha`), filled when p_fdr < `alpha` in the row's tested direction (`alternative`).
    The shaded region is what the rule predicts (a hatched band at 0 where it predicts no
    order); a cell's corner counts the models whose CI lies in it.
    """
    _check_table(tests, "tests", _TESTS_COLUMNS)
    rows = _rule_rows(tests, dataset)
    signals = [s for s in RULE_PREDICTIONS if (rows["signal"] == s).any()]
    columns = [t for t in _RULE_TESTS if (rows["test"] == t).any()]
    models = sorted(rows["model"].unique())
    y_of = {m: len(models) - 1 - i for i, m in enumerate(models)}  # first model on top
    styles = signal_styles(signals)
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(
            len(signals),
            len(columns),
            squeeze=False,
            sharey=True,
            layout="constrained",
            figsize=(1.8 + 2.6 * len(columns), 1.4 + (1.0 + 0.3 * len(models)) * len(signals)),
        )
        for j, test in enumerate(columns):
            lim = _rule_limits(rows[rows["test"] == test], test)
            for i, signal in enumerate(signals):
                ax, prediction = axes[i, j], RULE_PREDICTIONS[signal][test]
                _prediction_span(ax, prediction, lim, f"prediction:{signal}:{test}")
                ax.axvline(0.0, color=REFERENCE_COLOR, linewidth=0.6, zorder=1)
                part = rows[(rows["signal"] == signal) & (rows["test"] == test)]
                note = _rule_cell(ax, part, signal, test, y_of, styles[signal], alpha) if len(part) else "no rows"
                ax.text(
                    0.98,
                    0.97,
                    f"predicts {_PREDICTION_TEXT[prediction]}\n{note}",
                    transform=ax.transAxes,
                    ha="right",
                    va="top",
                    fontsize=7,
                    color="0.25",
                    gid=f"verdict:{signal}:{test}",
                )
                ax.set_xlim(*lim)
                ax.set_ylim(-0.6, len(models) - 0.4 + 0.6)  # headroom for the note
                if i == 0:
                    ax.set_title(test)
                if i == len(signals) - 1:
                    ax.set_xlabel(_RULE_TESTS[test])
            for i, signal in enumerate(signals):
                axes[i, 0].set_yticks([y_of[m] for m in models], models)
                axes[i, 0].set_ylabel(f"{signal}\n({_RULE_NAMES[signal]})")
        handles = [
            plt.Rectangle((0, 0), 1, 1, color=_PREDICTION_COLOR),
            plt.Line2D([], [], color="0.3", marker="o", linestyle="none"),
            plt.Line2D([], [], color="0.3", marker="o", markerfacecolor="none", linestyle="none"),
        ]
        labels = ["predicted sign", f"p_fdr < {alpha}", f"p_fdr ≥ {alpha}"]
        if any(RULE_PREDICTIONS[s][t] == "zero" for s in signals for t in columns):
            handles.insert(1, plt.Rectangle((0, 0), 1, 1, facecolor=_PREDICTION_COLOR, hatch="///", edgecolor="0.5"))
            labels.insert(1, "predicted ≈ 0 (CI should cover 0)")
        fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), frameon=False)
        fig.suptitle(
            f"{dataset}: each rule's predicted signature (shaded) and the group effect per model, {_ci_name(alpha)}"
        )
    return fig


# ---------------------------------------------------------------- CKA


def _layer_order(cka: pd.DataFrame, enc: pd.DataFrame | None, model: str) -> list[str]:
    """Layer names of `model` in depth order (from the encoding table when given), else as listed."""
    names = list(dict.fromkeys([*cka["layer_a"], *cka["layer_b"]]))
    if enc is not None and {"model", "layer", "layer_index"} <= set(enc.columns):
        index = enc[enc["model"] == model].groupby("layer")["layer_index"].min()
        if set(names) <= set(index.index):
            return sorted(names, key=lambda n: index[n])
    return names


def cka_matrix(cka: pd.DataFrame, layers: Sequence[str]) -> np.ndarray:
    """Symmetric (n_layers, n_layers) CKA matrix from long rows (NaN where a pair is missing)."""
    pos = {name: i for i, name in enumerate(layers)}
    out = np.full((len(layers), len(layers)), np.nan)
    for a, b, v in cka[["layer_a", "layer_b", "cka"]].itertuples(index=False):
        out[pos[a], pos[b]] = out[pos[b], pos[a]] = float(v)
    return out


def plot_cka_grid(cka: pd.DataFrame, enc: pd.DataFrame | None = None) -> Figure:
    """Layer × layer linear CKA of each model's activations and gradients, one matrix per panel.

    Each model (and image set, when there are several) has one panel per signal, side by side,
    wrapped at 6 panels a row; layers run in depth order, taken from the encoding table's
    `layer_index` when `enc` is given.
    """
    _check_table(cka, "cka", _CKA_COLUMNS)
    keys = sorted(cka.groupby(["model", "imageset"]).groups)
    signals = _signal_order(cka["signal"].unique())
    several_sets = cka["imageset"].nunique() > 1
    per_row = min(len(keys), max(1, 6 // len(signals)))  # models side by side, wrapped at 6 panels
    nrows = -(-len(keys) // per_row)
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(
            nrows,
            per_row * len(signals),
            squeeze=False,
            layout="constrained",
            figsize=(1.4 + 3.0 * per_row * len(signals), 0.8 + 2.9 * nrows),
        )
        for ax in axes.ravel()[len(keys) * len(signals) :]:
            ax.set_axis_off()
        for i, (model, imageset) in enumerate(keys):
            part = cka[(cka["model"] == model) & (cka["imageset"] == imageset)]
            layers = _layer_order(part, enc, model)
            for j, signal in enumerate(signals):
                ax = axes[i // per_row, (i % per_row) * len(signals) + j]
                rows = part[part["signal"] == signal]
                matrix = cka_matrix(rows, layers)
                image = ax.imshow(
                    matrix,
                    vmin=0.0,
                    vmax=1.0,
                    cmap="magma",
                    origin="lower",
                    interpolation="nearest",
                    gid=f"cka:{model}:{signal}",
                )
                step = max(1, -(-len(layers) // 8))
                ticks = list(range(0, len(layers), step))
                ax.set_xticks(ticks, [str(t) for t in ticks])
                ax.set_yticks(ticks, [str(t) for t in ticks])
                ax.set_xlabel("layer (0 = first)")
                ax.set_ylabel("layer (0 = first)")
                ax.set_title(f"{model}{f' · {imageset}' if several_sets else ''} · {signal}")
        bar = fig.colorbar(image, ax=list(axes.ravel()), shrink=0.8, aspect=30)
        bar.set_label("linear CKA (1 = same up to rotation and scale)")
        fig.suptitle("Layer × layer similarity (linear CKA) of activations and gradients")
    return fig


# ---------------------------------------------------------------- simulation recovery


def _recovered_rois(best: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Planted and recovered depth per subject × signal × ROI (source model, hemi 'both')."""
    planted = truth[truth["kind"] == "roi"][["dataset", "subject", "source_model", "roi", "signal", "depth"]]
    found = best[best["hemi"] == "both"].rename(columns={"model": "source_model"})
    merged = planted.merge(
        found[["dataset", "subject", "source_model", "roi", "signal", "best_depth"]],
        on=["dataset", "subject", "source_model", "roi", "signal"],
        how="inner",
    )
    return merged.rename(columns={"depth": "planted", "best_depth": "recovered"})


def _recovered_layers(tm: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Planted latency and recovered T_max per subject × signal × layer depth (source model)."""
    planted = truth[(truth["kind"] == "layer") & np.isfinite(truth["latency_s"].to_numpy(dtype="float64"))]
    planted = planted[["dataset", "subject", "source_model", "signal", "depth", "latency_s"]]
    found = tm.rename(columns={"model": "source_model"})[
        ["dataset", "subject", "source_model", "signal", "depth", "t_max_s"]
    ]
    planted = planted.assign(depth=planted["depth"].round(9))
    found = found.assign(depth=found["depth"].round(9))
    merged = planted.merge(found, on=["dataset", "subject", "source_model", "signal", "depth"], how="inner")
    return merged.rename(columns={"latency_s": "planted", "t_max_s": "recovered"})


def _identity_panel(ax: Axes, pairs: pd.DataFrame, key: str, styles: dict[str, dict], lim: tuple[float, float]) -> None:
    """Recovered against planted (mean ± SEM over subjects per `key`), with the identity line."""
    ax.plot(lim, lim, color=REFERENCE_COLOR, linestyle=":", linewidth=1, label="perfect recovery", gid="identity")
    stats = _mean_sem(pairs.assign(_x=pairs["planted"]), ["signal", key, "_x"], "recovered")
    present = [s for s in styles if (stats["signal"] == s).any()]
    for k, signal in enumerate(present):
        style, curve = styles[signal], stats[stats["signal"] == signal].sort_values("_x")
        # Signals are shifted apart by 1.5% of the axis so that equal points stay visible.
        dodge = (k - (len(present) - 1) / 2) * 0.015 * (lim[1] - lim[0])
        bars = ax.errorbar(
            curve["_x"] + dodge,
            curve["mean"],
            yerr=np.nan_to_num(curve["sem"].to_numpy()),
            color=style["color"],
            marker=style["marker"],
            linestyle="none",
            markersize=5,
            capsize=2,
            elinewidth=1,
            label=signal,
        )
        bars.lines[0].set_gid(f"{signal}:mean")
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)


def plot_simulation_recovery(truth: pd.DataFrame, best: pd.DataFrame, tm: pd.DataFrame, dataset: str) -> Figure:
    """Planted against recovered: best layer depth per ROI (fMRI) and T_max per layer (MEG).

    Recovered values are the source model's (`truth.source_model`), hemi 'both', mean ± SEM
    over subjects per ROI or layer; a point on the dotted identity line is recovered exactly.
    Gradients of a scenario without planted gradient latencies (forward) have no MEG points.
    """
    _check_table(truth, "truth", _TRUTH_COLUMNS)
    _check_table(best, "best_layers", _BEST_COLUMNS)
    _check_table(tm, "tmax", _TMAX_COLUMNS)
    planted = _select_dataset(truth, "truth", dataset)
    # A dataset may carry one modality only: then one panel stays empty.
    rois = _recovered_rois(best[best["dataset"] == dataset], planted)
    layers = _recovered_layers(tm[tm["dataset"] == dataset], planted)
    if rois.empty and layers.empty:
        raise ValueError(
            f"no recovered row matches the planted truth of {dataset!r} (source model "
            f"{sorted(planted['source_model'].unique())}); are its results in the tables?"
        )
    styles = signal_styles(planted["signal"].unique())
    with plt.rc_context(_RC):
        fig, (ax_roi, ax_meg) = plt.subplots(1, 2, figsize=(9.0, 4.6), layout="constrained")
        _identity_panel(ax_roi, rois, "roi", styles, (-0.08, 1.08))
        ax_roi.set_xlabel(f"planted {_DEPTH_LABEL}")
        ax_roi.set_ylabel("recovered best layer depth")
        ax_roi.set_title(f"fMRI: best layer per ROI ({rois['roi'].nunique()} ROIs)")
        times = layers[["planted", "recovered"]].to_numpy(dtype="float64")
        times = times[np.isfinite(times)]
        lo, hi = (float(times.min()), float(times.max())) if times.size else (0.0, 1.0)
        pad = 0.06 * max(hi - lo, 0.1)
        _identity_panel(ax_meg, layers, "depth", styles, (lo - pad, hi + pad))
        ax_meg.set_xlabel("planted latency (s after image onset)")
        ax_meg.set_ylabel("recovered T_max (s after image onset)")
        ax_meg.set_title(f"MEG: T_max per layer ({layers['depth'].nunique()} layers)")
        ax_roi.legend(loc="upper left", frameon=False)
        source = ", ".join(sorted(planted["source_model"].unique()))
        fig.suptitle(
            f"{dataset}: planted vs recovered (source model {source}, "
            f"mean ± SEM over {planted['subject'].nunique()} subjects)"
        )
    return fig


# ---------------------------------------------------------------- files


def save_figure(fig: Figure, stem: Path, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write `fig` to `stem.<fmt>` for each format atomically (PNG at 150 dpi), then close it."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        plt.close(fig)
        raise ValueError(f"unknown figure format(s) {bad}; expected some of {list(FORMATS)}")
    stem, paths = Path(stem), []
    try:
        with plt.rc_context({"svg.hashsalt": "brainprop"}):
            for fmt in formats:
                path = stem.parent / f"{stem.name}.{fmt}"
                with atomic_path(path) as tmp:
                    fig.savefig(tmp, format=fmt, **FORMATS[fmt])
                paths.append(path)
    finally:
        plt.close(fig)
    return paths


def _roi_distance_map(enc: pd.DataFrame, dataset: str) -> dict[str, float]:
    """ROI -> distance from the reference ROI (mm), from a dataset's fMRI encoding rows."""
    rows = enc[(enc["dataset"] == dataset) & (enc["modality"] == "fmri")]
    return rows.groupby("roi")["roi_distance_mm"].mean().dropna().to_dict()


def _of_model(table: pd.DataFrame, model: str) -> pd.DataFrame:
    """Rows of `model` (all rows when `model` is "")."""
    return table[table["model"] == model] if model else table


def _plotters(
    tables: dict[str, pd.DataFrame], roi_levels: Mapping | None, alpha: float
) -> dict[str, Callable[[str, str], Figure]]:
    """Figure kind -> function drawing it for one dataset and model ("" where not per dataset or model)."""
    t = tables
    return {
        "encoding_by_layer": lambda d, m: plot_encoding_by_layer(
            _of_model(t["encoding"], m), d, roi_levels=(roi_levels or {}).get(d)
        ),
        "meg_timecourses": lambda d, m: plot_meg_timecourses(_of_model(t["encoding"], m), d),
        "spatial_hierarchy": lambda d, m: plot_spatial_hierarchy(
            _of_model(t["best_layers"], m),
            t["hierarchy"],
            d,
            tests=t["tests"],
            alpha=alpha,
            roi_distance_mm=_roi_distance_map(t["encoding"], d),
        ),
        "tmax": lambda d, m: plot_tmax(_of_model(t["tmax"], m), t["hierarchy"], d, tests=t["tests"], alpha=alpha),
        "model_comparison": lambda d, _: plot_model_comparison(t["tests"], d, alpha=alpha),
        "rule_signatures": lambda d, _: plot_rule_signatures(t["tests"], d, alpha=alpha),
        "simulation_recovery": lambda d, _: plot_simulation_recovery(t["truth"], t["best_layers"], t["tmax"], d),
        "cka": lambda *_: plot_cka_grid(t["cka"], t["encoding"]),
    }


TABLES_READ = ("encoding", "best_layers", "tmax", "hierarchy", "tests", "cka")


def make_figures(
    tables_dir: Path,
    out_dir: Path,
    formats: Sequence[str] = ("png", "svg"),
    *,
    roi_levels: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    truth: Mapping[str, Path] | None = None,
    alpha: float = 0.05,
) -> list[Path]:
    """Draw every table figure of a run from `tables_dir` into `out_dir`; return the written paths.

    `roi_levels` maps dataset -> level -> ROI names (the config's `roi_levels`; default
    distance thirds); `truth` maps each simulated dataset to its planted-truth table; `alpha`
    is `stats.alpha`: the test level that fills the model comparison's markers and names the
    CI level (1 − alpha).
    """
    tables_dir, out_dir = Path(tables_dir), Path(out_dir)
    tables = {name: read_table(tables_dir / f"{name}.parquet") for name in TABLES_READ}
    truth = dict(truth or {})
    if truth:
        tables["truth"] = pd.concat([read_table(path) for _, path in sorted(truth.items())], ignore_index=True)
    _check_table(tables["encoding"], "encoding", ("dataset", "modality"))
    datasets = tables["encoding"].groupby("dataset")["modality"].agg(set).to_dict()
    plotters = _plotters(tables, roi_levels, alpha)
    models = sorted(tables["encoding"]["model"].unique())
    signals = tables["encoding"]["signal"].unique()
    paths = []
    for kind, dataset, model, name in figure_entries(
        datasets, formats[:1], models=models, simulated=truth, signals=signals
    ):
        stem = out_dir / name.rsplit(".", 1)[0]
        paths += save_figure(plotters[kind](dataset, model), stem, formats)
    return paths


def tests_html(tests: pd.DataFrame) -> str:
    """The tests table as a small HTML page for the report, rows ordered by dataset, model, signal, test."""
    _check_table(tests, "tests", _TESTS_COLUMNS)
    order = {t: i for i, t in enumerate(("T1", "T2", "S1a", "S1b", "E"))}
    rows = tests.assign(_order=tests["test"].map(order).fillna(len(order)))
    rows = rows.sort_values(["dataset", "model", "signal", "_order", *(["level"] if "level" in rows else [])])
    columns = [
        c
        for c in (
            "dataset",
            "modality",
            "model",
            "signal",
            "test",
            "level",
            "alternative",
            "effect",
            "ci_low",
            "ci_high",
            "p",
            "p_min",
            "p_fdr",
            "n_subjects",
            "n_significant_subjects",
        )
        if c in rows.columns
    ]
    table = rows[columns].to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0, classes="tests")
    style = (
        "body{font-family:sans-serif;font-size:13px} table.tests{border-collapse:collapse}"
        "table.tests th,table.tests td{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>brainprop tests</title>"
        f"<style>{style}</style></head><body>{table}</body></html>\n"
    )


def write_tests_html(tables_dir: Path, path: Path) -> None:
    """Write the run's tests table (`tables_dir/tests.parquet`) as HTML to `path`, atomically."""
    html = tests_html(read_table(Path(tables_dir) / "tests.parquet"))
    with atomic_path(path) as tmp:
        Path(tmp).write_text(html, encoding="utf-8")
