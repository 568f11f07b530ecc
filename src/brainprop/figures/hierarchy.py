"""Hierarchy figures: best depth against ROI distance (spatial) and T_max against depth (temporal)."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from .comparison import TESTS_COLUMNS
from .labels import DEPTH_LABEL, distance_label, figure_name, score_label
from .style import (
    RC,
    REFERENCE_COLOR,
    check_table,
    depth_axis,
    draw_curve,
    legend_below,
    mean_sem,
    panel_grid,
    select_dataset,
    signal_styles,
)

__all__ = ["BEST_COLUMNS", "TMAX_COLUMNS", "plot_spatial_hierarchy", "plot_tmax"]

BEST_COLUMNS = ("dataset", "model", "signal", "subject", "atlas", "roi", "hemi", "best_depth", "best_r")


TMAX_COLUMNS = ("dataset", "model", "signal", "subject", "layer_index", "depth", "t_max_s", "peak_r")


_HIER_COLUMNS = ("dataset", "model", "signal", "subject", "score", "atlas", "value")


def _spatial_rows(best: pd.DataFrame, hier: pd.DataFrame, dataset: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Best-layer rows (hemi 'both', the spatial score's atlas) and spatial-score rows of `dataset`."""
    rows = select_dataset(best, "best_layers", dataset)
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
    stats = mean_sem(rows, ["signal", "roi"], "best_depth")
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
    check_table(tests, "tests", TESTS_COLUMNS)
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
    check_table(best, "best_layers", BEST_COLUMNS)
    check_table(hier, "hierarchy", _HIER_COLUMNS)
    tests = _dataset_tests(tests, dataset)
    rows, scores = _spatial_rows(best, hier, dataset)
    distance = _roi_distances(rows, roi_distance_mm)
    models = sorted(rows["model"].unique())
    styles = signal_styles(rows["signal"].unique())
    with plt.rc_context(RC):
        fig, axes = panel_grid(len(models))
        anchors = {}
        for ax, model in zip(axes, models):
            labels = {s: score_label(scores, model, s, "spatial", tests, alpha) for s in styles}
            anchors[model] = _spatial_panel(ax, rows[rows["model"] == model], distance, styles, labels, min_best_r)
            pad = 0.06 * (float(np.ptp(distance.to_numpy())) or 1.0)
            ax.set_xlim(distance.min() - pad, distance.max() + pad)
            ax.set_ylim(-0.08, 1.15)
            ax.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0])
            ax.set_xlabel(distance_label(distance))
            ax.set_ylabel(f"best {DEPTH_LABEL}")
            ax.set_title(f"{dataset} · {model}")
            legend_below(ax, f"no ROI with best r > {min_best_r}")
        fig.suptitle(
            f"{figure_name(dataset, rows)}: best layer per ROI\n(mean ± SEM over {rows['subject'].nunique()} subjects)"
        )
        # Labels are placed in display space, so the layout must be final first.
        fig.canvas.draw()
        fig.set_layout_engine("none")
        for ax, model in zip(axes, models):
            _label_points(ax, anchors[model])
    return fig


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
    check_table(tm, "tmax", TMAX_COLUMNS)
    check_table(hier, "hierarchy", _HIER_COLUMNS)
    tests = _dataset_tests(tests, dataset)
    rows = select_dataset(tm, "tmax", dataset)
    models = sorted(rows["model"].unique())
    styles = signal_styles(rows["signal"].unique())
    n_subjects = rows["subject"].nunique()
    if min_peak_r is not None:
        rows = rows[rows["peak_r"] > min_peak_r]
    rows = rows[np.isfinite(rows["t_max_s"].to_numpy(dtype="float64"))]
    scores = hier[(hier["dataset"] == dataset) & (hier["score"] == "temporal")]
    stats = mean_sem(rows, ["model", "signal", "layer_index", "depth"], "t_max_s")
    with plt.rc_context(RC):
        fig, axes = panel_grid(len(models), size=(4.4, 3.8))
        for ax, model in zip(axes, models):
            for signal, style in styles.items():
                curve = stats[(stats["model"] == model) & (stats["signal"] == signal)]
                if not curve.empty:
                    label = score_label(scores, model, signal, "temporal", tests, alpha)
                    draw_curve(ax, curve, "depth", signal, style, label)
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
            depth_axis(ax)
            ax.set_xlabel(DEPTH_LABEL)
            ax.set_ylabel("T_max (s after image onset)")
            ax.set_title(f"{dataset} · {model}")
            legend_below(ax, f"no layer with peak r > {min_peak_r}")
        fig.suptitle(
            f"{figure_name(dataset, rows)}: time of peak encoding per layer\n(mean ± SEM over {n_subjects} subjects)"
        )
    return fig
