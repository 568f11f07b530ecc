"""Activations and backpropagated gradients of a model's selected blocks (needs torch).

One tracked forward and one backward pass per batch give, for every selected block k,
the activation h_k(x) and the gradient dL/dh_k(x) (METHOD.md §2). Parameters are frozen,
the model runs in eval mode, so a batched backward of the summed loss gives every image
its own gradient.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import learning_rules
from .losses import LOSS_PREPARERS, LOSSES, LossBatch, loss_reads
from .models import forward_outputs, model_info
from .pooling import pool
from .projection import project

__all__ = [
    "BATCH_TOLERANCE",
    "BatchRunner",
    "FLOAT16_LOSS_SCALES",
    "Feedback",
    "GRAD_NORMALIZATIONS",
    "ImageDataset",
    "PRECISIONS",
    "Progress",
    "SIGNALS",
    "auto_batch_size",
    "batch_difference",
    "batch_size_from_memory",
    "collect_batches",
    "extract_batch",
    "extract_features",
    "image_loader",
    "prepared_loss_params",
]

log = logging.getLogger(__name__)

# How far float32 features may move when only the cut of the work changes (batch size, and so shard
# size; CPU threads), as a fraction of the layer's largest |value| (`batch_difference`): the
# library picks its convolution algorithm by batch shape, which moves values by float32 rounding,
# and a unit within that rounding of a ReLU's (or ReLU6's, max-pool's) kink flips for that image.
# Measured (benchmarks/batch_invariance.py, 64 demo images, batch 1/4/16/64, 1 vs 2 threads; docs/
# features.md "What changes the numbers"): activations <= 1.0e-6; gradients <= 2e-6 for most images
# and up to 1.2e-2 for the few whose unit flips (random ResNet-18 1.2e-2, ImageNet MobileNetV2
# 3.2e-3, EfficientNet-Lite0 1.4e-3).
BATCH_TOLERANCE: dict[str, float] = {"act": 1e-5, "grad": 2e-2, "fa": 2e-2, "sign": 2e-2, "dfa": 2e-2}


def batch_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |a| of two computations of one layer's features (0 for an all-zero layer)."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.abs(a64).max()
    return float(np.abs(a64 - b64).max() / scale) if scale > 0 else float(np.abs(b64).max())


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


def _untracked(model: torch.nn.Module, rec: _Recorder) -> Callable[[torch.Tensor], torch.Tensor]:
    """Embedding (pre-logits) of a no-grad pass whose block outputs the recorder ignores."""

    def run(images: torch.Tensor) -> torch.Tensor:
        rec.active = False
        try:
            with torch.no_grad():
                return forward_outputs(model, images).embedding()
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
        grads = [
            torch.zeros_like(o, dtype=torch.float32) if g is None else g.float() / scale for o, g in zip(outs, grads)
        ]
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
    output: torch.Tensor | None = None  # (B, n_out) the output the loss reads (losses.LOSS_READS), detached
    scores: torch.Tensor | None = None  # (B, n) logits of the distribution the loss scored, detached


def _unit_norm(g: torch.Tensor) -> torch.Tensor:
    """Each image's tensor (B, ...) scaled to unit L2 norm (a zero tensor stays zero)."""
    norm = g.flatten(1).norm(dim=1).clamp_min(torch.finfo(g.dtype).tiny)
    return g / norm.reshape(-1, *([1] * (g.ndim - 1)))


# models.<alias>.grad_normalize: how each image's error signal of each layer is scaled before pooling
# (METHOD.md §2, "Gradient scale"): `l2` removes the common factor p − onehot that grows with the
# model's uncertainty on the image.
GRAD_NORMALIZATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda g: g,
    "l2": _unit_norm,
}


