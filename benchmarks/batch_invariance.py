"""How much the features depend on how the work is cut: batch size (and so shard size) and CPU threads.

The model runs in eval mode and the loss is summed over images, so in exact arithmetic a batch
gives each image its one-image activations and gradients. In float32 a convolution's rounding
depends on the batch it runs in (the library picks its blocking and algorithm by shape), so the
numbers move by a few units of float32 rounding, and a unit whose pre-activation sits within that
rounding of a ReLU's kink (0, or 6 for ReLU6) can switch sides, which changes the gradient below it
for that one image. This script measures both effects on the demo image set:

- per model (random ResNet-18, ImageNet-trained MobileNetV2 and EfficientNet-Lite0), signal and
  layer, the largest |difference| between batch size 1 and each other batch size, as a fraction of
  the layer's largest |value|, and the images whose row moves by more than 1e-4 of it;
- the same between 1 and 2 CPU threads at one batch size;
- what that does to an encoding: cross-validated r of 20 simulated targets (a fixed random linear
  readout of the batch-1 features plus noise, 4 folds) fitted from each batch size's features: the
  largest change of one target's r, of the mean r, and how many targets chose another penalty.

Shards (`extraction.shard_size`) change the numbers only through the batches they cut (the last
batch of a shard is smaller), so they are covered by the batch sizes. Writes
results/benchmarks/batch_invariance.json.
Usage: python benchmarks/batch_invariance.py [--n-images 64] [--batch-sizes 4 16 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from brainprop.features.extract import extract_features
from brainprop.features.layers import resolve_layers
from brainprop.features.models import image_transform, load_model
from brainprop.io import atomic_path

MODELS: dict[str, dict] = {
    "resnet18_random": {
        "source": "timm",
        "name": "resnet18",
        "kwargs": {"zero_init_last": False},
        "weights": "random",
        "input_size": 112,
    },
    "mobilenet_v2_trained": {"source": "torchvision", "name": "mobilenet_v2.IMAGENET1K_V1", "weights": "pretrained"},
    "efficientnet_lite0_trained": {
        "source": "timm",
        "name": "tf_efficientnet_lite0",
        "weights": "efficientnet-lite0-57934424.pth",
        "key_map": "lukemelas_efficientnet",
    },
}
POOLING = {"mode": "grid", "grid": 2}
N_LAYERS = 8
SEED = 0
MOVED = 1e-4  # a row "moved" when it changes by more than this fraction of the layer's largest |value|


def demo_images(n_images: int, folder: Path) -> list:
    """The demo image set's first images (PIL, RGB)."""
    from PIL import Image

    from brainprop.stimuli.demo import make_demo_images

    manifest = make_demo_images(folder, n_images=n_images, size=112, seed=SEED)
    return [Image.open(folder / p).convert("RGB") for p in manifest["path"]]


def compare(ref: dict, other: dict) -> dict:
    """Per signal and layer: max |difference| / max |ref|, and the rows (images) that moved."""
    out = {}
    for signal in ref:
        layers = []
        for k, (a, b) in enumerate(zip(ref[signal], other[signal])):
            scale = float(np.abs(a).max()) or 1.0
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64)) / scale
            moved = np.flatnonzero(diff.max(axis=1) > MOVED)
            rest = np.delete(diff, moved, axis=0)
            layers.append(
                {
                    "layer": k,
                    "max_error": float(diff.max()),
                    "max_error_other_images": float(rest.max()) if rest.size else 0.0,
                    "moved_images": moved.tolist(),
                }
            )
        out[signal] = layers
    return out


