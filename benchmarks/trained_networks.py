"""What a trained network changes: the two offline ImageNet CNNs against their random-weight copies.

Models: EfficientNet-Lite0 (timm `tf_efficientnet_lite0`, the lukemelas-style file through key map
`lukemelas_efficientnet`) and MobileNetV2 (torchvision `mobilenet_v2.IMAGENET1K_V1`, pretrained from
the weights folder); `make install` puts both files there. Measures, at each input size
(`--sizes`, resize the shorter side then centre crop, as `models.<alias>.input_size` does):

1. top-5 ImageNet labels of scikit-image photographs (also at each model's native preprocessing);
2. on the demo image set (brainprop.stimuli.demo.make_demo_images, the demo config's n_images
   and size), trained against random weights: adjacent-layer linear CKA of activations and of
   gradients (8 layers evenly spaced, grid-2 pooling, cross_entropy against the own top-1),
   the spread of the confidence (max softmax), and how many distinct top-1 classes the images get.

Writes results/benchmarks/trained_networks.json.
CKA (one extraction of act and grad per model, weights and size) only at `--cka-sizes`.
Usage: python benchmarks/trained_networks.py [--sizes 112 128 160 224] [--cka-sizes 112 160] [--n-images 360]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from brainprop.features.cka import linear_cka
from brainprop.features.extract import extract_features
from brainprop.features.layers import resolve_layers
from brainprop.features.models import forward_outputs, image_transform, load_model
from brainprop.io import atomic_path

MODELS: dict[str, dict] = {
    "efficientnet_lite0": {
        "source": "timm",
        "name": "tf_efficientnet_lite0",
        "weights": "efficientnet-lite0-57934424.pth",
        "key_map": "lukemelas_efficientnet",
    },
    "mobilenet_v2": {"source": "torchvision", "name": "mobilenet_v2.IMAGENET1K_V1", "weights": "pretrained"},
}
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "horse", "camera", "hubble_deep_field")
POOLING = {"mode": "grid", "grid": 2}
N_LAYERS = 8
SEED = 0


def categories() -> list[str]:
    """ImageNet-1k class names (torchvision ships them with its weights' metadata)."""
    import torchvision

    return list(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def photos() -> dict:
    """The scikit-image photographs as RGB PIL images."""
    from PIL import Image
    from skimage import data

    out = {}
    for name in PHOTOS:
        array = getattr(data, name)()
        image = Image.fromarray(array)
        out[name] = image.convert("RGB")
    return out


def top5(model: torch.nn.Module, images: dict, names: list[str]) -> dict:
    """Top-5 (label, probability) of each photograph."""
    transform = image_transform(model)
    x = torch.stack([transform(im) for im in images.values()])
    with torch.no_grad():
        p = forward_outputs(model, x).logits().softmax(1)
    values, index = p.topk(5, dim=1)
    return {
        photo: [[names[int(i)], round(float(v), 4)] for v, i in zip(values[k], index[k])]
        for k, photo in enumerate(images)
    }


def demo_tensor(model: torch.nn.Module, manifest_path: Path) -> torch.Tensor:
    """The demo images preprocessed for the model."""
    from brainprop.stimuli.files import load_images

    transform = image_transform(model)
    return torch.stack([transform(im) for _, im in load_images(manifest_path)])


def adjacent_cka(features: list[np.ndarray]) -> list[float]:
    """Linear CKA of each layer with the next."""
    return [round(linear_cka(a, b), 4) for a, b in zip(features[:-1], features[1:])]


def summary(values: np.ndarray) -> dict:
    """Mean, SD and quantiles of a 1-d array."""
    q = np.quantile(values, [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    keys = ["min", "p10", "p25", "median", "p75", "p90", "max"]
    return {"mean": round(float(values.mean()), 4), "sd": round(float(values.std()), 4)} | {
        k: round(float(v), 4) for k, v in zip(keys, q)
    }


def demo_measures(spec: dict, weights: str, size: int, manifest_path: Path, batch: int, cka: bool) -> dict:
    """Confidence spread, distinct top-1 classes (and, if `cka`, adjacent-layer CKA) on the demo images."""
    entry = spec | {"weights": weights if weights != "trained" else spec["weights"], "input_size": size}
    model = load_model(entry, SEED)
    x = demo_tensor(model, manifest_path)
    started = time.perf_counter()
    out = {}
    if cka:
        layers = resolve_layers(entry, {"n": N_LAYERS}, POOLING)
        feats = extract_features(model, x, list(layers["layer"]), POOLING, "cross_entropy", batch_size=batch)
        out = {
            "layers": list(layers["layer"]),
            "cka_act": adjacent_cka(feats["act"]),
            "cka_grad": adjacent_cka(feats["grad"]),
            "cka_act_mean": round(float(np.nanmean(adjacent_cka(feats["act"]))), 4),
            "cka_grad_mean": round(float(np.nanmean(adjacent_cka(feats["grad"]))), 4),
        }
    with torch.no_grad():
        p = torch.cat([forward_outputs(model, x[s : s + batch]).logits().softmax(1) for s in range(0, len(x), batch)])
    confidence = p.max(1).values.numpy()
    top1 = p.argmax(1).numpy()
    return out | {
        "confidence": summary(confidence),
        "distinct_top1": int(len(np.unique(top1))),
        "largest_class_share": round(float(np.bincount(top1).max() / len(top1)), 4),
        "extract_s": round(time.perf_counter() - started, 2),
    }


def main() -> None:
    """Run every measurement and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 128, 160, 224])
    parser.add_argument("--cka-sizes", type=int, nargs="+", default=[112, 160], help="sizes that also get CKA")
    parser.add_argument("--n-images", type=int, default=360)
    parser.add_argument("--image-size", type=int, default=112, help="demo image size in px (the demo config's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=60)
    parser.add_argument("--out", default="results/benchmarks/trained_networks.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from brainprop.stimuli.demo import make_demo_images
    from brainprop.stimuli.files import write_manifest

    names, images = categories(), photos()
    result: dict = {
        "sizes": args.sizes,
        "cka_sizes": args.cka_sizes,
        "n_images": args.n_images,
        "image_size": args.image_size,
        "n_layers": N_LAYERS,
        "pooling": POOLING,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_demo_images(Path(tmp), args.n_images, args.image_size, SEED)
        write_manifest(Path(tmp) / "manifest.parquet", manifest)
        for alias, spec in MODELS.items():
            out = result["models"][alias] = {"spec": spec, "top5_native": top5(load_model(spec, SEED), images, names)}
            out["top5"] = {str(s): top5(load_model(spec | {"input_size": s}, SEED), images, names) for s in args.sizes}
            out["demo"] = {
                str(s): {
                    w: demo_measures(spec, w, s, Path(tmp) / "manifest.parquet", args.batch, s in args.cka_sizes)
                    for w in ("trained", "random")
                }
                for s in args.sizes
            }
            print(
                alias,
                json.dumps(
                    {
                        s: {w: {k: v for k, v in d.items() if k not in ("layers",)} for w, d in r.items()}
                        for s, r in out["demo"].items()
                    },
                    indent=None,
                )[:3000],
                flush=True,
            )
    target = Path(args.out)
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
