"""Activations and backpropagated gradients of any timm model's blocks (needs torch).

One tracked forward and one backward pass per batch give, for every selected block k,
the activation h_k(x) and the gradient dL/dh_k(x) (METHOD.md §2). Parameters are frozen,
the model runs in eval mode, so a batched backward of the summed loss gives every image
its own gradient.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..io import read_table, write_table
from . import learning_rules

__all__ = [
    "BLOCK_PATTERNS",
    "POOLINGS",
    "LOSSES",
    "LOSS_PREPARERS",
    "LossBatch",
    "PROJECTION_DEFAULTS",
    "SIGNALS",
    "Feedback",
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
    "PRECISIONS",
    "ImageDataset",
    "image_loader",
    "batch_size_from_memory",
    "auto_batch_size",
    "Progress",
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
    output: torch.Tensor | None = None  # what the loss read (logits or embedding): e = dL/d(output)

    def logits(self) -> torch.Tensor:
        """Classifier output (B, classes) of the tracked pass."""
        head = getattr(self.model, "forward_head", None)
        return self._output(head(self.features) if head else self.features)

    def embedding(self) -> torch.Tensor:
        """Pooled pre-logits (B, dim) of the tracked pass."""
        return self._output(self.model.forward_head(self.features, pre_logits=True))

    def _output(self, out: torch.Tensor) -> torch.Tensor:
        # Without a tracked forward (dfa alone), the output is a leaf: dL/d(output) is still defined.
        self.output = out if out.requires_grad else out.detach().requires_grad_(True)
        return self.output


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


def _prepare_shuffled(model: torch.nn.Module, batches: Iterable[torch.Tensor], params: dict) -> dict:
    """Own top-1 labels of the whole set, permuted across images by a seeded permutation."""
    device = next(model.parameters()).device
    top1 = []
    with torch.no_grad():
        for images in batches:
            logits = model(images.to(device))
            _check_logits(model, logits, "cross_entropy_shuffled")
            top1.append(logits.argmax(dim=1).cpu().numpy())
    labels = np.concatenate(top1)
    shuffled = labels[np.random.default_rng(int(params.get("seed", 0))).permutation(len(labels))]
    changed = int((shuffled != labels).sum())
    # A network that predicts one class for every image (random weights, usually) has nothing to
    # shuffle: the control's gradients then equal the model's. Say so rather than hide it.
    level = logging.WARNING if changed == 0 else logging.INFO
    log.log(level, "cross_entropy_shuffled: %d distinct top-1 classes over %d images; the permutation "
            "changes the label of %d images%s", len(np.unique(labels)), len(labels), changed,
            " (none: this control equals the model's own loss)" if changed == 0 else "")
    return {**params, "labels": shuffled}


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
LOSS_PREPARERS: dict[str, Callable[[torch.nn.Module, Iterable[torch.Tensor], dict], dict]] = {
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


PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}

# float16 gradients of small losses underflow: the loss is scaled up, then the gradients down;
# on overflow the next (smaller) scale is tried on the retained graph.
FLOAT16_LOSS_SCALES = (2.0**12, 2.0**8, 2.0**4, 1.0, 2.0**-4)


def _autocast(device: torch.device, precision: str):
    """Autocast context of a precision (float32: none)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} unknown; valid precisions: {sorted(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def _no_tf32(device: torch.device):
    """Full float32 matrix products and convolutions on CUDA (cuDNN uses TF32 by default).

    TF32 keeps 10 mantissa bits: measured on an H200, gradients of a random ResNet-18 then
    correlate with CPU float32 ones at only r = 0.9986, and features change with batch size.
    """
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _gradients(value: torch.Tensor, outs: list[torch.Tensor], precision: str) -> list[torch.Tensor]:
    """dL/d(out) for every output, in float32 (scaled against float16 underflow)."""
    scales = FLOAT16_LOSS_SCALES if precision == "float16" else (1.0,)
    for attempt, scale in enumerate(scales):
        last = attempt == len(scales) - 1
        grads = torch.autograd.grad(value * scale, outs, allow_unused=True, retain_graph=not last)
        grads = [torch.zeros_like(o, dtype=torch.float32) if g is None else g.float() / scale
                 for o, g in zip(outs, grads)]
        if last or all(torch.isfinite(g).all() for g in grads):
            return grads
    raise AssertionError("unreachable")


SIGNALS = ("act", "grad", "fa", "dfa", "sign")


class Feedback:
    """The feedback matrices of one extraction (learning_rules), made once and kept on the device."""

    def __init__(self, model: torch.nn.Module, seed: int = 0):
        self.model, self.seed = model, int(seed)
        self._rules: dict[str, dict[str, torch.Tensor]] = {}
        self._dfa: dict[tuple[int, int, int], torch.Tensor] = {}

    def rule(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self._rules:
            self._rules[name] = learning_rules.feedback_matrices(self.model, name, self.seed)
        return self._rules[name]

    def dfa(self, layer_index: int, n_outputs: int, dim: int, device: torch.device) -> torch.Tensor:
        key = (layer_index, n_outputs, dim)
        if key not in self._dfa:
            self._dfa[key] = learning_rules.dfa_matrix(n_outputs, dim, self.seed, layer_index).to(device)
        return self._dfa[key]


@dataclass
class _Pass:
    outs: list[torch.Tensor]  # block outputs
    grads: list[torch.Tensor] | None  # dL/d(out) through the pass's backward (float32)
    output_error: torch.Tensor | None  # dL/d(network output) (float32)


def _run_pass(model, images, names, loss, params, ids, index, precision, track: bool, output_error: bool,
              feedback: dict[str, torch.Tensor] | None = None) -> _Pass:
    """One forward pass (tracked when block gradients are wanted) and the loss's gradients."""
    rec = _Recorder(model, names)
    try:
        with torch.set_grad_enabled(track), _no_tf32(images.device), learning_rules.use_feedback(model, feedback):
            with _autocast(images.device, precision):
                features = _forward_features(model, images)
                outs = [rec.outputs[n] for n in names]
            if not (track or output_error):
                return _Pass(outs, None, None)
            with torch.enable_grad():
                with _autocast(images.device, precision):
                    batch = LossBatch(model, features, images, ids, index, _untracked(model, rec))
                    value = LOSSES[loss](batch, params).float()
                targets = (outs if track else []) + ([batch.output] if output_error else [])
                grads = _gradients(value, targets, precision)
            return _Pass(outs, grads[:len(outs)] if track else None, grads[-1] if output_error else None)
    finally:
        rec.remove()


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
    precision: str = "float32",
    feedback: Feedback | None = None,
) -> dict[str, list[torch.Tensor]]:
    """Pooled features of the named blocks for one batch: {signal: [(B, dim)]}.

    Signals: `act` (activations), `grad` (backpropagated dL/dh), `fa` and `sign` (the error a
    backward pass through feedback matrices delivers), `dfa` (the output error through each
    layer's direct feedback matrix); see `learning_rules`. `ids` (image ids) seed per-image
    augmentations and `index` (positions in the whole image set) aligns given labels; both
    default to the batch positions. Under a reduced `precision` the forward pass runs in
    autocast; pooled features are float32 either way.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r} unknown; valid losses: {sorted(LOSSES)}")
    unknown = sorted(set(signals) - set(SIGNALS))
    if unknown:
        raise ValueError(f"signals {unknown} unknown; valid signals: {list(SIGNALS)}")
    index = np.arange(len(images)) if index is None else np.asarray(index)
    ids = [str(i) for i in index] if ids is None else [str(i) for i in ids]
    params = loss_params or {}
    feedback = feedback or Feedback(model)
    ctx = _token_context(model)

    def pooled(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [project(pool(t.detach().float(), pooling, ctx), pooling, k) for k, t in enumerate(tensors)]

    out: dict[str, list[torch.Tensor]] = {}
    passes = []  # every pass computes the same activations: one is enough
    for rule in learning_rules.FEEDBACK_SIGNALS:
        if rule in signals:
            passes.append(_run_pass(model, images, names, loss, params, ids, index, precision, track=True,
                                    output_error=False, feedback=feedback.rule(rule)))
            out[rule] = pooled(passes[-1].grads)
    if {"grad", "dfa"} & set(signals) or not passes:
        passes.append(_run_pass(model, images, names, loss, params, ids, index, precision,
                                track="grad" in signals, output_error="dfa" in signals))
    last = passes[-1]
    acts = pooled(last.outs) if {"act", "dfa"} & set(signals) else []
    if "act" in signals:
        out["act"] = acts
    if "grad" in signals:
        out["grad"] = pooled(last.grads)
    if "dfa" in signals:
        e = last.output_error.reshape(len(images), -1)
        out["dfa"] = [e @ feedback.dfa(k, e.shape[1], a.shape[1], e.device) for k, a in enumerate(acts)]
    return {s: out[s] for s in signals}


def _is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)


class _BatchRunner:
    """Runs batches through `extract_batch`, splitting a batch in halves when memory runs out."""

    def __init__(self, model, names, pooling, loss, params, signals, precision, seed: int = 0):
        self.args = (names, pooling, loss, params, signals)
        self.model = model
        self.precision = precision
        self.feedback = Feedback(model, seed)
        self.largest_fit: int | None = None  # smallest batch size that ran out of memory, halved

    def __call__(self, images: torch.Tensor, ids: Sequence[str], index: np.ndarray) -> dict[str, list[np.ndarray]]:
        names, pooling, loss, params, signals = self.args
        if self.largest_fit and len(images) > self.largest_fit:  # known not to fit: split at once
            return self._chunks(images, ids, index, self.largest_fit)
        try:
            out = extract_batch(self.model, images, names, pooling, loss, params, signals, ids, index, self.precision,
                                self.feedback)
            return {s: [a.cpu().numpy().astype(np.float32) for a in arrays] for s, arrays in out.items()}
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not _is_out_of_memory(err) or len(images) == 1:
                raise
        half = len(images) // 2
        self.largest_fit = half if self.largest_fit is None else min(self.largest_fit, half)
        log.warning("out of memory on a batch of %d images; from now on batches of at most %d",
                    len(images), self.largest_fit)
        if images.is_cuda:
            torch.cuda.empty_cache()
        return self._chunks(images, ids, index, half)

    def _chunks(self, images: torch.Tensor, ids: Sequence[str], index: np.ndarray,
                size: int) -> dict[str, list[np.ndarray]]:
        parts = [self(images[i:i + size], ids[i:i + size], index[i:i + size]) for i in range(0, len(images), size)]
        return {s: [np.concatenate([p[s][k] for p in parts]) for k in range(len(parts[0][s]))] for s in parts[0]}


def _collect(runner: _BatchRunner, batches: Iterable[tuple[torch.Tensor, np.ndarray]], ids: Sequence[str],
             device: torch.device, on_batch: Callable[[int], None] | None = None) -> dict[str, list[np.ndarray]]:
    """Run every (images, positions) batch and concatenate the features per signal and layer."""
    chunks: dict[str, list[list[np.ndarray]]] = {}
    for images, index in batches:
        index = np.asarray(index)
        images = images.to(device, non_blocking=True)
        result = runner(images, [ids[i] for i in index], index)
        for signal, arrays in result.items():
            lists = chunks.setdefault(signal, [[] for _ in arrays])
            for k, a in enumerate(arrays):
                lists[k].append(a)
        if on_batch:
            on_batch(len(index))
    return {s: [np.concatenate(c) for c in lists] for s, lists in chunks.items()}


def _prepared_params(model, loss: str, params: dict | None, signals: Sequence[str],
                     batches: Callable[[], Iterable[torch.Tensor]]) -> dict:
    """The loss's parameters, completed over the whole image set when the loss needs it."""
    params = dict(params or {})
    if loss in LOSS_PREPARERS and set(signals) - {"act"}:
        params = LOSS_PREPARERS[loss](model, batches(), params)
    return params


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
    precision: str = "float32",
    seed: int = 0,
) -> dict[str, list[np.ndarray]]:
    """Activations and gradients for a stack of preprocessed images: {signal: [(n_images, dim)]}.

    `image_ids` (default: the positions "0", "1", ...) seed per-image augmentations; the
    k-th name's projection (if any) is seeded by k, its layer index; `seed` seeds the
    feedback matrices of the fa and dfa signals.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r} unknown; valid losses: {sorted(LOSSES)}")
    ids = [str(i) for i in range(len(images))] if image_ids is None else [str(i) for i in image_ids]
    if len(ids) != len(images):
        raise ValueError(f"{len(ids)} image ids for {len(images)} images; expected one id per image")
    starts = range(0, len(images), batch_size)
    params = _prepared_params(
        model, loss, loss_params, signals, lambda: (images[s:s + batch_size] for s in starts)
    )
    device = next(model.parameters()).device
    runner = _BatchRunner(model, names, pooling, loss, params, signals, precision, seed)
    done = [0]

    def on_batch(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], len(images))

    batches = ((images[s:s + batch_size], np.arange(s, min(s + batch_size, len(images)))) for s in starts)
    return _collect(runner, batches, ids, device, on_batch)


# ---------------------------------------------------------------- the extract rule


class ImageDataset(torch.utils.data.Dataset):
    """The images of a manifest, opened lazily and preprocessed: items are (image, position)."""

    def __init__(self, manifest_path: str | Path, transform: Callable):
        from ..stimuli import load_manifest

        self.root = Path(manifest_path).parent
        self.paths = list(load_manifest(manifest_path)["path"])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with Image.open(self.root / self.paths[i]) as image:
            return self.transform(image.convert("RGB")), i


def image_loader(dataset: ImageDataset, spans: Sequence[tuple[int, int]], batch_size: int, workers: int,
                 device: torch.device) -> torch.utils.data.DataLoader:
    """Batches of positions [start, stop) of each span in order, no batch crossing a span's end.

    One loader serves every span (worker processes start once per job), with pinned memory on CUDA.
    """
    batches = [list(range(b, min(b + batch_size, stop))) for start, stop in spans
               for b in range(start, stop, batch_size)]
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda",
    )


def batch_size_from_memory(peak_small: int, peak_large: int, small: int, large: int, free: int,
                           fraction: float = 0.8, cap: int = 256) -> int:
    """Largest batch whose projected peak memory fits `fraction` of the free memory (bytes)."""
    per_image = max((peak_large - peak_small) / (large - small), 1.0)
    fixed = max(peak_small - small * per_image, 0.0)
    return int(max(1, min(cap, (free * fraction - fixed) // per_image)))


def auto_batch_size(run: Callable[[torch.Tensor], object], sample: torch.Tensor, device: torch.device,
                    fallback: int = 32, cap: int = 256) -> int:
    """Batch size from the memory two probe batches take on CUDA (`fallback` on CPU)."""
    if device.type != "cuda":
        return fallback
    small, large = 2, 6
    peaks = []
    for b in (small, large):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run(sample[:1].expand(b, *sample.shape[1:]).contiguous().to(device))
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    free, _ = torch.cuda.mem_get_info(device)
    size = batch_size_from_memory(peaks[0], peaks[1], small, large, free, cap=cap)
    log.info("auto batch size: %d (probe peaks %.0f/%.0f MiB for %d/%d images, %.0f MiB free)",
             size, peaks[0] / 2**20, peaks[1] / 2**20, small, large, free / 2**20)
    return size


class Progress:
    """Images done, images/s and ETA: a bar on a terminal, and a log line every `every_s` seconds."""

    def __init__(self, total: int, done: int = 0, every_s: float = 30.0, label: str = "extract"):
        import sys

        from tqdm.auto import tqdm

        self.total, self.done, self.every_s, self.label = total, done, every_s, label
        self.started = self.last = time.monotonic()
        self.first = done
        self.bar = tqdm(total=total, initial=done, unit="img", desc=label, disable=not sys.stderr.isatty())

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            self.report()

    def report(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (self.done - self.first) / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        log.info("%s: %d/%d images, %.1f images/s, ETA %.0f s", self.label, self.done, self.total, rate, eta)

    def close(self) -> None:
        self.bar.close()


def _data_config(model_spec: dict) -> dict:
    """timm's preprocessing for the model (from a weightless copy), as JSON-ready values."""
    model = _build(model_spec["timm_name"], "meta", model_spec.get("input_size"), model_spec.get("timm_kwargs"))
    return _preprocessing(model, model_spec.get("input_size"))


def _preprocessing(model: torch.nn.Module, input_size: int | None) -> dict:
    from timm.data import resolve_data_config

    overrides = {"input_size": (3, input_size, input_size), "crop_pct": 1.0} if input_size else {}
    cfg = resolve_data_config(overrides, model=model)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(cfg.items())}


