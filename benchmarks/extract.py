"""Benchmark: brainprop's feature extraction against the bare forward + backward it cannot beat.

For a CNN (resnet18) and a ViT (vit_tiny), random weights, one batch of images and the
cross_entropy loss, times (1) `extract_features` (activations and gradients of 8 evenly
spaced blocks, grid-2 pooling) and (2) the floor: one forward + backward of the same frozen
model with the input requiring grad (and, tighter, backward only down to the first selected
block, where brainprop's graph starts when everything upstream is frozen). Also times (3) the
backward pass with frozen parameters against one that also computes weight gradients.
Also times each error signal alone (grad, fa, sign, dfa; `fa_ratio_vs_grad`, `dfa_ratio_vs_grad`).
Medians over repeats after a warm-up, all in the same run. On CUDA it adds ViT-L/16 and
DINOv3-L (random weights, 224 px, bf16 autocast) and the batch size `auto` would choose.
Writes results/benchmarks/extract.json.
Usage: python benchmarks/extract.py [--device auto|cpu|cuda] [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from brainprop.features.extract import auto_batch_size, extract_features
from brainprop.features.layers import find_blocks, select_layers
from brainprop.features.models import create_model, resolve_device

POOLING = {"mode": "grid", "grid": 2}
N_LAYERS = 8

# name -> (timm name, timm kwargs, input size, batch size); CPU cases run everywhere.
CPU_CASES: dict[str, tuple[str, dict, int, int]] = {
    "cnn": ("resnet18", {"zero_init_last": False}, 112, 32),
    "vit": ("vit_tiny_patch16_224", {}, 224, 32),
}
# Large models, CUDA only, in bf16 autocast (DINOv3 has no head by default: give it one).
CUDA_CASES: dict[str, tuple[str, dict, int, int]] = {
    "vit_large": ("vit_large_patch16_224", {}, 224, 64),
    "dinov3_large": ("vit_large_patch16_dinov3", {"num_classes": 1000}, 224, 64),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time (s) of `fn` over `repeats` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _loss(logits: torch.Tensor) -> torch.Tensor:
    """brainprop's cross_entropy: summed over the batch against the model's own top-1 class."""
    return F.cross_entropy(logits, logits.detach().argmax(dim=1), reduction="sum")


def bare_forward_backward(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The floor: one forward and one backward to the input (frozen parameters)."""
    x = images.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(_loss(model(x)), x)
    return grad


def bare_to_block(model: torch.nn.Module, images: torch.Tensor, first: str) -> torch.Tensor:
    """A tighter floor: forward, and backward only down to the first selected block's output.

    brainprop's recorder starts the graph at the first hooked block when everything upstream
    is frozen, so it never backpropagates through the stem; the bare loop above does.
    """
    kept = {}

    def hook(module, inputs, output):
        kept["out"] = output.detach().requires_grad_(True)
        return kept["out"]

    handle = dict(model.named_modules())[first].register_forward_hook(hook)
    try:
        (grad,) = torch.autograd.grad(_loss(model(images)), kept["out"])
    finally:
        handle.remove()
    return grad


def backward_only(model: torch.nn.Module, images: torch.Tensor, device: torch.device, repeats: int) -> float:
    """Median time of the backward pass alone (forward untimed), with the model's current requires_grad."""
    times = []
    for i in range(repeats + 1):
        x = images.detach().requires_grad_(True)
        loss = _loss(model(x))
        _sync(device)
        start = time.perf_counter()
        loss.backward()
        _sync(device)
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return statistics.median(times)


def signal_times(model, images, names, device: torch.device, repeats: int) -> dict:
    """Seconds per batch of each error signal alone (feedback matrices made once, as in a job)."""
    from brainprop.features.extract import Feedback, extract_batch

    feedback = Feedback(model, seed=0)
    times = {}
    for signal in ("grad", "fa", "sign", "dfa"):
        times[signal] = median_time(
            lambda s=signal: extract_batch(
                model, images, names, POOLING, "cross_entropy", signals=(s,), feedback=feedback
            ),
            device,
            repeats,
        )
    return times


