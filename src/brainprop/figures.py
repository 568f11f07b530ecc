"""Figures of a run's tables: encoding by layer, spatial hierarchy and T_max, one figure per dataset."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from .io import atomic_path, read_table  # noqa: E402

__all__ = [
    "SIGNAL_STYLES",
    "FIGURES",
    "signal_styles",
    "plot_encoding_by_layer",
    "plot_spatial_hierarchy",
    "plot_tmax",
    "save_figure",
    "figure_names",
    "make_figures",
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

# Figure kind -> the modalities whose rows it draws (fixes which files `figures` writes).
FIGURES: dict[str, frozenset[str]] = {
    "encoding_by_layer": frozenset({"fmri", "meg"}),
    "spatial_hierarchy": frozenset({"fmri"}),
    "tmax": frozenset({"meg"}),
}
MODALITIES = ("fmri", "meg")
FORMATS: dict[str, dict] = {"png": {"dpi": 150}, "svg": {"metadata": {"Date": None}}, "pdf": {}}
MAX_ROI_PANELS = 8
ROI_LEVEL_NAMES = ("early", "intermediate", "high")

# Columns each plot reads (a subset of brainprop.contract.TABLES).
_ENCODING_COLUMNS = (
    "dataset", "modality", "model", "signal", "layer_index", "depth", "subject",
    "atlas", "roi", "hemi", "roi_distance_mm", "time",
)
_BEST_COLUMNS = ("dataset", "model", "signal", "subject", "atlas", "roi", "hemi", "best_depth", "best_r")
_TMAX_COLUMNS = ("dataset", "model", "signal", "subject", "layer_index", "depth", "t_max_s", "peak_r")
_HIER_COLUMNS = ("dataset", "model", "signal", "subject", "score", "atlas", "value")

_VALUE_LABELS = {"r": "Pearson r", "r_normalized": "noise-normalised r"}
_DEPTH_LABEL = "layer depth (0 = first, 1 = last)"
_RC = {
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "legend.fontsize": 8, "figure.titlesize": 11,
    "axes.spines.top": False, "axes.spines.right": False, "svg.hashsalt": "brainprop",
}


# ---------------------------------------------------------------- checks and statistics

def _check_table(table: pd.DataFrame, name: str, columns: Iterable[str]) -> None:
    """Raise ValueError when `table` is empty or lacks one of `columns`."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"{name} table lacks column(s) {missing}; expected the columns of "
            f"brainprop.contract.TABLES['{name}']"
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


def _score_label(hier: pd.DataFrame, model: str, signal: str, score: str) -> str:
    """Legend text for one signal: its mean ± SEM hierarchy score over subjects."""
    rows = hier[(hier["model"] == model) & (hier["signal"] == signal) & (hier["score"] == score)]
    values = rows["value"].to_numpy(dtype="float64")
    values = values[np.isfinite(values)]
    if values.size == 0:
        return f"{signal} ({score} score n/a)"
    sem = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else np.nan
    spread = f" ± {sem:.2f}" if np.isfinite(sem) else ""
    return f"{signal} ({score} score {values.mean():+.2f}{spread}, n={values.size})"


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
    ax.fill_between(xs, mean - sem, mean + sem, color=style["color"], alpha=0.2, linewidth=0,
                    gid=f"{signal}:sem")
    ax.plot(xs, mean, color=style["color"], marker=style["marker"], linestyle=style["linestyle"],
            markersize=4, linewidth=1.5, label=label, gid=f"{signal}:mean")


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
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows + 0.6),
                             squeeze=False, layout="constrained")
    for ax in axes.ravel()[n_panels:]:
        ax.remove()
    return fig, list(axes.ravel()[:n_panels])


# ---------------------------------------------------------------- encoding by layer

def _levels_by_distance(distance: pd.Series) -> dict[str, list[str]]:
    """Split ROIs sorted by distance from the reference ROI into early / intermediate / high thirds."""
    groups = np.array_split(np.arange(len(distance)), len(ROI_LEVEL_NAMES))
    return {name: list(distance.index[idx]) for name, idx in zip(ROI_LEVEL_NAMES, groups) if len(idx)}