def _workers(workers: int | str, device: torch.device, threads: int | None) -> int:
    """Loader worker processes: `auto` is none on CPU (the cores compute) and up to 4 on CUDA."""
    if workers != "auto":
        return int(workers)
    if device.type != "cuda":
        return 0
    return max(1, min(4, (threads or 2) - 1))


def run_extract(
    manifest_path: Path,
    layers_path: Path,
    out_dir: Path,
    model_spec: dict,
    pooling: dict,
    seed: int,
    device: str = "auto",
    batch_size: int | str = 16,
    signals: Sequence[str] | None = None,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    shard_size: int = 1024,
    workers: int | str = "auto",
    storage_dtype: str = "float32",
    progress_every_s: float = 30.0,
) -> str:
    """Entry point of the extract rule: features of every selected layer into `out_dir`; returns the cache key.

    Images are extracted in shards cached under `cache_dir` (default: beside `out_dir`) by the
    extraction's identity, so a killed job resumes at the first unverified shard.
    """
    from ..stimuli import load_manifest
    from .cache import ShardCache, feature_identity

    if threads:
        torch.set_num_threads(threads)  # the rule's share of the CPU, not every core
    spec = dict(model_spec)
    spec["signals"] = list(signals or model_spec.get("signals") or ("act", "grad"))
    layers = read_table(layers_path)
    names = list(layers["layer"])
    manifest = load_manifest(manifest_path)
    identity = feature_identity(
        spec, seed, _data_config(spec), names, pooling, manifest, storage_dtype
    )
    cache_dir = Path(cache_dir) if cache_dir else Path(out_dir).parent / ".cache"
    cache = ShardCache(cache_dir, identity, len(manifest), shard_size, spec["signals"], len(names))
    log.info("extract %s: %d images, %d layers, signals %s, cache key %s",
             spec["timm_name"], len(manifest), len(names), spec["signals"], cache.key)
    with cache.lock():
        if cache.is_assembled():
            log.info("cache %s: complete; nothing to extract", cache.root)
        else:
            _extract_shards(cache, manifest_path, manifest, spec, names, pooling, seed, device, batch_size,
                            threads, workers, progress_every_s)
            cache.assemble()
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        cache.link_into(out_dir)
    write_table(Path(out_dir) / "samples.parquet", manifest[["image_id", "group"]],
                metadata={"cache_key": cache.key, "identity": identity})
    return cache.key


