"""Activations and backpropagated gradients of any timm model's blocks (needs torch).

One tracked forward and one backward pass per batch give, for every selected block k,
the activation h_k(x) and the gradient dL/dh_k(x) (METHOD.md §2). Parameters are frozen,
the model runs in eval mode, so a batched backward of the summed loss gives every image
its own gradient.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..io import read_table, save_array, write_table
from . import feature_path

__all__ = [
    "BLOCK_PATTERNS",
    "POOLINGS",
    "LOSSES",
    "LOSS_PREPARERS",
    "LossBatch",
    "PROJECTION_DEFAULTS",
    "SELF_DISTILLATION_DEFAULTS",
    "projected_dim",
    "projection_matrix",
    "project",
    "image_seed",
    "teacher_view",
    "prototypes",
    "find_blocks",
    "select_layers",
    "resolve_layers",
    "create_model",
    "pool",
    "extract_features",
    "run_extract",
]

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


def _input_size(model: torch.nn.Module, input_size: int | None) -> tuple[int, int, int]:
    from timm.data import resolve_data_config

    size = resolve_data_config({}, model=model)["input_size"]
    return (3, input_size, input_size) if input_size else tuple(size)


def _build(
    timm_name: str,
    device: str | torch.device,
    input_size: int | None = None,
    kwargs: dict | None = None,
    pretrained: bool = False,
) -> torch.nn.Module:
    import timm

    kwargs = dict(kwargs or {})
    if input_size and _accepts_img_size(timm_name):
        kwargs["img_size"] = input_size
    with torch.device(device):
        return timm.create_model(timm_name, pretrained=pretrained, **kwargs)


def _accepts_img_size(timm_name: str) -> bool:
    return bool(re.match(r"(vit|deit|eva|beit|dinov|swin|vit_)", timm_name))


def resolve_layers(
    timm_name: str, layers: dict, pooling: dict, input_size: int | None = None, timm_kwargs: dict | None = None
) -> pd.DataFrame:
    """Resolve the selected layers of a model without weights (meta device).

    Returns a table with columns layer, layer_index, ordinal, depth, dim (pooled dimension).
    """
    model = _build(timm_name, "meta", input_size, timm_kwargs).eval()
    blocks = find_blocks(model)
    if layers.get("names"):
        modules = dict(model.named_modules())
        missing = [n for n in layers["names"] if n not in modules]
        if missing:
            raise ValueError(
                f"model {timm_name!r}: no module named {missing}; blocks are {blocks}"
            )
        chosen = []
        for name in layers["names"]:
            ordinal = blocks.index(name) if name in blocks else None
            if ordinal is None:
                raise ValueError(f"model {timm_name!r}: {name!r} is not a block; blocks are {blocks}")
            chosen.append((name, ordinal))
    else:
        chosen = select_layers(blocks, int(layers.get("n", 22)))
    shapes = _output_shapes(model, [c[0] for c in chosen], _input_size(model, input_size))
    ctx = _token_context(model)
    dims = [
        projected_dim(pool(torch.empty(shapes[name], device="meta"), pooling, ctx).shape[1], pooling)
        for name, _ in chosen
    ]
    return pd.DataFrame({
        "layer": [c[0] for c in chosen],
        "layer_index": np.arange(len(chosen), dtype=np.int64),
        "ordinal": np.array([c[1] for c in chosen], dtype=np.int64),
        "depth": np.array(_depths([c[1] for c in chosen], len(blocks)), dtype=np.float64),
        "dim": np.array(dims, dtype=np.int64),
    })


def _output_shapes(model: torch.nn.Module, names: Sequence[str], size: tuple[int, int, int]) -> dict:
    shapes: dict[str, tuple] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[n].register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape)))
        for n in names
    ]
    try:
        with torch.no_grad():
            model(torch.empty((1, *size), device="meta"))
    finally:
        for h in handles:
            h.remove()
    return shapes


# ---------------------------------------------------------------- pooling


@dataclass(frozen=True)
class TokenContext:
    """How to read a (batch, tokens, channels) output: prefix tokens and register tokens."""

    num_prefix_tokens: int = 0
    num_reg_tokens: int = 0
    has_class_token: bool = False
    channels_last: bool = False  # 4-d block outputs are (B, H, W, C), as in Swin or MambaOut


def _token_context(model: torch.nn.Module) -> TokenContext:
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
    patches = x[:, ctx.num_prefix_tokens:]
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


# ---------------------------------------------------------------- projection

PROJECTION_DEFAULTS: dict = {"dim": 4096, "above": 16384, "seed": 0}


def _projection_spec(spec: dict) -> dict:
    return {**PROJECTION_DEFAULTS, **(spec.get("projection") or {})}


def projected_dim(dim: int, spec: dict) -> int:
    """Feature dimension after the pooling spec's projection (unchanged when it does not apply)."""
    proj = _projection_spec(spec)
    return int(proj["dim"]) if proj["dim"] and dim > int(proj["above"]) else int(dim)


