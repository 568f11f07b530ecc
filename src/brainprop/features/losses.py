"""The losses whose gradients are extracted (METHOD.md §2): a registry of objectives on a batch."""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .weights import LOSS_FILES

__all__ = [
    "CONTRASTIVE_DEFAULTS",
    "CONTRASTIVE_FORMS",
    "HEAD_INPUTS",
    "LOSSES",
    "LOSS_FILES",
    "LOSS_PREPARERS",
    "LOSS_READS",
    "LossBatch",
    "LossFileError",
    "SELF_DISTILLATION_DEFAULTS",
    "image_seed",
    "load_head",
    "load_text_embeddings",
    "loss_file",
    "loss_reads",
    "prototypes",
    "teacher_view",
]

if TYPE_CHECKING:
    from .models import Outputs

log = logging.getLogger(__name__)


@dataclass
class LossBatch:
    """What a loss sees of one batch: the tracked pass, the images and their place in the set."""

    model: torch.nn.Module
    outputs: Outputs  # logits and embedding of the tracked pass (in the autograd graph)
    images: torch.Tensor  # (B, 3, H, W) preprocessed
    ids: list[str]  # image ids, in batch order
    index: np.ndarray  # (B,) positions of the images in the whole set
    untracked: Callable[[torch.Tensor], torch.Tensor]  # embedding of a no-grad, unhooked pass
    output: torch.Tensor | None = None  # what the loss read (logits or embedding): e = dL/d(output)
    scores: torch.Tensor | None = None  # (B, n) logits of the distribution the loss scores (confidence, entropy)

    def logits(self) -> torch.Tensor:
        """Classifier output (B, classes) of the tracked pass."""
        return self._output(self.outputs.logits())

    def embedding(self) -> torch.Tensor:
        """Pooled pre-logits (B, dim) of the tracked pass."""
        return self._output(self.outputs.embedding())

    def read(self, kind: str) -> torch.Tensor:
        """The tracked pass's output named `kind` (models.OUTPUT_KINDS: logits, embedding, cls_mean)."""
        return self._output(self.outputs.named(kind))

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """Record the logits whose softmax the loss scores (the model's confidence and entropy come from them)."""
        self.scores = logits.detach()
        return logits

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
    return torch.as_tensor(values, dtype=torch.long, device=batch.images.device)


def _target(batch: LossBatch, params: dict, logits: torch.Tensor) -> torch.Tensor:
    """Given labels (`loss_params.labels`), else the own top-1 of `logits` (detached)."""
    if params.get("labels") is not None:
        return _given_labels(params["labels"], batch, logits.shape[1])
    return logits.detach().argmax(dim=1)


def _loss_cross_entropy(batch: LossBatch, params: dict) -> torch.Tensor:
    logits = batch.score(batch.logits())
    _check_logits(batch.model, logits, "cross_entropy")
    return F.cross_entropy(logits, _target(batch, params, logits), reduction="sum")


def _prepare_shuffled(model: torch.nn.Module, batches: Iterable[torch.Tensor], params: dict) -> dict:
    """Own top-1 labels of the whole set, permuted across images by a seeded permutation."""
    from .models import forward_outputs

    device = next(model.parameters()).device
    top1 = []
    with torch.no_grad():
        for images in batches:
            logits = forward_outputs(model, images.to(device)).logits()
            _check_logits(model, logits, "cross_entropy_shuffled")
            top1.append(logits.argmax(dim=1).cpu().numpy())
    labels = np.concatenate(top1)
    shuffled = labels[np.random.default_rng(int(params.get("seed", 0))).permutation(len(labels))]
    changed = int((shuffled != labels).sum())
    # A network that predicts one class for every image (random weights, usually) has nothing to
    # shuffle: the control's gradients then equal the model's. Say so rather than hide it.
    level = logging.WARNING if changed == 0 else logging.INFO
    log.log(
        level,
        "cross_entropy_shuffled: %d distinct top-1 classes over %d images; the permutation "
        "changes the label of %d images%s",
        len(np.unique(labels)),
        len(labels),
        changed,
        " (none: this control equals the model's own loss)" if changed == 0 else "",
    )
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


