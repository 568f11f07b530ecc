"""Encoding figures: r by layer per ROI level and MEG peak, and MEG r(t) per layer coloured by depth."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .catalog import MODALITIES
from .labels import DEPTH_LABEL, ROI_LEVEL_NAMES, VALUE_LABELS, figure_name
from .style import (
    RC,
    check_table,
    depth_axis,
    depth_colorbar,
    depth_colors,
    draw_curve,
    mean_sem,
    select_dataset,
    signal_order,
    signal_styles,
)

__all__ = ["plot_encoding_by_layer", "plot_meg_timecourses"]

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
    check_table(enc, "encoding", (*_ENCODING_COLUMNS, *values))
    rows = select_dataset(enc, "encoding", dataset)
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
    with plt.rc_context(RC):
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
            stats = {v: mean_sem(panel, ["model", "signal", "layer_index", "depth"], v) for v in present}
            for i, (model, value) in enumerate(grid):
                ax = axes[i, j]
                ax.axhline(0.0, color="0.6", linewidth=0.6, zorder=0)
                for signal, style in styles.items():
                    curve = stats[value][(stats[value]["model"] == model) & (stats[value]["signal"] == signal)]
                    if not curve.empty:
                        draw_curve(ax, curve, "depth", signal, style, signal)
                depth_axis(ax)
                if i == 0:
                    ax.set_title(title)
                if j == 0:
                    ax.set_ylabel(f"{model}\n{VALUE_LABELS.get(value, value)}")
                if i == len(grid) - 1:
                    ax.set_xlabel(DEPTH_LABEL)
        n_subjects = rows["subject"].nunique()
        fig.suptitle(f"{figure_name(dataset, rows)}: encoding by layer (mean ± SEM over {n_subjects} subjects)")
        handles = [
            plt.Line2D([], [], color=s["color"], marker=s["marker"], linestyle=s["linestyle"]) for s in styles.values()
        ]
        fig.legend(handles, list(styles), loc="outside lower center", ncols=len(styles), frameon=False)
    return fig


def plot_meg_timecourses(enc: pd.DataFrame, dataset: str, *, value: str = "r") -> Figure:
    """Sensor-averaged r(t) of every layer, coloured by depth, mean over subjects.

    Rows are models, columns signals, all on one time axis (s after image onset) and, per
    model, one y axis, so activations and gradients compare directly.
    """
    check_table(enc, "encoding", (*_ENCODING_COLUMNS, value))
    rows = select_dataset(enc, "encoding", dataset)
    rows = rows[rows["modality"] == "meg"]
    if rows.empty:
        raise ValueError(f"encoding table has no MEG rows (modality == 'meg') for dataset {dataset!r}")
    models = sorted(rows["model"].unique())
    signals = signal_order(rows["signal"].unique())
    stats = mean_sem(rows, ["model", "signal", "layer_index", "depth", "time"], value)
    with plt.rc_context(RC):
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
                    ax.set_ylabel(f"{VALUE_LABELS.get(value, value)}\n(mean over sensors)")
                if i == len(models) - 1:
                    ax.set_xlabel("time after image onset (s)")
        depth_colorbar(fig, axes.ravel())
        fig.suptitle(
            f"{figure_name(dataset, rows)}: MEG encoding time course per layer "
            f"(mean over {rows['subject'].nunique()} subjects)"
        )
    return fig