@functools.lru_cache(maxsize=64)
def projection_matrix(n_features: int, n_components: int, seed: int, layer_index: int) -> torch.Tensor:
    """Very sparse random projection (Li et al. 2006), sparse COO of shape (n_features, n_components).

    Entries are +-sqrt(s / n_components) with probability 1/(2s) each and 0 otherwise,
    s = sqrt(n_features), so squared norms are preserved in expectation. Column j draws its
    number of non-zeros ~ Binomial(n_features, 1/s), their rows without replacement and their
    signs from numpy's generator seeded by (seed, layer_index, n_features).
    """
    s = np.sqrt(n_features)
    rng = np.random.default_rng([int(seed), int(layer_index), int(n_features)])
    rows, cols, signs = [], [], []
    for j in range(n_components):
        nnz = rng.binomial(n_features, 1.0 / s)
        rows.append(rng.choice(n_features, nnz, replace=False))
        cols.append(np.full(nnz, j))
        signs.append(rng.choice([-1.0, 1.0], nnz))
    index = torch.from_numpy(np.stack([np.concatenate(rows), np.concatenate(cols)]).astype(np.int64))
    values = torch.from_numpy(np.concatenate(signs) * np.sqrt(s / n_components))
    return torch.sparse_coo_tensor(index, values, (n_features, n_components), check_invariants=True).coalesce()


def project(x: torch.Tensor, spec: dict, layer_index: int) -> torch.Tensor:
    """Apply the pooling spec's sparse random projection to pooled features (B, dim), if it applies."""
    proj = _projection_spec(spec)
    if projected_dim(x.shape[1], spec) == x.shape[1]:
        return x
    matrix = projection_matrix(x.shape[1], int(proj["dim"]), int(proj["seed"]), int(layer_index))
    out = torch.sparse.mm(matrix.to(x.device).t(), x.double().t()).t()
    return out.to(x.dtype)


# ---------------------------------------------------------------- losses


@dataclass
class LossBatch:
    """What a loss sees of one batch: the tracked pass, the images and their place in the set."""

    model: torch.nn.Module
    features: torch.Tensor  # forward_features output of the tracked pass (in the autograd graph)
    images: torch.Tensor  # (B, 3, H, W) preprocessed
    ids: list[str]  # image ids, in batch order
    index: np.ndarray  # (B,) positions of the images in the whole set
    untracked: Callable[[torch.Tensor], torch.Tensor]  # pre-logits of a no-grad, unhooked pass

    def logits(self) -> torch.Tensor:
        """Classifier output (B, classes) of the tracked pass."""
        head = getattr(self.model, "forward_head", None)
        return head(self.features) if head else self.features

    def embedding(self) -> torch.Tensor:
        """Pooled pre-logits (B, dim) of the tracked pass."""
        return self.model.forward_head(self.features, pre_logits=True)


def _check_logits(model: torch.nn.Module, logits: torch.Tensor, loss: str) -> None:
    # A headless model (num_classes=0) returns pooled features of shape (batch, dim): not logits.
    if logits.ndim != 2 or logits.shape[1] < 2 or getattr(model, "num_classes", None) == 0:
        raise ValueError(
            f"loss {loss!r} needs a classifier head (logits of shape (batch, classes)); "
            f"this model outputs {tuple(logits.shape)}. Give a model with a classifier head, "
            "or use loss 'self_distillation'."
        )


def _given_labels(labels, batch: LossBatch, n_classes: int) -> torch.Tensor:
    """Labels of the batch from a mapping image_id -> class or an array aligned to the image set."""
    if isinstance(labels, dict):
        missing = [i for i in batch.ids if i not in labels]
        if missing:
            raise ValueError(f"loss_params.labels has no label for image ids {missing[:5]}")
        values = np.array([labels[i] for i in batch.ids])
    else:
        values = np.asarray(labels)[batch.index]
    if values.dtype.kind not in "iu" or values.min() < 0 or values.max() >= n_classes:
        raise ValueError(f"loss_params.labels {values[:5].tolist()}...: expected integers in [0, {n_classes})")
    return torch.as_tensor(values, dtype=torch.long, device=batch.features.device)


