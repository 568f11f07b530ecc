"""One style for every figure: signal colours and markers, the depth colormap, rc settings, checks, saving."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ..io import atomic_path
from .labels import DEPTH_LABEL

__all__ = [
    "DEPTH_CMAP",
    "FORMATS",
    "RC",
    "REFERENCE_COLOR",
    "SIGNAL_STYLES",
    "check_table",
    "depth_axis",
    "depth_colorbar",
    "depth_colors",
    "draw_curve",
    "legend_below",
    "mean_sem",
    "panel_grid",
    "save_figure",
    "select_dataset",
    "signal_order",
    "signal_styles",
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


RC = {
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


def check_table(table: pd.DataFrame, name: str, columns: Iterable[str]) -> None:
    """Raise ValueError when `table` is empty or lacks one of `columns`."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"{name} table lacks column(s) {missing}; expected the columns of brainprop.contract.TABLES['{name}']"
        )
    if len(table) == 0:
        raise ValueError(f"{name} table is empty; expected at least one row")


def select_dataset(table: pd.DataFrame, name: str, dataset: str) -> pd.DataFrame:
    """Rows of `table` for `dataset`, or a ValueError naming the datasets present."""
    rows = table[table["dataset"] == dataset]
    if rows.empty:
        present = sorted(table["dataset"].unique())
        raise ValueError(f"{name} table has no rows for dataset {dataset!r}; datasets present: {present}")
    return rows


def mean_sem(rows: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Mean, SEM (ddof=1) and n over subjects of `value` per `keys`, in float64.

    Several rows of one subject within a key (ROIs of a level) are averaged first.
    """
    values = rows.assign(_v=rows[value].astype("float64"))
    per_subject = values.groupby([*keys, "subject"], sort=True)["_v"].mean()
    groups = per_subject.groupby(level=keys, sort=True)
    out = pd.DataFrame({"mean": groups.mean(), "sem": groups.std(ddof=1), "n": groups.count()})
    out["sem"] = out["sem"] / np.sqrt(out["n"])
    return out.reset_index()


def signal_order(signals: Iterable[str]) -> list[str]:
    """Signals with act and grad first, then the others sorted by name."""
    signals = set(signals)
    return [s for s in SIGNAL_STYLES if s in signals] + sorted(signals - set(SIGNAL_STYLES))


def signal_styles(signals: Iterable[str]) -> dict[str, dict]:
    """Colour, marker and line style of each signal (act and grad fixed, others from a palette)."""
    styles, extra = {}, 0
    for signal in signal_order(signals):
        if signal in SIGNAL_STYLES:
            styles[signal] = SIGNAL_STYLES[signal]
        else:
            styles[signal] = _EXTRA_STYLES[extra % len(_EXTRA_STYLES)]
            extra += 1
    return styles


def draw_curve(ax: Axes, stats: pd.DataFrame, x: str, signal: str, style: dict, label: str) -> None:
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


def depth_axis(ax: Axes) -> None:
    """Depth runs over [0, 1] with three readable ticks."""
    ax.set_xlim(-0.04, 1.04)
    ax.set_xticks([0.0, 0.5, 1.0])


def legend_below(ax: Axes, empty_note: str) -> None:
    """Legend under the panel, or a note in it when nothing was drawn."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), frameon=False)
    else:
        ax.text(0.5, 0.5, empty_note, transform=ax.transAxes, ha="center", va="center", color="0.4")


def panel_grid(n_panels: int, max_cols: int = 3, size: tuple[float, float] = (4.2, 3.4)):
    """A figure with exactly `n_panels` axes, at most `max_cols` per row."""
    ncols = min(n_panels, max_cols)
    nrows = -(-n_panels // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(max(5.6, size[0] * ncols), size[1] * nrows + 0.6), squeeze=False, layout="constrained"
    )
    for ax in axes.ravel()[n_panels:]:
        ax.remove()
    return fig, list(axes.ravel()[:n_panels])


def depth_colors(depths: Iterable[float]) -> list[tuple]:
    """RGBA colour of each depth on the shared depth colormap (0 = first layer, 1 = last)."""
    cmap, norm = plt.get_cmap(DEPTH_CMAP), Normalize(0.0, 1.0)
    return [cmap(norm(float(d))) for d in depths]


def depth_colorbar(fig: Figure, axes: Sequence[Axes], label: str = DEPTH_LABEL) -> None:
    """One colorbar of the shared depth colormap beside `axes`."""
    mappable = plt.cm.ScalarMappable(norm=Normalize(0.0, 1.0), cmap=DEPTH_CMAP)
    bar = fig.colorbar(mappable, ax=list(axes), shrink=0.85, aspect=30, pad=0.02)
    bar.set_label(label)
    bar.set_ticks([0.0, 0.5, 1.0])


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