def teacher_view(
    image: torch.Tensor, image_id: str, mean: Sequence[float], std: Sequence[float], params: dict | None = None
) -> torch.Tensor:
    """The deterministic augmented view (3, H, W) of one preprocessed image, seeded by its id."""
    p = {**SELF_DISTILLATION_DEFAULTS, **(params or {})}
    rng = np.random.default_rng(image_seed(image_id, p["seed"]))
    _, h, w = image.shape
    top, left, ch, cw = _crop_box(rng, h, w, p["crop_scale"])
    flip = rng.random() < p["flip"]
    factors = rng.uniform(1 - p["jitter"], 1 + p["jitter"], size=3)
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device)[:, None, None]
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device)[:, None, None]
    crop = image[None, :, top : top + ch, left : left + cw]
    view = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    view = view.flip(-1) if flip else view
    return (_jitter(view * s + m, factors) - m) / s


@functools.lru_cache(maxsize=8)
def prototypes(dim: int, n_prototypes: int = 4096, seed: int = 0) -> torch.Tensor:
    """Fixed prototype head (n_prototypes, dim): standard normal rows (numpy, seeded) scaled to unit norm."""
    w = np.random.default_rng(int(seed)).standard_normal((n_prototypes, dim))
    return torch.from_numpy(w / np.linalg.norm(w, axis=1, keepdims=True))


def _norm_stats(model: torch.nn.Module) -> tuple[tuple, tuple]:
    """The mean and std the model's images were normalised with (its preprocessing)."""
    info = getattr(model, "brainprop_info", None)
    cfg = info.preprocessing if info is not None else getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))


def _loss_self_distillation(batch: LossBatch, params: dict) -> torch.Tensor:
    p = {**SELF_DISTILLATION_DEFAULTS, **params}
    mean, std = _norm_stats(batch.model)
    views = torch.stack([teacher_view(x, i, mean, std, p) for x, i in zip(batch.images, batch.ids)])
    teacher = batch.untracked(views).detach()
    student = batch.embedding()
    protos = prototypes(student.shape[1], int(p["n_prototypes"]), int(p["seed"]))
    protos = protos.to(device=student.device, dtype=student.dtype)
    s = batch.score(F.normalize(student, dim=1) @ protos.T / p["temperature_student"])
    t = F.normalize(teacher, dim=1) @ protos.T / p["temperature_teacher"]
    return -(F.softmax(t, dim=1) * F.log_softmax(s, dim=1)).sum()


# ---------------------------------------------------------------- files a user supplies: a head, text embeddings


class LossFileError(ValueError):
    """A loss's file (a head checkpoint, a table of text embeddings) cannot be used; the message names it."""


def loss_file(value: str, key: str) -> Path:
    """The file a loss parameter names: a path with a directory part, or a bare name in the weights folder."""
    from .weights import WeightFileError, resolve_checkpoint

    try:
        return resolve_checkpoint(str(value), key)
    except WeightFileError as err:
        raise LossFileError(str(err)) from None