def _loss_cross_entropy(batch: LossBatch, params: dict) -> torch.Tensor:
    logits = batch.logits()
    _check_logits(batch.model, logits, "cross_entropy")
    if params.get("labels") is not None:
        target = _given_labels(params["labels"], batch, logits.shape[1])
    else:
        target = logits.detach().argmax(dim=1)
    return F.cross_entropy(logits, target, reduction="sum")


def _prepare_shuffled(model: torch.nn.Module, images: torch.Tensor, params: dict, batch_size: int) -> dict:
    """Own top-1 labels of the whole set, permuted across images by a seeded permutation."""
    device = next(model.parameters()).device
    top1 = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits = model(images[start:start + batch_size].to(device))
            _check_logits(model, logits, "cross_entropy_shuffled")
            top1.append(logits.argmax(dim=1).cpu().numpy())
    labels = np.concatenate(top1)
    perm = np.random.default_rng(int(params.get("seed", 0))).permutation(len(labels))
    return {**params, "labels": labels[perm]}


def _loss_cross_entropy_shuffled(batch: LossBatch, params: dict) -> torch.Tensor:
    if params.get("labels") is None:
        raise ValueError("loss 'cross_entropy_shuffled' runs through extract_features, which permutes the labels")
    return _loss_cross_entropy(batch, params)


SELF_DISTILLATION_DEFAULTS: dict = {
    "n_prototypes": 4096,
    "temperature_student": 0.1,
    "temperature_teacher": 0.04,
    "crop_scale": (0.4, 1.0),
    "flip": 0.5,
    "jitter": 0.4,
    "seed": 0,
}


def image_seed(image_id: str, seed: int = 0) -> np.random.SeedSequence:
    """Seed of one image's augmented view: (seed, first 8 bytes of sha256(image_id))."""
    digest = int.from_bytes(hashlib.sha256(str(image_id).encode()).digest()[:8], "little")
    return np.random.SeedSequence([int(seed), digest])


def _crop_box(rng: np.random.Generator, h: int, w: int, scale: Sequence[float]) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (ratio 3/4 to 4/3, 10 tries, else the whole image)."""
    for _ in range(10):
        area = h * w * rng.uniform(scale[0], scale[1])
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    return 0, 0, h, w


def _jitter(x: torch.Tensor, factors: np.ndarray) -> torch.Tensor:
    """Brightness, contrast, saturation (in this order) of a (3, H, W) image in [0, 1]."""
    gray = lambda t: (0.299 * t[0] + 0.587 * t[1] + 0.114 * t[2])[None]  # noqa: E731
    x = (x * factors[0]).clamp(0, 1)
    x = (factors[1] * x + (1 - factors[1]) * gray(x).mean()).clamp(0, 1)
    return (factors[2] * x + (1 - factors[2]) * gray(x)).clamp(0, 1)


def teacher_view(image: torch.Tensor, image_id: str, mean: Sequence[float], std: Sequence[float],
                 params: dict | None = None) -> torch.Tensor:
    """The deterministic augmented view (3, H, W) of one preprocessed image, seeded by its id."""
    p = {**SELF_DISTILLATION_DEFAULTS, **(params or {})}
    rng = np.random.default_rng(image_seed(image_id, p["seed"]))
    _, h, w = image.shape
    top, left, ch, cw = _crop_box(rng, h, w, p["crop_scale"])
    flip = rng.random() < p["flip"]
    factors = rng.uniform(1 - p["jitter"], 1 + p["jitter"], size=3)
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device)[:, None, None]
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device)[:, None, None]
    crop = image[None, :, top:top + ch, left:left + cw]
    view = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    view = view.flip(-1) if flip else view
    return (_jitter(view * s + m, factors) - m) / s


@functools.lru_cache(maxsize=8)
def prototypes(dim: int, n_prototypes: int = 4096, seed: int = 0) -> torch.Tensor:
    """Fixed prototype head (n_prototypes, dim): standard normal rows (numpy, seeded) scaled to unit norm."""
    w = np.random.default_rng(int(seed)).standard_normal((n_prototypes, dim))
    return torch.from_numpy(w / np.linalg.norm(w, axis=1, keepdims=True))


def _norm_stats(model: torch.nn.Module) -> tuple[tuple, tuple]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))


def _loss_self_distillation(batch: LossBatch, params: dict) -> torch.Tensor:
    p = {**SELF_DISTILLATION_DEFAULTS, **params}
    mean, std = _norm_stats(batch.model)
    views = torch.stack([teacher_view(x, i, mean, std, p) for x, i in zip(batch.images, batch.ids)])
    teacher = batch.untracked(views).detach()
    student = batch.embedding()
    protos = prototypes(student.shape[1], int(p["n_prototypes"]), int(p["seed"]))
    protos = protos.to(device=student.device, dtype=student.dtype)
    s = F.normalize(student, dim=1) @ protos.T / p["temperature_student"]
    t = F.normalize(teacher, dim=1) @ protos.T / p["temperature_teacher"]
    return -(F.softmax(t, dim=1) * F.log_softmax(s, dim=1)).sum()


LOSSES: dict[str, Callable[[LossBatch, dict], torch.Tensor]] = {
    "cross_entropy": _loss_cross_entropy,
    "cross_entropy_shuffled": _loss_cross_entropy_shuffled,
    "self_distillation": _loss_self_distillation,
}

# Losses that need the whole image set before batching (so results do not depend on batch size).
LOSS_PREPARERS: dict[str, Callable[[torch.nn.Module, torch.Tensor, dict, int], dict]] = {
    "cross_entropy_shuffled": _prepare_shuffled,
}


# ---------------------------------------------------------------- model loading


def resolve_device(device: str) -> torch.device:
    """Map the config's device (auto|cpu|cuda) to a torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device(device)