def _check_finite(feats: dict[str, list[np.ndarray]], timm_name: str, names: Sequence[str], shard,
                  precision: str) -> None:
    """Stop (before the shard is stored) when any feature is NaN or infinite."""
    hint = "; try precision bfloat16 or float32" if precision == "float16" else ""
    for signal, arrays in feats.items():
        for k, array in enumerate(arrays):
            if not np.isfinite(array).all():
                raise ValueError(
                    f"model {timm_name}: non-finite {signal} at layer {k} ({names[k]}) in images "
                    f"{shard.start}-{shard.stop - 1}{hint}"
                )


def _extract_shards(cache, manifest_path, manifest, spec, names, pooling, seed, device, batch_size, threads,
                    workers, progress_every_s) -> None:
    """Extract the cache's pending shards and store each one with its checksums."""
    pending = cache.pending()
    if not pending:
        return
    dev = resolve_device(device)
    model = create_model(spec["timm_name"], spec["weights"], seed, spec.get("input_size"), spec.get("timm_kwargs"))
    model.to(dev)
    precision = spec.get("precision", "float32")
    dataset = ImageDataset(manifest_path, _transform(model, spec.get("input_size")))
    n_workers = _workers(workers, dev, threads)
    torch.manual_seed(seed)
    loss = spec.get("loss", "cross_entropy")
    if batch_size == "auto":
        probe = _BatchRunner(model, names, pooling, loss, spec.get("loss_params") or {}, spec["signals"], precision)
        sample = dataset[0][0][None]
        batch_size = auto_batch_size(
            lambda x: probe(x, ["probe"] * len(x), np.zeros(len(x), dtype=int)), sample, dev
        )
    batch_size = int(batch_size)
    params = _prepared_params(
        model, loss, spec.get("loss_params"), spec["signals"],
        lambda: (x for x, _ in image_loader(dataset, [(0, len(dataset))], batch_size, n_workers, dev)),
    )
    runner = _BatchRunner(model, names, pooling, loss, params, spec["signals"], precision, seed)
    ids = [str(i) for i in manifest["image_id"]]
    done = len(manifest) - sum(s.size for s in pending)
    progress = Progress(len(manifest), done, progress_every_s)
    log.info("extracting %d shard(s) on %s, batch size %d, %d loader worker(s), precision %s",
             len(pending), dev, batch_size, n_workers, precision)
    batches = iter(image_loader(dataset, [(s.start, s.stop) for s in pending], batch_size, n_workers, dev))
    try:
        for shard in pending:
            shard_batches = itertools.islice(batches, -(-shard.size // batch_size))
            feats = _collect(runner, shard_batches, ids, dev, progress.update)
            _check_finite(feats, spec["timm_name"], names, shard, precision)
            cache.write_shard(shard, feats)
            log.info("shard %d/%d stored (images %d-%d)", shard.index + 1, len(cache.shards), shard.start,
                     shard.stop - 1)
    finally:
        progress.close()