def _fmri_panels(rows: pd.DataFrame, roi_levels: Mapping[str, Sequence[str]] | None
                 ) -> list[tuple[str, pd.DataFrame]]:
    """One panel per ROI (hemi 'both') by distance from V1, or per ROI level when there are many ROIs."""
    rows = rows[rows["hemi"] == "both"]
    if rows.empty:
        raise ValueError("encoding table has fMRI rows but none with hemi == 'both'")
    distance = rows.groupby("roi")["roi_distance_mm"].mean().sort_values(kind="stable")
    if len(distance) <= MAX_ROI_PANELS:
        return [(f"{roi} ({d:.0f} mm)", rows[rows["roi"] == roi]) for roi, d in distance.items()]
    levels = roi_levels if roi_levels is not None else _levels_by_distance(distance)
    panels = []
    for level, rois in levels.items():
        present = [r for r in rois if r in distance.index]
        if present:
            span = f"{distance[present].min():.0f}–{distance[present].max():.0f} mm"
            panels.append((f"{level}: {len(present)} ROIs, {span}", rows[rows["roi"].isin(present)]))
    if not panels:
        raise ValueError(f"roi_levels {dict(levels)} name none of the ROIs present: {list(distance.index)}")
    return panels


def _meg_panels(rows: pd.DataFrame, value: str) -> list[tuple[str, pd.DataFrame]]:
    """One panel: each subject's peak over time of r(t) per layer."""
    keys = ["model", "signal", "layer_index", "depth", "subject"]
    per_time = rows.groupby([*keys, "time"])[value].mean()
    peak = per_time.groupby(level=keys).max().reset_index()
    return [("MEG: peak of r(t) over time", peak)]


def plot_encoding_by_layer(enc: pd.DataFrame, dataset: str, *, value: str = "r",
                           roi_levels: Mapping[str, Sequence[str]] | None = None) -> Figure:
    """Encoding score against layer depth per signal, mean ± SEM over subjects.

    Rows are models; columns are ROIs (fMRI, hemi 'both', ordered by distance from V1) and,
    for MEG, one panel with each layer's peak over time of r(t). With more than 8 ROIs the
    columns are ROI levels: `roi_levels` (level -> ROI names) or distance thirds.
    """
    _check_table(enc, "encoding", (*_ENCODING_COLUMNS, value))
    rows = _select_dataset(enc, "encoding", dataset)
    panels = []
    if (rows["modality"] == "fmri").any():
        panels += _fmri_panels(rows[rows["modality"] == "fmri"], roi_levels)
    if (rows["modality"] == "meg").any():
        panels += _meg_panels(rows[rows["modality"] == "meg"], value)
    if not panels:
        raise ValueError(f"encoding rows of {dataset!r} have modality {sorted(rows['modality'].unique())}, "
                         f"expected one of {list(MODALITIES)}")
    models = sorted(rows["model"].unique())
    styles = signal_styles(rows["signal"].unique())
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(len(models), len(panels), sharex=True, sharey=True, squeeze=False,
                                 figsize=(max(5.0, 1.2 + 2.4 * len(panels)), 1.1 + 2.1 * len(models)),
                                 layout="constrained")
        for j, (title, panel) in enumerate(panels):
            stats = _mean_sem(panel, ["model", "signal", "layer_index", "depth"], value)
            for i, model in enumerate(models):
                ax = axes[i, j]
                ax.axhline(0.0, color="0.6", linewidth=0.6, zorder=0)
                for signal, style in styles.items():
                    curve = stats[(stats["model"] == model) & (stats["signal"] == signal)]
                    if not curve.empty:
                        _draw_curve(ax, curve, "depth", signal, style, signal)
                _depth_axis(ax)
                if i == 0:
                    ax.set_title(title)
                if j == 0:
                    ax.set_ylabel(f"{model}\n{_VALUE_LABELS.get(value, value)}")
                if i == len(models) - 1:
                    ax.set_xlabel("layer depth")
        n_subjects = rows["subject"].nunique()
        fig.suptitle(f"{dataset}: encoding by layer\n(mean ± SEM over {n_subjects} subjects; "
                     f"depth 0 = first layer, 1 = last)")
        handles = [plt.Line2D([], [], color=s["color"], marker=s["marker"], linestyle=s["linestyle"])
                   for s in styles.values()]
        fig.legend(handles, list(styles), loc="outside lower center", ncols=len(styles), frameon=False)
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
            raise ValueError("best_layers table lacks column 'roi_distance_mm' and no roi_distance_mm "
                             "mapping was given; pass the distances from the encoding table")
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
        (0, 1, "center", "bottom"), (1, 0.3, "left", "bottom"), (-1, 0.3, "right", "bottom"),
        (0, -1, "center", "top"), (1, -0.3, "left", "top"), (-1, -0.3, "right", "top"),
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
        text = ax.annotate(roi, (x, y), xytext=(0, 0), textcoords="offset points", fontsize=8,
                           gid=f"roi:{roi}", arrowprops={"arrowstyle": "-", "color": "0.55", "linewidth": 0.5,
                                       "shrinkA": 0, "shrinkB": 4})
        for offset in _LABEL_OFFSETS:
            box = _place(text, offset, renderer)
            if _inside(box, frame) and not any(box.overlaps(b) for b in taken):
                break
        else:  # nowhere clear: the nearest position
            box = _place(text, _LABEL_OFFSETS[0], renderer)
        taken.append(box)
        texts.append(text)
    return texts


