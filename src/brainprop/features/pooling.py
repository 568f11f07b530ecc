"""Token pooling of a block's output (METHOD.md §2): cls, mean, cls_mean, grid; alike for activations and gradients."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["POOLINGS", "TokenContext", "pool", "token_context"]


@dataclass(frozen=True)
class TokenContext:
    """How to read a (batch, tokens, channels) output: prefix tokens and register tokens."""

    num_prefix_tokens: int = 0
    num_reg_tokens: int = 0
    has_class_token: bool = False
    channels_last: bool = False  # 4-d block outputs are (B, H, W, C), as in Swin or MambaOut


def token_context(model: torch.nn.Module) -> TokenContext:
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    regs = int(getattr(model, "num_reg_tokens", 0) or 0)
    # SAM's ViT keeps no output_fmt on the model: its patch embedding's format is the blocks' one.
    fmt = getattr(model, "output_fmt", None) or getattr(getattr(model, "patch_embed", None), "output_fmt", "NCHW")
    channels_last = getattr(fmt, "value", fmt) == "NHWC"
    return TokenContext(prefix, regs, has_class_token=prefix - regs > 0, channels_last=channels_last)


def _as_map(x: torch.Tensor, ctx: TokenContext) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split an output into a (B, C, H, W) map of patch tokens and the class token (or None)."""
    if x.ndim == 4:
        return (x.permute(0, 3, 1, 2) if ctx.channels_last else x), None
    if x.ndim != 3:
        raise ValueError(f"cannot pool an output of shape {tuple(x.shape)}; expected (B,C,H,W) or (B,N,C)")
    cls = x[:, 0] if ctx.has_class_token else None
    patches = x[:, ctx.num_prefix_tokens :]
    side = int(round(patches.shape[1] ** 0.5))
    if side * side != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid")
    return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side), cls


def _pool_mean(x: torch.Tensor, spec: dict, ctx: TokenContext) -> torch.Tensor:
    fmap, _ = _as_map(x, ctx)
    return fmap.mean(dim=(2, 3))


def _pool_cls(x: torch.Tensor, spec: dict, ctx: TokenContext) -> torch.Tensor:
    fmap, cls = _as_map(x, ctx)
    if cls is None:
        raise ValueError("pooling 'cls' needs a model with a class token; use 'mean' or 'grid'")
    return cls


def _pool_cls_mean(x: torch.Tensor, spec: dict, ctx: TokenContext) -> torch.Tensor:
    return torch.cat([_pool_cls(x, spec, ctx), _pool_mean(x, spec, ctx)], dim=1)


def _pool_grid(x: torch.Tensor, spec: dict, ctx: TokenContext) -> torch.Tensor:
    fmap, cls = _as_map(x, ctx)
    g = int(spec.get("grid", 2))
    pooled = F.adaptive_avg_pool2d(fmap, g).flatten(1)
    return pooled if cls is None else torch.cat([cls, pooled], dim=1)


POOLINGS: dict[str, Callable[[torch.Tensor, dict, TokenContext], torch.Tensor]] = {
    "mean": _pool_mean,
    "cls": _pool_cls,
    "cls_mean": _pool_cls_mean,
    "grid": _pool_grid,
}


def pool(x: torch.Tensor, spec: dict, ctx: TokenContext = TokenContext()) -> torch.Tensor:
    """Pool one block output (B, C, H, W) or (B, N, C) to (B, dim) by the named mode."""
    mode = spec.get("mode", "grid")
    if mode not in POOLINGS:
        raise ValueError(f"pooling mode {mode!r} unknown; valid modes: {sorted(POOLINGS)}")
    return POOLINGS[mode](x, spec, ctx)
