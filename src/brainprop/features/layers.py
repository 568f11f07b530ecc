"""Which blocks of a model are its layers: block lists, even selection and their pooled sizes (needs torch)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .models import build, input_shape, model_info
from .pooling import pool
from .projection import projected_dim
from .sources import canonical_model

__all__ = ["BLOCK_PATTERNS", "find_blocks", "output_dim", "resolve_layers", "select_layers"]

log = logging.getLogger(__name__)

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


def _shapes_without_weights(spec: dict, chosen: Callable[[torch.nn.Module], list[str]]) -> tuple:
    """(module, output shapes of the chosen blocks) from a weightless build: meta device, else the CPU.

    A few models create tensors on the CPU inside their forward (torchvision's RegNet), or a python
    factory touches its tensors; those are built on the CPU instead (random weights, never loaded).
    timm models always build on meta (a 7B ViT must never be built on the CPU to count its blocks).
    """
    devices = ("meta",) if spec["source"] == "timm" else ("meta", "cpu")
    for device in devices:
        try:
            module = build(spec, device).eval()
            names = chosen(module)
            return module, names, _output_shapes(module, names, input_shape(module))
        except (NotImplementedError, RuntimeError) as err:
            if device == devices[-1]:
                raise
            log.info("%s: cannot resolve on the meta device (%s); resolving on the CPU", spec["name"], err)
    raise AssertionError("unreachable")


def resolve_layers(
    model: dict | str, layers: dict, pooling: dict, input_size: int | None = None, kwargs: dict | None = None
) -> pd.DataFrame:
    """Resolve the selected layers of a model without weights (meta device where its source allows).

    `model` is a model entry (source, name, kwargs, input_size; features.sources), or a timm
    name with `input_size` and `kwargs` given here. Returns a table with columns layer,
    layer_index, ordinal, depth, dim (pooled dimension).
    """
    spec = canonical_model(model if isinstance(model, dict) else {"name": model, "kwargs": kwargs or {}})
    if input_size is not None:
        spec["input_size"] = input_size

    def choose(module: torch.nn.Module) -> list[str]:
        blocks = model_info(module).blocks()
        if not layers.get("names"):
            return [name for name, _ in select_layers(blocks, int(layers["n"]))]
        modules = dict(module.named_modules())
        missing = [n for n in layers["names"] if n not in modules]
        if missing:
            raise ValueError(f"model {spec['name']!r}: no module named {missing}; blocks are {blocks}")
        outside = [n for n in layers["names"] if n not in blocks]
        if outside:
            raise ValueError(f"model {spec['name']!r}: {outside[0]!r} is not a block; blocks are {blocks}")
        return list(layers["names"])

    module, names, shapes = _shapes_without_weights(spec, choose)
    info = model_info(module)
    blocks = info.blocks()
    chosen = [(name, blocks.index(name)) for name in names]
    ctx = info.tokens
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


def output_dim(model: dict, loss: str = "cross_entropy", loss_params: dict | None = None) -> int:
    """Width of the model output a loss reads (the extract folder's `output.npy`), without weights.

    `model` is a model entry (source, name, kwargs, input_size); built on the meta device where
    its source allows (else the CPU with random weights, as for the layers).
    """
    from .losses import loss_reads
    from .models import forward_outputs

    spec = canonical_model(model)
    kind = loss_reads(loss, loss_params)
    devices = ("meta",) if spec["source"] == "timm" else ("meta", "cpu")
    for device in devices:
        try:
            module = build(spec, device).eval()
            x = torch.empty((1, *input_shape(module)), device=next(module.parameters()).device)
            with torch.no_grad():
                return int(forward_outputs(module, x).named(kind).reshape(1, -1).shape[1])
        except (NotImplementedError, RuntimeError) as err:
            if device == devices[-1]:
                raise
            log.info("%s: cannot run on the meta device (%s); on the CPU", spec["name"], err)
    raise AssertionError("unreachable")


def _output_shapes(model: torch.nn.Module, names: Sequence[str], size: tuple[int, int, int]) -> dict:
    shapes: dict[str, tuple] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[n].register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape))) for n in names
    ]
    try:
        with torch.no_grad():
            device = next(model.parameters(), torch.empty(0, device="meta")).device
            model(torch.empty((1, *size), device=device))
    finally:
        for h in handles:
            h.remove()
    return shapes
