"""Per-image nuisance regressors the encoding can partial out (METHOD.md §2, "Gradient scale").

With cross-entropy against the model's own top-1, ∂L/∂logits = p − onehot: every layer's gradient
of an image carries a common factor that grows with the model's uncertainty on it, so a gradient
can predict a brain response only because the image is hard. `encoding.nuisance` names regressors
from the extraction's nuisance table (`brainprop.features.files.load_nuisance`) that every encode
and joint fit removes from its features and targets inside each training split
(`brainprop.encoding._ridge.fold_partial`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

__all__ = ["NUISANCES", "nuisance_matrix"]


def _log_norm(values: pd.Series) -> np.ndarray:
    """log of a gradient norm (its scale is multiplicative); exact zeros at float32's smallest normal."""
    v = values.to_numpy(np.float64)
    return np.log(np.maximum(v, np.finfo(np.float32).tiny))


# name -> the regressor of one layer's fit, from the nuisance table (rows: images) and the layer index.
NUISANCES: dict[str, Callable[[pd.DataFrame, int], np.ndarray]] = {
    "confidence": lambda table, k: table["confidence"].to_numpy(np.float64),  # max softmax of the loss's scores
    "entropy": lambda table, k: table["entropy"].to_numpy(np.float64),  # of that softmax, nats
    "grad_norm": lambda table, k: _log_norm(table[f"grad_norm_{k:02d}"]),  # log ||dL/dh_k||, the fitted layer's
}


def nuisance_matrix(table: pd.DataFrame, names: Sequence[str], layer_index: int, where: str = "") -> np.ndarray:
    """(n_images, len(names)) regressors of one layer's fit, in the table's row order.

    `where` names the extract folder in messages. A regressor that is NaN (an extraction without a
    loss, or without the `grad` signal, has no confidence or gradient norm) is an error.
    """
    unknown = [n for n in names if n not in NUISANCES]
    if unknown:
        raise ValueError(f"config key encoding.nuisance: {unknown} unknown; valid nuisances: {list(NUISANCES)}")
    columns = []
    for name in names:
        try:
            values = NUISANCES[name](table, int(layer_index))
        except KeyError as err:
            raise ValueError(
                f"{where}: the nuisance table has no column {err} for encoding.nuisance {name!r} of layer "
                f"{int(layer_index):02d}; rerun the extraction (delete the extract folder)"
            ) from None
        if not np.isfinite(values).all():
            raise ValueError(
                f"{where}: encoding.nuisance {name!r} is not available for {np.count_nonzero(~np.isfinite(values))} "
                "images (the extraction computed no loss, or no `grad` signal); add `grad` to the model's signals "
                "or drop it from encoding.nuisance"
            )
        columns.append(values)
    return np.column_stack(columns) if columns else np.zeros((len(table), 0))
