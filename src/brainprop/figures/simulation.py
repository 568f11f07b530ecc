"""Planted against recovered: best layers and T_max of simulated subjects against their planted truth."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .hierarchy import BEST_COLUMNS, TMAX_COLUMNS
from .labels import DEPTH_LABEL
from .style import RC, REFERENCE_COLOR, check_table, mean_sem, select_dataset, signal_styles

__all__ = ["plot_simulation_recovery"]

_TRUTH_COLUMNS = ("dataset", "subject", "source_model", "kind", "roi", "signal", "depth", "latency_s")


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
    stats = mean_sem(pairs.assign(_x=pairs["planted"]), ["signal", key, "_x"], "recovered")
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
    check_table(truth, "truth", _TRUTH_COLUMNS)
    check_table(best, "best_layers", BEST_COLUMNS)
    check_table(tm, "tmax", TMAX_COLUMNS)
    planted = select_dataset(truth, "truth", dataset)
    # A dataset may carry one modality only: then one panel stays empty.
    rois = _recovered_rois(best[best["dataset"] == dataset], planted)
    layers = _recovered_layers(tm[tm["dataset"] == dataset], planted)
    if rois.empty and layers.empty:
        raise ValueError(
            f"no recovered row matches the planted truth of {dataset!r} (source model "
            f"{sorted(planted['source_model'].unique())}); are its results in the tables?"
        )
    styles = signal_styles(planted["signal"].unique())
    with plt.rc_context(RC):
        fig, (ax_roi, ax_meg) = plt.subplots(1, 2, figsize=(9.0, 4.6), layout="constrained")
        _identity_panel(ax_roi, rois, "roi", styles, (-0.08, 1.08))
        ax_roi.set_xlabel(f"planted {DEPTH_LABEL}")
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