def create_model(
    timm_name: str, weights: str, seed: int, input_size: int | None = None, timm_kwargs: dict | None = None
) -> torch.nn.Module:
    """Create a frozen eval-mode timm model with `random` (seeded), `pretrained` or checkpoint weights."""
    if weights == "random":
        torch.manual_seed(seed)
        model = _build(timm_name, "cpu", input_size, timm_kwargs)
    elif weights == "pretrained":
        try:
            model = _build(timm_name, "cpu", input_size, timm_kwargs, pretrained=True)
        except Exception as err:  # hub errors come in many types
            raise RuntimeError(
                f"could not load pretrained weights for {timm_name!r} ({type(err).__name__}: {err}). "
                "Without network, run the prefetch rule on a node with internet, or give a local "
                "checkpoint path as models.<alias>.weights."
            ) from err
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} (models.<alias>.weights) does not exist")
        model = _build(timm_name, "cpu", input_size, timm_kwargs)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model.load_state_dict(state)
    model.eval()
    model.requires_grad_(False)
    return model


def _transform(model: torch.nn.Module, input_size: int | None):
    from timm.data import create_transform, resolve_data_config

    overrides = {"input_size": (3, input_size, input_size), "crop_pct": 1.0} if input_size else {}
    return create_transform(**resolve_data_config(overrides, model=model))


# ---------------------------------------------------------------- extraction


class _Recorder:
    """Forward hooks that keep each selected block's output in the autograd graph."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str]):
        modules = dict(model.named_modules())
        self.outputs: dict[str, torch.Tensor] = {}
        self.active = True
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if not self.active:  # an untracked pass (a loss's teacher view) must not overwrite
                return None
            if isinstance(output, (tuple, list)):
                raise ValueError(f"block {name!r} returns a {type(output).__name__}; choose another module")
            if not output.requires_grad:
                # Frozen parameters upstream: start the graph here (nothing before is needed).
                output = output.detach().requires_grad_(True)
            self.outputs[name] = output
            return output

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _forward_features(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    fwd = getattr(model, "forward_features", None)
    return fwd(images) if fwd else model(images)


def _untracked(model: torch.nn.Module, rec: _Recorder) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pre-logits of a no-grad pass whose block outputs the recorder ignores."""

    def run(images: torch.Tensor) -> torch.Tensor:
        rec.active = False
        try:
            with torch.no_grad():
                return model.forward_head(_forward_features(model, images), pre_logits=True)
        finally:
            rec.active = True

    return run


