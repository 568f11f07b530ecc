"""Which blocks of a model are its layers: block lists, even selection and their pooled sizes (needs torch)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from .models import build_model, input_shape
from .pooling import pool, token_context
from .projection import projected_dim

__all__ = ["BLOCK_PATTERNS", "find_blocks", "resolve_layers", "select_layers"]

# Module-name patterns of a model's blocks, finest level first: the first pattern with at
# least two matches defines the block list (ordered as the model defines its modules).
BLOCK_PATTERNS: dict[str, str] = {
    "stage_blocks": r"stages\.\d+\.blocks\.\d+",  # ConvNeXt, ConvNeXt-V2, Hiera-like
    "swin_blocks": r"layers\.\d+\.blocks\.\d+",  # Swin
    "efficientnet_blocks": r"blocks\.\d+\.\d+",  # EfficientNet, MobileNet
    "resnet_blocks": r"layer\d+\.\d+",  # ResNet, ResNeXt, Wide-ResNet
    "regnet_blocks": r"s\d+\.b\d+",  # RegNet
    "transformer_blocks": r"blocks\.\d+",  # ViT, DeiT, EVA, BEiT, DINOv2/v3
}


def find_blocks(model: torch.nn.Module) -> list[str]:
    """Return the module names of the model's blocks in forward order."""
    names = [name for name, _ in model.named_modules()]
    for pattern in BLOCK_PATTERNS.values():
        found = [n for n in names if re.fullmatch(pattern, n)]
        if len(found) >= 2:
            return found
    raise ValueError(
        f"{type(model).__name__}: no block list found (tried patterns {list(BLOCK_PATTERNS.values())}); "
        "name the layers explicitly with models.<alias>.layers.names"
    )


def select_layers(blocks: Sequence[str], n: int) -> list[tuple[str, int]]:
    """Choose `n` blocks evenly spaced by ordinal (all when fewer), as (name, ordinal) pairs."""
    if int(n) != n or n < 1:
        raise ValueError(f"layers.n={n!r}: expected a positive integer")
    if len(blocks) <= n:
        return [(b, i) for i, b in enumerate(blocks)]
    idx = np.unique(np.round(np.linspace(0, len(blocks) - 1, n)).astype(int))
    return [(blocks[i], int(i)) for i in idx]


def _depths(ordinals: Sequence[int], n_blocks: int) -> list[float]:
    return [o / (n_blocks - 1) if n_blocks > 1 else 0.0 for o in ordinals]


def resolve_layers(
    timm_name: str, layers: dict, pooling: dict, input_size: int | None = None, timm_kwargs: dict | None = None
) -> pd.DataFrame:
    """Resolve the selected layers of a model without weights (meta device).

    Returns a table with columns layer, layer_index, ordinal, depth, dim (pooled dimension).
    """
    model = build_model(timm_name, "meta", input_size, timm_kwargs).eval()
    blocks = find_blocks(model)
    if layers.get("names"):
        modules = dict(model.named_modules())
        missing = [n for n in layers["names"] if n not in modules]
        if missing:
            raise ValueError(f"model {timm_name!r}: no module named {missing}; blocks are {blocks}")
        chosen = []
        for name in layers["names"]:
            ordinal = blocks.index(name) if name in blocks else None
            if ordinal is None:
                raise ValueError(f"model {timm_name!r}: {name!r} is not a block; blocks are {blocks}")
            chosen.append((name, ordinal))
    else:
        chosen = select_layers(blocks, int(layers["n"]))
    shapes = _output_shapes(model, [c[0] for c in chosen], input_shape(model, input_size))
    ctx = token_context(model)
    dims = [
        projected_dim(pool(torch.empty(shapes[name], device="meta"), pooling, ctx).shape[1], pooling)
        for name, _ in chosen
    ]
    return pd.DataFrame(
        {
            "layer": [c[0] for c in chosen],
            "layer_index": np.arange(len(chosen), dtype=np.int64),
            "ordinal": np.array([c[1] for c in chosen], dtype=np.int64),
            "depth": np.array(_depths([c[1] for c in chosen], len(blocks)), dtype=np.float64),
            "dim": np.array(dims, dtype=np.int64),
        }
    )


def _output_shapes(model: torch.nn.Module, names: Sequence[str], size: tuple[int, int, int]) -> dict:
    shapes: dict[str, tuple] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[n].register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape))) for n in names
    ]
    try:
        with torch.no_grad():
            model(torch.empty((1, *size), device="meta"))
    finally:
        for h in handles:
            h.remove()
    return shapes