def _confidence(scores: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """(B, 2): max softmax and entropy (nats) of the loss's scores; NaN without a loss."""
    if scores is None:
        return torch.full((n, 2), float("nan"), device=device)
    logp = F.log_softmax(scores.double(), dim=1)
    p = logp.exp()
    return torch.stack([p.max(dim=1).values, -(p * logp).sum(dim=1)], dim=1).float()


def _run_pass(
    model,
    images,
    names,
    loss,
    params,
    ids,
    index,
    precision,
    track: bool,
    output_error: bool,
    feedback: dict[str, torch.Tensor] | None = None,
) -> _Pass:
    """One forward pass (tracked when block gradients are wanted) and the loss's gradients."""
    rec = _Recorder(model, names)
    try:
        with torch.set_grad_enabled(track), _no_tf32(images.device), learning_rules.use_feedback(model, feedback):
            with _autocast(images.device, precision):
                outputs = forward_outputs(model, images)
                outs = [rec.outputs[n] for n in names]
                output = outputs.named(loss_reads(loss, params)).detach().float().reshape(len(images), -1)
            if not (track or output_error):
                return _Pass(outs, None, None, output)
            with torch.enable_grad():
                with _autocast(images.device, precision):
                    batch = LossBatch(model, outputs, images, ids, index, _untracked(model, rec))
                    value = LOSSES[loss](batch, params).float()
                targets = (outs if track else []) + ([batch.output] if output_error else [])
                grads = _gradients(value, targets, precision)
            return _Pass(
                outs,
                grads[: len(outs)] if track else None,
                grads[-1] if output_error else None,
                output,
                None if batch.scores is None else batch.scores.float(),
            )
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
    grad_normalize: str = "none",
    extras: bool = False,
) -> dict[str, list[torch.Tensor]]:
    """Pooled features of the named blocks for one batch: {signal: [(B, dim)]}.

    Signals: `act` (activations), `grad` (backpropagated dL/dh), `fa` and `sign` (the error a
    backward pass through feedback matrices delivers), `dfa` (the output error through each
    layer's direct feedback matrix); see `learning_rules`. `ids` (image ids) seed per-image
    augmentations and `index` (positions in the whole image set) aligns given labels; both
    default to the batch positions. Under a reduced `precision` the forward pass runs in
    autocast; pooled features are float32 either way.

    `grad_normalize` (`GRAD_NORMALIZATIONS`) scales each image's error signal of each layer
    before pooling (`l2`: unit norm; for `dfa`, the output error e). With `extras`, two more
    entries: `output` [(B, n_out)], the output the loss reads (`losses.LOSS_READS`), and
    `nuisance` [(B, 2 + n_layers)]: the model's confidence (max softmax of the loss's scores),
    their entropy (nats) and the L2 norm of each layer's unpooled, unnormalised backprop
    gradient (NaN where not computed: no loss, or no `grad` signal).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r} unknown; valid losses: {sorted(LOSSES)}")
    unknown = sorted(set(signals) - set(SIGNALS))
    if unknown:
        raise ValueError(f"signals {unknown} unknown; valid signals: {list(SIGNALS)}")
    if grad_normalize not in GRAD_NORMALIZATIONS:
        raise ValueError(
            f"grad_normalize {grad_normalize!r} unknown; valid values: {list(GRAD_NORMALIZATIONS)} "
            "(models.<alias>.grad_normalize)"
        )
    scale = GRAD_NORMALIZATIONS[grad_normalize]
    index = np.arange(len(images)) if index is None else np.asarray(index)
    ids = [str(i) for i in index] if ids is None else [str(i) for i in ids]
    params = loss_params or {}
    feedback = feedback or Feedback(model)
    ctx = model_info(model).tokens

    def pooled(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [project(pool(t.detach().float(), pooling, ctx), pooling, k) for k, t in enumerate(tensors)]

    out: dict[str, list[torch.Tensor]] = {}
    passes = []  # every pass computes the same activations: one is enough
    for rule in learning_rules.FEEDBACK_SIGNALS:
        if rule in signals:
            passes.append(
                _run_pass(
                    model,
                    images,
                    names,
                    loss,
                    params,
                    ids,
                    index,
                    precision,
                    track=True,
                    output_error=False,
                    feedback=feedback.rule(rule),
                )
            )
            out[rule] = pooled([scale(g) for g in passes[-1].grads])
    if {"grad", "dfa"} & set(signals) or not passes:
        passes.append(
            _run_pass(
                model,
                images,
                names,
                loss,
                params,
                ids,
                index,
                precision,
                track="grad" in signals,
                output_error="dfa" in signals,
            )
        )
    last = passes[-1]
    acts = pooled(last.outs) if {"act", "dfa"} & set(signals) else []
    if "act" in signals:
        out["act"] = acts
    if "grad" in signals:
        out["grad"] = pooled([scale(g) for g in last.grads])
    if "dfa" in signals:
        e = scale(last.output_error.reshape(len(images), -1))
        out["dfa"] = [e @ feedback.dfa(k, e.shape[1], a.shape[1], e.device) for k, a in enumerate(acts)]
    result = {s: out[s] for s in signals}
    if extras:
        scored = next((p.scores for p in reversed(passes) if p.scores is not None), None)
        norms = (
            torch.stack([g.flatten(1).double().norm(dim=1) for g in last.grads], dim=1).float()
            if "grad" in signals
            else torch.full((len(images), len(names)), float("nan"), device=images.device)
        )
        result["output"] = [last.output]
        result["nuisance"] = [torch.cat([_confidence(scored, len(images), images.device), norms.to(images.device)], 1)]
    return result


def _is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)


class BatchRunner:
    """Runs batches through `extract_batch`, splitting a batch in halves when memory runs out."""

    def __init__(
        self, model, names, pooling, loss, params, signals, precision, seed: int = 0, grad_normalize: str = "none"
    ):
        self.args = (names, pooling, loss, params, signals)
        self.model = model
        self.precision = precision
        self.grad_normalize = grad_normalize
        self.feedback = Feedback(model, seed)
        self.largest_fit: int | None = None  # smallest batch size that ran out of memory, halved

    def __call__(self, images: torch.Tensor, ids: Sequence[str], index: np.ndarray) -> dict[str, list[np.ndarray]]:
        names, pooling, loss, params, signals = self.args
        if self.largest_fit and len(images) > self.largest_fit:  # known not to fit: split at once
            return self._chunks(images, ids, index, self.largest_fit)
        try:
            out = extract_batch(
                self.model,
                images,
                names,
                pooling,
                loss,
                params,
                signals,
                ids,
                index,
                self.precision,
                self.feedback,
                self.grad_normalize,
                extras=True,
            )
            return {s: [a.cpu().numpy().astype(np.float32) for a in arrays] for s, arrays in out.items()}
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not _is_out_of_memory(err) or len(images) == 1:
                raise
        half = len(images) // 2
        self.largest_fit = half if self.largest_fit is None else min(self.largest_fit, half)
        log.warning(
            "out of memory on a batch of %d images; from now on batches of at most %d", len(images), self.largest_fit
        )
        if images.is_cuda:
            torch.cuda.empty_cache()
        return self._chunks(images, ids, index, half)

    def _chunks(
        self, images: torch.Tensor, ids: Sequence[str], index: np.ndarray, size: int
    ) -> dict[str, list[np.ndarray]]:
        parts = [
            self(images[i : i + size], ids[i : i + size], index[i : i + size]) for i in range(0, len(images), size)
        ]
        return {s: [np.concatenate([p[s][k] for p in parts]) for k in range(len(parts[0][s]))] for s in parts[0]}


def collect_batches(
    runner: BatchRunner,
    batches: Iterable[tuple[torch.Tensor, np.ndarray]],
    ids: Sequence[str],
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, list[np.ndarray]]:
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


def prepared_loss_params(
    model, loss: str, params: dict | None, signals: Sequence[str], batches: Callable[[], Iterable[torch.Tensor]]
) -> dict:
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
    grad_normalize: str = "none",
    extras: bool = False,
) -> dict[str, list[np.ndarray]]:
    """Activations and gradients for a stack of preprocessed images: {signal: [(n_images, dim)]}.

    `image_ids` (default: the positions "0", "1", ...) seed per-image augmentations; the
    k-th name's projection (if any) is seeded by k, its layer index; `seed` seeds the
    feedback matrices of the fa and dfa signals; `grad_normalize` and `extras` (the `output`
    and `nuisance` entries) as in `extract_batch`.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r} unknown; valid losses: {sorted(LOSSES)}")
    ids = [str(i) for i in range(len(images))] if image_ids is None else [str(i) for i in image_ids]
    if len(ids) != len(images):
        raise ValueError(f"{len(ids)} image ids for {len(images)} images; expected one id per image")
    starts = range(0, len(images), batch_size)
    params = prepared_loss_params(
        model, loss, loss_params, signals, lambda: (images[s : s + batch_size] for s in starts)
    )
    device = next(model.parameters()).device
    runner = BatchRunner(model, names, pooling, loss, params, signals, precision, seed, grad_normalize)
    done = [0]

    def on_batch(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], len(images))

    batches = ((images[s : s + batch_size], np.arange(s, min(s + batch_size, len(images)))) for s in starts)
    out = collect_batches(runner, batches, ids, device, on_batch)
    return out if extras else {s: out[s] for s in signals}