def encoding_r(X: np.ndarray, readout_from: np.ndarray, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Cross-validated r and chosen penalty per target of a simulated response (a random readout of
    `readout_from` plus noise) fitted from X."""
    from brainprop.encoding.encode import encode
    from brainprop.encoding.folds import make_folds

    rng = np.random.default_rng(seed)
    z = (readout_from - readout_from.mean(0)) / (readout_from.std(0) + 1e-12)
    Y = z @ rng.standard_normal((z.shape[1], 20)) / np.sqrt(z.shape[1])
    Y = Y + rng.standard_normal(Y.shape) * Y.std(0)
    targets = {
        "target": np.arange(20),
        "modality": "meg",
        "atlas": "",
        "roi": "",
        "hemi": "",
        "x": np.nan,
        "y": np.nan,
        "z": np.nan,
        "roi_distance_mm": np.nan,
        "sensor": "S",
        "time": np.arange(20) / 10,
        "noise_ceiling": np.nan,
    }
    import pandas as pd

    per_target, _, _ = encode(X, Y, pd.DataFrame(targets), make_folds(len(X), None, 4, seed), np.logspace(0, 6, 7))
    return per_target["r"].to_numpy(), per_target["alpha"].to_numpy()


def measure(alias: str, spec: dict, pil: list, batch_sizes: list[int]) -> dict:
    """Features at batch size 1 and each other size (one thread), and at 2 threads; their differences."""
    model = load_model(spec, SEED)
    transform = image_transform(model, spec.get("input_size"))
    images = torch.stack([transform(p) for p in pil])
    names = list(resolve_layers(spec, {"n": N_LAYERS}, POOLING, spec.get("input_size"))["layer"])
    torch.set_num_threads(1)
    runs, seconds = {}, {}
    for size in [1, *batch_sizes]:
        start = time.perf_counter()
        runs[size] = extract_features(model, images, names, POOLING, "cross_entropy", batch_size=size)
        seconds[size] = time.perf_counter() - start
    mid = batch_sizes[len(batch_sizes) // 2]
    torch.set_num_threads(2)
    two_threads = extract_features(model, images, names, POOLING, "cross_entropy", batch_size=mid)
    torch.set_num_threads(1)
    result = {
        "n_images": len(images),
        "input": list(images.shape[1:]),
        "layers": names,
        "seconds": {str(k): round(v, 2) for k, v in seconds.items()},
        "batch_vs_1": {str(size): compare(runs[1], runs[size]) for size in batch_sizes},
        "threads_2_vs_1": {"batch_size": mid, **compare(runs[mid], two_threads)},
    }
    deltas, means, flips = {}, {}, {}
    for signal in ("act", "grad"):
        for k in (0, len(names) // 2, len(names) - 1):
            ref_r, ref_alpha = encoding_r(runs[1][signal][k], runs[1][signal][k])
            key = f"{signal}/{k}"
            for size in batch_sizes:
                r, alpha = encoding_r(runs[size][signal][k], runs[1][signal][k])
                deltas[key] = max(deltas.get(key, 0.0), float(np.nanmax(np.abs(r - ref_r))))
                means[key] = max(means.get(key, 0.0), float(abs(np.nanmean(r) - np.nanmean(ref_r))))
                flips[key] = max(flips.get(key, 0), int((alpha != ref_alpha).sum()))
    result["encoding_max_abs_delta_mean_r"] = means
    result["encoding_targets_with_another_penalty"] = flips
    result["encoding_max_abs_delta_r"] = deltas
    return result


def summary(results: dict) -> dict:
    """Largest errors per model and signal, over layers and batch sizes (and the moved images)."""
    out = {}
    for alias, res in results.items():
        for signal in ("act", "grad"):
            rows = [layer for comp in res["batch_vs_1"].values() for layer in comp[signal]]
            threads = res["threads_2_vs_1"][signal]
            out[f"{alias}/{signal}"] = {
                "max_error": max(r["max_error"] for r in rows),
                "max_error_other_images": max(r["max_error_other_images"] for r in rows),
                "moved_images": sorted({i for r in rows for i in r["moved_images"]}),
                "threads_max_error": max(r["max_error"] for r in threads),
                "encoding_max_abs_delta_r": max(
                    v for k, v in res["encoding_max_abs_delta_r"].items() if k.startswith(signal)
                ),
                "encoding_max_abs_delta_mean_r": max(
                    v for k, v in res["encoding_max_abs_delta_mean_r"].items() if k.startswith(signal)
                ),
                "encoding_targets_with_another_penalty": max(
                    v for k, v in res["encoding_targets_with_another_penalty"].items() if k.startswith(signal)
                ),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure every model and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--out", default="results/benchmarks/batch_invariance.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        pil = demo_images(args.n_images, Path(tmp))
        results = {alias: measure(alias, MODELS[alias], pil, args.batch_sizes) for alias in args.models}
    payload = {"torch": torch.__version__, "summary": summary(results), "models": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp_path:
        tmp_path.write_text(json.dumps(payload, indent=1))
    print(json.dumps(payload["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
