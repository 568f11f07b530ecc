"""The losses whose gradients are extracted (METHOD.md §2): a registry of objectives on a batch."""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "LOSSES",
    "LOSS_PREPARERS",
    "LossBatch",
    "SELF_DISTILLATION_DEFAULTS",
    "image_seed",
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

    def logits(self) -> torch.Tensor:
        """Classifier output (B, classes) of the tracked pass."""
        return self._output(self.outputs.logits())

    def embedding(self) -> torch.Tensor:
        """Pooled pre-logits (B, dim) of the tracked pass."""
        return self._output(self.outputs.embedding())

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