class ImageDataset(torch.utils.data.Dataset):
    """The images of a manifest, opened lazily and preprocessed: items are (image, position)."""

    def __init__(self, manifest_path: str | Path, transform: Callable):
        from ..stimuli.files import load_manifest

        self.root = Path(manifest_path).parent
        self.paths = list(load_manifest(manifest_path)["path"])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with Image.open(self.root / self.paths[i]) as image:
            return self.transform(image.convert("RGB")), i


def image_loader(
    dataset: ImageDataset, spans: Sequence[tuple[int, int]], batch_size: int, workers: int, device: torch.device
) -> torch.utils.data.DataLoader:
    """Batches of positions [start, stop) of each span in order, no batch crossing a span's end.

    One loader serves every span (worker processes start once per job), with pinned memory on CUDA.
    """
    batches = [
        list(range(b, min(b + batch_size, stop))) for start, stop in spans for b in range(start, stop, batch_size)
    ]
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )


def batch_size_from_memory(
    peak_small: int, peak_large: int, small: int, large: int, free: int, fraction: float = 0.8, cap: int = 256
) -> int:
    """Largest batch whose projected peak memory fits `fraction` of the free memory (bytes)."""
    per_image = max((peak_large - peak_small) / (large - small), 1.0)
    fixed = max(peak_small - small * per_image, 0.0)
    return int(max(1, min(cap, (free * fraction - fixed) // per_image)))


def auto_batch_size(
    run: Callable[[torch.Tensor], object],
    sample: torch.Tensor,
    device: torch.device,
    fallback: int = 32,
    cap: int = 256,
) -> int:
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
    log.info(
        "auto batch size: %d (probe peaks %.0f/%.0f MiB for %d/%d images, %.0f MiB free)",
        size,
        peaks[0] / 2**20,
        peaks[1] / 2**20,
        small,
        large,
        free / 2**20,
    )
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