def run_case(name: str, spec: tuple, device: torch.device, repeats: int, bf16: bool = False) -> dict:
    """Time brainprop against the bare loop, and frozen against weight-gradient backward, for one model."""
    timm_name, kwargs, size, batch = spec
    model = create_model(timm_name, "random", 0, size, kwargs).to(device)
    names = [n for n, _ in select_layers(find_blocks(model), N_LAYERS)]
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    precision = "bfloat16" if bf16 else "float32"
    t_brainprop = median_time(
        lambda: extract_features(model, images, names, POOLING, "cross_entropy", batch, precision=precision),
        device,
        repeats,
    )
    # The bare loops run in the same autocast as brainprop's forward.
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with amp:
        t_bare = median_time(lambda: bare_forward_backward(model, images), device, repeats)
        t_block = median_time(lambda: bare_to_block(model, images, names[0]), device, repeats)
        t_frozen = backward_only(model, images, device, repeats)
        model.requires_grad_(True)
        t_weights = backward_only(model, images, device, repeats)
        model.requires_grad_(False)
    signals = signal_times(model, images, names, device, repeats) if not bf16 else {}
    auto = None
    if device.type == "cuda":
        probe = lambda x: extract_features(model, x, names, POOLING, "cross_entropy", len(x), precision=precision)  # noqa: E731
        auto = auto_batch_size(probe, images[:1], device)
    return {
        "case": name,
        "timm_name": timm_name,
        "auto_batch_size": auto,
        "input_size": size,
        "batch_size": batch,
        "n_layers": len(names),
        "dtype": "bf16-autocast" if bf16 else "float32",
        "brainprop_s": t_brainprop,
        "bare_forward_backward_s": t_bare,
        "ratio_vs_bare": t_brainprop / t_bare,
        "bare_to_first_block_s": t_block,
        "ratio_vs_bare_to_first_block": t_brainprop / t_block,
        "brainprop_images_per_s": batch / t_brainprop,
        "bare_images_per_s": batch / t_bare,
        "backward_frozen_s": t_frozen,
        "backward_with_weight_grads_s": t_weights,
        "frozen_backward_ratio": t_frozen / t_weights,
        **{f"{sig}_alone_s": t for sig, t in signals.items()},
        **(
            {f"{sig}_ratio_vs_grad": signals[sig] / signals["grad"] for sig in ("fa", "sign", "dfa")} if signals else {}
        ),
    }


def _cycled_manifest(manifest, n: int):
    """A manifest of n rows reading the images of `manifest` in turn (unique ids, repeated files)."""
    rows = manifest.iloc[[i % len(manifest) for i in range(n)]].reset_index(drop=True)
    return rows.assign(image_id=[f"img{i:06d}" for i in range(n)], group=[f"g{i}" for i in range(n)])