def _spatial_panel(ax: Axes, rows: pd.DataFrame, distance: pd.Series, styles: dict[str, dict],
                   labels: dict[str, str], min_best_r: float | None) -> pd.DataFrame:
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
        bars = ax.errorbar(xs, mean, yerr=np.nan_to_num(curve["sem"].to_numpy()), color=style["color"],
                           marker=style["marker"], linestyle="none", markersize=5, capsize=2,
                           elinewidth=1, label=labels[signal])
        bars.lines[0].set_gid(f"{signal}:mean")
        for coll in bars.lines[2]:
            coll.set_gid(f"{signal}:sem")
        if len(xs) >= 2 and np.ptp(xs) > 0:
            slope, intercept = np.polyfit(xs, mean, 1)
            grid = np.array([distance.min(), distance.max()], dtype="float64")
            ax.plot(grid, intercept + slope * grid, color=style["color"], linestyle=style["linestyle"],
                    linewidth=1, alpha=0.7, gid=f"{signal}:fit")
    top = (stats["mean"] + stats["sem"].fillna(0.0)).groupby(stats["roi"]).max()
    return pd.DataFrame({"roi": top.index, "x": distance[top.index].to_numpy(), "y": top.to_numpy()})


def plot_spatial_hierarchy(best: pd.DataFrame, hier: pd.DataFrame, dataset: str, *,
                           roi_distance_mm: Mapping[str, float] | None = None,
                           min_best_r: float | None = 0.0) -> Figure:
    """Best layer depth (mean ± SEM over subjects) against ROI distance from V1, one panel per model.

    Distances come from `roi_distance_mm` (ROI -> mm) or a `roi_distance_mm` column of `best`.
    Subjects whose best r for an ROI is not above `min_best_r` are left out of that ROI's mean,
    as the spatial score leaves them out (None keeps all). Dashed/solid lines are least-squares
    fits through the ROI means; the legend gives each signal's spatial score over subjects.
    """
    _check_table(best, "best_layers", _BEST_COLUMNS)
    _check_table(hier, "hierarchy", _HIER_COLUMNS)
    rows, scores = _spatial_rows(best, hier, dataset)
    distance = _roi_distances(rows, roi_distance_mm)
    models = sorted(rows["model"].unique())
    styles = signal_styles(rows["signal"].unique())
    with plt.rc_context(_RC):
        fig, axes = _panel_grid(len(models))
        anchors = {}
        for ax, model in zip(axes, models):
            labels = {s: _score_label(scores, model, s, "spatial") for s in styles}
            anchors[model] = _spatial_panel(ax, rows[rows["model"] == model], distance, styles, labels,
                                            min_best_r)
            pad = 0.06 * (float(np.ptp(distance.to_numpy())) or 1.0)
            ax.set_xlim(distance.min() - pad, distance.max() + pad)
            ax.set_ylim(-0.08, 1.15)
            ax.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0])
            ax.set_xlabel(_distance_label(distance))
            ax.set_ylabel(f"best {_DEPTH_LABEL}")
            ax.set_title(f"{dataset} · {model}")
            _legend_below(ax, f"no ROI with best r > {min_best_r}")
        fig.suptitle(f"{dataset}: best layer per ROI (mean ± SEM over {rows['subject'].nunique()} subjects)")
        # Labels are placed in display space, so the layout must be final first.
        fig.canvas.draw()
        fig.set_layout_engine("none")
        for ax, model in zip(axes, models):
            _label_points(ax, anchors[model])
    return fig


# ---------------------------------------------------------------- T_max

