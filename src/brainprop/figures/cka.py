"""The layer × layer CKA grid of each model's activations and gradients."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .style import RC, check_table, signal_order

__all__ = ["cka_matrix", "plot_cka_grid"]

_CKA_COLUMNS = ("model", "imageset", "signal", "layer_a", "layer_b", "cka")


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
    check_table(cka, "cka", _CKA_COLUMNS)
    keys = sorted(cka.groupby(["model", "imageset"]).groups)
    signals = signal_order(cka["signal"].unique())
    several_sets = cka["imageset"].nunique() > 1
    per_row = min(len(keys), max(1, 6 // len(signals)))  # models side by side, wrapped at 6 panels
    nrows = -(-len(keys) // per_row)
    with plt.rc_context(RC):
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