def run_pipeline(device: torch.device, sizes: tuple[int, int], size: int, workers: int, threads: int) -> dict:
    """Images/s of whole extract jobs (PNG decoding, loader, shards, cache) against preloaded tensors.

    Two jobs of different lengths separate the fixed cost of a job (model creation, loader start,
    assembly) from its throughput per image: marginal images/s = extra images / extra time.
    """
    import tempfile

    from brainprop.features.extract import ImageDataset
    from brainprop.features.layers import resolve_layers
    from brainprop.features.models import image_transform
    from brainprop.features.rules import extract_to_folder
    from brainprop.io import write_table
    from brainprop.stimuli.demo import make_demo_images
    from brainprop.stimuli.files import write_manifest

    timm_name, kwargs, batch = "resnet50", {"zero_init_last": False}, 64
    spec = {
        "timm_name": timm_name,
        "weights": "random",
        "input_size": size,
        "timm_kwargs": kwargs,
        "loss": "cross_entropy",
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        unique = make_demo_images(root / "images", n_images=min(512, sizes[0]), size=size)
        layers = resolve_layers(timm_name, {"n": N_LAYERS}, POOLING, size, kwargs)
        write_table(root / "layers.parquet", layers)
        model = create_model(timm_name, "random", 0, size, kwargs).to(device)
        dataset = ImageDataset(_write(root, unique, sizes[0], write_manifest), image_transform(model, size))
        images = torch.stack([dataset[i][0] for i in range(len(dataset))])
        t_tensor = median_time(
            lambda: extract_features(model, images, list(layers["layer"]), POOLING, "cross_entropy", batch),
            device,
            1,
        )
        timings = {}
        for n in sizes:
            start = time.perf_counter()
            extract_to_folder(
                _write(root, unique, n, write_manifest),
                root / "layers.parquet",
                root / f"out-{n}",
                spec,
                POOLING,
                0,
                str(device),
                batch,
                threads=threads,
                cache_dir=root / f"cache-{n}",
                shard_size=1024,
                workers=workers,
            )
            timings[n] = time.perf_counter() - start
    marginal = (sizes[1] - sizes[0]) / (timings[sizes[1]] - timings[sizes[0]])
    return {
        "case": "pipeline",
        "timm_name": timm_name,
        "input_size": size,
        "batch_size": batch,
        "workers": workers,
        "job_sizes": list(sizes),
        "job_seconds": [timings[n] for n in sizes],
        "preloaded_tensor_images_per_s": sizes[0] / t_tensor,
        "run_extract_marginal_images_per_s": marginal,
        "run_extract_fixed_s": timings[sizes[0]] - sizes[0] / marginal,
        "marginal_vs_preloaded": (sizes[0] / t_tensor) / marginal,
    }


def _write(root: Path, unique, n: int, write_manifest) -> Path:
    path = root / "images" / f"manifest-{n}.parquet"
    write_manifest(path, _cycled_manifest(unique, n))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, ViT at 112 px")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    parser.add_argument("--out", default="results/benchmarks/extract.json")
    parser.add_argument(
        "--pipeline",
        type=int,
        default=0,
        metavar="N",
        help="also time whole extract jobs (loader, cache) of N and 4N images of 160 px",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    repeats = 3 if args.quick else 7
    cases = dict(CPU_CASES)
    if args.quick:
        cases["vit"] = (*cases["vit"][:2], 112, cases["vit"][3])
    results = {name: run_case(name, spec, device, repeats) for name, spec in cases.items()}
    if device.type == "cuda":
        for name, spec in CUDA_CASES.items():
            try:
                results[name] = run_case(name, spec, device, repeats, bf16=True)
            except torch.OutOfMemoryError as err:
                results[name] = {"case": name, "error": f"out of memory: {err}"}
            torch.cuda.empty_cache()
    if args.pipeline:
        results["pipeline"] = run_pipeline(device, (args.pipeline, 4 * args.pipeline), 160, 4, args.threads)
    summary = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": args.threads,
        "quick": args.quick,
        "repeats": repeats,
        "cnn_ratio_vs_bare": results["cnn"]["ratio_vs_bare"],
        "vit_ratio_vs_bare": results["vit"]["ratio_vs_bare"],
        "frozen_backward_ratio": results["cnn"]["frozen_backward_ratio"],
        "vit_frozen_backward_ratio": results["vit"]["frozen_backward_ratio"],
        "fa_ratio_vs_grad": results["cnn"]["fa_ratio_vs_grad"],
        "dfa_ratio_vs_grad": results["cnn"]["dfa_ratio_vs_grad"],
        "vit_fa_ratio_vs_grad": results["vit"]["fa_ratio_vs_grad"],
        "vit_dfa_ratio_vs_grad": results["vit"]["dfa_ratio_vs_grad"],
        "cases": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