def plot_tmax(tm: pd.DataFrame, hier: pd.DataFrame, dataset: str, *,
              min_peak_r: float | None = 0.0) -> Figure:
    """T_max (s) against layer depth per signal, mean ± SEM over subjects, one panel per model.

    Layers whose peak r(t) is not above `min_peak_r` are left out for that subject, as the
    temporal score leaves them out (None keeps all). A dotted line marks the activations'
    last-layer T_max: the end of the forward sweep, after which backprop puts the gradients.
    """
    _check_table(tm, "tmax", _TMAX_COLUMNS)
    _check_table(hier, "hierarchy", _HIER_COLUMNS)
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
        fig, axes = _panel_grid(len(models))
        for ax, model in zip(axes, models):
            for signal, style in styles.items():
                curve = stats[(stats["model"] == model) & (stats["signal"] == signal)]
                if not curve.empty:
                    label = _score_label(scores, model, signal, "temporal")
                    _draw_curve(ax, curve, "depth", signal, style, label)
            act = stats[(stats["model"] == model) & (stats["signal"] == "act")]
            if not act.empty:
                ax.axhline(act.loc[act["depth"].idxmax(), "mean"], color="0.4", linestyle=":",
                           linewidth=1, label="act, last layer (end of forward sweep)",
                           gid="forward_sweep_end")
            _depth_axis(ax)
            ax.set_xlabel(_DEPTH_LABEL)
            ax.set_ylabel("T_max (s after image onset)")
            ax.set_title(f"{dataset} · {model}")
            _legend_below(ax, f"no layer with peak r > {min_peak_r}")
        fig.suptitle(f"{dataset}: time of peak encoding per layer "
                     f"(mean ± SEM over {n_subjects} subjects)")
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


def figure_names(datasets: Mapping[str, Iterable[str]], formats: Sequence[str] = ("png", "svg")) -> list[str]:
    """File names `make_figures` writes for datasets mapped to their modalities ({'fmri', 'meg'})."""
    names = []
    for dataset in sorted(datasets):
        modalities = set(datasets[dataset])
        bad = sorted(modalities - set(MODALITIES))
        if bad:
            raise ValueError(f"dataset {dataset!r} has modality {bad}; expected some of {list(MODALITIES)}")
        names += [f"{kind}_{dataset}.{fmt}" for kind, needs in FIGURES.items() if needs & modalities
                  for fmt in formats]
    return names


def _roi_distance_map(enc: pd.DataFrame, dataset: str) -> dict[str, float]:
    """ROI -> distance from the reference ROI (mm), from a dataset's fMRI encoding rows."""
    rows = enc[(enc["dataset"] == dataset) & (enc["modality"] == "fmri")]
    return rows.groupby("roi")["roi_distance_mm"].mean().dropna().to_dict()


def _plotters(tables: dict[str, pd.DataFrame], roi_levels: Mapping | None
              ) -> dict[str, Callable[[str], Figure]]:
    """Figure kind -> function drawing that figure for one dataset from the run's tables."""
    return {
        "encoding_by_layer": lambda d: plot_encoding_by_layer(
            tables["encoding"], d, roi_levels=(roi_levels or {}).get(d)),
        "spatial_hierarchy": lambda d: plot_spatial_hierarchy(
            tables["best_layers"], tables["hierarchy"], d,
            roi_distance_mm=_roi_distance_map(tables["encoding"], d)),
        "tmax": lambda d: plot_tmax(tables["tmax"], tables["hierarchy"], d),
    }


def make_figures(tables_dir: Path, out_dir: Path, formats: Sequence[str] = ("png", "svg"), *,
                 roi_levels: Mapping[str, Mapping[str, Sequence[str]]] | None = None) -> list[Path]:
    """Draw every figure of a run from `tables_dir` into `out_dir`; return the written paths.

    `roi_levels` maps dataset -> level -> ROI names (the config's `roi_levels`); without it,
    datasets with more than 8 ROIs are split into distance thirds.
    """
    tables_dir, out_dir = Path(tables_dir), Path(out_dir)
    tables = {name: read_table(tables_dir / f"{name}.parquet")
              for name in ("encoding", "best_layers", "tmax", "hierarchy")}
    _check_table(tables["encoding"], "encoding", ("dataset", "modality"))
    datasets = tables["encoding"].groupby("dataset")["modality"].agg(set).to_dict()
    plotters = _plotters(tables, roi_levels)
    paths = []
    for dataset in sorted(datasets):
        for kind, needs in FIGURES.items():
            if needs & datasets[dataset]:
                paths += save_figure(plotters[kind](dataset), out_dir / f"{kind}_{dataset}", formats)
    return paths