def _torch_file(path: Path, key: str, what: str):
    """torch.load(weights_only=True) of a user's file; a pickled object or a broken file names the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for pickled objects, RuntimeError for broken archives
        raise LossFileError(
            f"config key {key}: {path} cannot be read with torch.load(weights_only=True) ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}); save {what} as plain tensors (torch.save of a dict of tensors)"
        ) from None


@functools.lru_cache(maxsize=8)
def _head_tensors(path: str, stamp: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (n_classes, dim), bias (n_classes,)) of a linear head checkpoint, float64, checked."""
    key = "models.<alias>.loss_params.head"
    state = _torch_file(Path(path), key, "the head")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise LossFileError(
            f"config key {key}: {path} holds a {type(state).__name__}; expected a state dict "
            "{'weight': (n_classes, dim), 'bias': (n_classes,)} of a linear layer"
        )
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    named = [tensors.get("weight"), tensors.get("bias")]
    if named[0] is None or named[1] is None:  # one prefix, e.g. {'head.weight', 'head.bias'}
        weights = [k for k in tensors if k.endswith("weight")]
        biases = [k for k in tensors if k.endswith("bias")]
        if len(weights) != 1 or len(biases) != 1 or len(tensors) != 2:
            raise LossFileError(
                f"config key {key}: {path} has keys {sorted(state)[:10]}; expected one linear layer: 'weight' "
                "(n_classes, dim) and 'bias' (n_classes,), optionally with one prefix ('head.weight', 'head.bias')"
            )
        named = [tensors[weights[0]], tensors[biases[0]]]
    weight, bias = named
    if weight.ndim != 2 or bias.ndim != 1 or bias.shape[0] != weight.shape[0] or weight.shape[0] < 2:
        raise LossFileError(
            f"config key {key}: {path} has weight {tuple(weight.shape)} and bias {tuple(bias.shape)}; expected "
            "weight (n_classes, dim) and bias (n_classes,) with n_classes >= 2"
        )
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise LossFileError(f"config key {key}: {path} has non-finite weights; expected a trained head")
    return weight.double(), bias.double()


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def load_head(value: str, key: str = "models.<alias>.loss_params.head") -> tuple[torch.Tensor, torch.Tensor]:
    """A user's linear head (weight (n_classes, dim), bias (n_classes,)), as the DINOv3 ImageNet-1k head file."""
    path = loss_file(value, key)
    return _head_tensors(str(path), _stamp(path))


def _check_width(x: torch.Tensor, dim: int, key: str, path: str, kind: str, what: str) -> None:
    if x.shape[1] != dim:
        raise LossFileError(
            f"config key {key}: {path} is {what} for inputs of {dim} dims, but the model's {kind!r} output has "
            f"{x.shape[1]} (shape {tuple(x.shape)}); give a file made for this model's {kind} or choose the output "
            f"it was made for ({list(HEAD_INPUTS)})"
        )


# What a head or an image-text loss reads from the tracked pass (models.OUTPUT_KINDS).
HEAD_INPUTS = ("embedding", "cls_mean", "logits")


def _loss_head(batch: LossBatch, params: dict) -> torch.Tensor:
    if not params.get("head"):
        raise LossFileError("config key models.<alias>.loss_params.head: loss 'head' needs the head checkpoint file")
    kind = params.get("input", "embedding")
    x = batch.read(kind)
    weight, bias = load_head(params["head"])
    _check_width(x, weight.shape[1], "models.<alias>.loss_params.head", str(params["head"]), kind, "a head")
    logits = batch.score(F.linear(x, weight.to(x), bias.to(x)))
    return F.cross_entropy(logits, _target(batch, params, logits), reduction="sum")


@functools.lru_cache(maxsize=8)
def _text_table(path: str, stamp: tuple[int, int]) -> tuple[torch.Tensor, dict]:
    """Text embeddings (n_texts, dim) float64 and the file's own settings (temperature, bias), checked."""
    key = "models.<alias>.loss_params.text_embeddings"
    settings: dict = {}
    if path.endswith(".npy"):
        try:
            table = torch.from_numpy(np.load(path, allow_pickle=False))
        except ValueError as err:
            raise LossFileError(
                f"config key {key}: {path} cannot be read with np.load(allow_pickle=False) ({err}); save the table "
                "with np.save of a float array (n_texts, dim)"
            ) from None
    else:
        content = _torch_file(Path(path), key, "the text embeddings")
        if isinstance(content, dict):
            if not isinstance(content.get("embeddings"), torch.Tensor):
                raise LossFileError(
                    f"config key {key}: {path} has keys {sorted(content)[:10]}; expected 'embeddings' "
                    "(n_texts, dim) and optionally 'temperature' and 'bias'"
                )
            settings = {k: float(content[k]) for k in ("temperature", "bias") if k in content}
            content = content["embeddings"]
        if not isinstance(content, torch.Tensor):
            raise LossFileError(f"config key {key}: {path} holds a {type(content).__name__}; expected a tensor")
        table = content
    if table.ndim != 2 or table.shape[0] < 2 or not table.dtype.is_floating_point:
        raise LossFileError(
            f"config key {key}: {path} has shape {tuple(table.shape)} ({table.dtype}); expected floats of shape "
            "(n_texts, dim), one row per class or caption, n_texts >= 2"
        )
    if not torch.isfinite(table).all() or (table.norm(dim=1) == 0).any():
        raise LossFileError(f"config key {key}: {path} has non-finite or all-zero rows; expected text embeddings")
    return table.double(), settings