def extract_batch(
    model: torch.nn.Module,
    images: torch.Tensor,
    names: Sequence[str],
    pooling: dict,
    loss: str,
    loss_params: dict | None = None,
    signals: Sequence[str] = ("act", "grad"),
    ids: Sequence[str] | None = None,
    index: np.ndarray | None = None,
) -> dict[str, list[torch.Tensor]]:
    """Pooled activations and gradients of the named blocks for one batch: {signal: [(B, dim)]}.

    `ids` (image ids) seed per-image augmentations and `index` (positions in the whole image
    set) aligns given labels; both default to the batch positions.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r} unknown; valid losses: {sorted(LOSSES)}")
    index = np.arange(len(images)) if index is None else np.asarray(index)
    ids = [str(i) for i in index] if ids is None else [str(i) for i in ids]
    ctx = _token_context(model)
    rec = _Recorder(model, names)
    try:
        with torch.enable_grad():
            features = _forward_features(model, images)
            outs = [rec.outputs[n] for n in names]
            out: dict[str, list[torch.Tensor]] = {}
            if "grad" in signals:
                batch = LossBatch(model, features, images, ids, index, _untracked(model, rec))
                value = LOSSES[loss](batch, loss_params or {})
                grads = torch.autograd.grad(value, outs, allow_unused=True)
                grads = [torch.zeros_like(o) if g is None else g for o, g in zip(outs, grads)]
                out["grad"] = [
                    project(pool(g.float(), pooling, ctx), pooling, k).detach() for k, g in enumerate(grads)
                ]
            if "act" in signals:
                out["act"] = [project(pool(o.detach().float(), pooling, ctx), pooling, k) for k, o in enumerate(outs)]
    finally:
        rec.remove()
    return out


def extract_features(
    model: torch.nn.Module,
    images: torch.Tensor,
    names: Sequence[str],
    pooling: dict,
    loss: str,
    batch_size: int = 16,
    loss_params: dict | None = None,
    signals: Sequence[str] = ("act", "grad"),
    progress: Callable[[int, int], None] | None = None,
    image_ids: Sequence[str] | None = None,
) -> dict[str, list[np.ndarray]]:
    """Activations and gradients for a stack of preprocessed images: {signal: [(n_images, dim)]}.

    `image_ids` (default: the positions "0", "1", ...) seed per-image augmentations; the
    k-th name's projection (if any) is seeded by k, its layer index.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r} unknown; valid losses: {sorted(LOSSES)}")
    ids = [str(i) for i in range(len(images))] if image_ids is None else [str(i) for i in image_ids]
    if len(ids) != len(images):
        raise ValueError(f"{len(ids)} image ids for {len(images)} images; expected one id per image")
    params = dict(loss_params or {})
    if loss in LOSS_PREPARERS and "grad" in signals:
        params = LOSS_PREPARERS[loss](model, images, params, batch_size)
    chunks: dict[str, list[list[np.ndarray]]] = {s: [[] for _ in names] for s in signals}
    device = next(model.parameters()).device
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device)
        index = np.arange(start, start + len(batch))
        result = extract_batch(model, batch, names, pooling, loss, params, signals, ids[start:start + len(batch)], index)
        for signal, arrays in result.items():
            for k, a in enumerate(arrays):
                chunks[signal][k].append(a.cpu().numpy().astype(np.float32))
        if progress:
            progress(min(start + batch_size, len(images)), len(images))
    return {s: [np.concatenate(c) for c in chunks[s]] for s in signals}


def _load_image_tensor(manifest_path: Path, transform) -> tuple[torch.Tensor, pd.DataFrame]:
    from ..stimuli import load_images, load_manifest

    manifest = load_manifest(manifest_path)
    tensors = [transform(img) for _, img in load_images(manifest_path)]
    return torch.stack(tensors), manifest


def run_extract(
    manifest_path: Path,
    layers_path: Path,
    out_dir: Path,
    model_spec: dict,
    pooling: dict,
    seed: int,
    device: str = "auto",
    batch_size: int = 16,
    signals: Sequence[str] = ("act", "grad"),
    threads: int | None = None,
) -> None:
    """Entry point of the extract rule: features of every selected layer into `out_dir`."""
    if threads:
        torch.set_num_threads(threads)  # the rule's share of the CPU, not every core
    layers = read_table(layers_path)
    dev = resolve_device(device)
    model = create_model(
        model_spec["timm_name"], model_spec["weights"], seed, model_spec.get("input_size"),
        model_spec.get("timm_kwargs"),
    )
    model.to(dev)
    transform = _transform(model, model_spec.get("input_size"))
    images, manifest = _load_image_tensor(Path(manifest_path), transform)
    started = time.time()

    def progress(done: int, total: int) -> None:
        rate = done / max(time.time() - started, 1e-9)
        log.info("extract: %d/%d images, %.1f images/s, ETA %.0f s", done, total, rate, (total - done) / rate)

    torch.manual_seed(seed)
    feats = extract_features(
        model, images, list(layers["layer"]), pooling, model_spec.get("loss", "cross_entropy"),
        batch_size, model_spec.get("loss_params"), signals, progress, list(manifest["image_id"]),
    )
    for signal, arrays in feats.items():
        for k, array in enumerate(arrays):
            if not np.isfinite(array).all():
                raise ValueError(f"model {model_spec['timm_name']}: non-finite {signal} at layer {k}")
            save_array(feature_path(out_dir, signal, k), array)
    write_table(Path(out_dir) / "samples.parquet", manifest[["image_id", "group"]])