def load_text_embeddings(value: str, key: str = "models.<alias>.loss_params.text_embeddings") -> tuple:
    """A user's table of text embeddings (n_texts, dim) (.npy, or .pt with optional temperature and bias)."""
    path = loss_file(value, key)
    return _text_table(str(path), _stamp(path))


CONTRASTIVE_DEFAULTS: dict = {"image": "embedding", "form": "softmax"}
CONTRASTIVE_FORMS = ("softmax", "sigmoid")


def _loss_contrastive(batch: LossBatch, params: dict) -> torch.Tensor:
    key = "models.<alias>.loss_params"
    if not params.get("text_embeddings"):
        raise LossFileError(f"config key {key}.text_embeddings: loss 'contrastive' needs the text embeddings file")
    p = {**CONTRASTIVE_DEFAULTS, **params}
    if p["form"] not in CONTRASTIVE_FORMS:
        raise ValueError(f"config key {key}.form: {p['form']!r} unknown; valid forms: {list(CONTRASTIVE_FORMS)}")
    table, settings = load_text_embeddings(p["text_embeddings"])
    temperature = p.get("temperature", settings.get("temperature"))
    if temperature is None or not float(temperature) > 0:
        raise LossFileError(
            f"config key {key}.temperature: {temperature!r}; the file {p['text_embeddings']} gives none, so give a "
            "positive temperature (CLIP: 0.01, its logit scale 100)"
        )
    x = batch.read(p["image"])
    _check_width(x, table.shape[1], f"{key}.text_embeddings", str(p["text_embeddings"]), p["image"], "text embeddings")
    sim = F.normalize(x, dim=1) @ F.normalize(table.to(x), dim=1).T / float(temperature)
    if p["form"] == "softmax":  # CLIP: image-to-text cross-entropy
        logits = batch.score(sim)
        return F.cross_entropy(logits, _target(batch, params, logits), reduction="sum")
    logits = batch.score(sim + float(p.get("bias", settings.get("bias", 0.0))))  # SigLIP: one sigmoid per pair
    sign = -torch.ones_like(logits)
    sign[torch.arange(len(logits)), _target(batch, params, logits)] = 1.0
    return -F.logsigmoid(sign * logits).sum()


LOSSES: dict[str, Callable[[LossBatch, dict], torch.Tensor]] = {
    "cross_entropy": _loss_cross_entropy,
    "cross_entropy_shuffled": _loss_cross_entropy_shuffled,
    "self_distillation": _loss_self_distillation,
    "head": _loss_head,
    "contrastive": _loss_contrastive,
}

# The model output each loss reads (models.OUTPUT_KINDS), from its parameters: the output feature matrix
# an extraction writes beside the layers (the forward stack's last band, docs/method.md "Joint models").
LOSS_READS: dict[str, Callable[[dict], str]] = {
    "cross_entropy": lambda params: "logits",
    "cross_entropy_shuffled": lambda params: "logits",
    "self_distillation": lambda params: "embedding",
    "head": lambda params: params.get("input", "embedding"),
    "contrastive": lambda params: params.get("image", CONTRASTIVE_DEFAULTS["image"]),
}


def loss_reads(loss: str, params: dict | None = None) -> str:
    """The model output (logits, embedding, cls_mean) that `loss` reads with `params`."""
    if loss not in LOSS_READS:
        raise ValueError(f"loss {loss!r} unknown; valid losses: {sorted(LOSS_READS)}")
    return LOSS_READS[loss](params or {})


# Losses that need the whole image set before batching (so results do not depend on batch size).
LOSS_PREPARERS: dict[str, Callable[[torch.nn.Module, Iterable[torch.Tensor], dict], dict]] = {
    "cross_entropy_shuffled": _prepare_shuffled,
}
