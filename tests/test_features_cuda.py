"""Feature extraction on CUDA: the same features as on CPU, reduced precision, automatic batch size.

Skipped without a CUDA device (CI has none; run on a GPU machine with `benchmarks/gpu.sh tests`).
Tolerances: float32 extraction turns TF32 off (with cuDNN's default TF32, an H200 gave r = 0.9986
between CUDA and CPU gradients), so CUDA features agree with CPU ones to 0.1 % of each layer's
largest value and correlate above 0.99999; bfloat16 and float16 use the tolerances of the CPU test
(test_features_cache.py).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from brainprop.features.extract import Feedback, auto_batch_size, extract_batch, extract_features
from brainprop.features.files import load_features
from brainprop.features.layers import resolve_layers
from brainprop.features.models import create_model
from brainprop.features.rules import extract_to_folder
from brainprop.io import write_table

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CNN = ("resnet18", {"zero_init_last": False})
VIT = ("vit_small_patch16_224", {})
POOLING = {"mode": "grid", "grid": 2}


def _close(a: np.ndarray, b: np.ndarray, min_r: float = 0.99999, max_error: float = 1e-3) -> None:
    assert np.isfinite(b).all()
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > min_r
    assert np.abs(a - b).max() <= max_error * np.abs(a).max()


@pytest.mark.parametrize("arch", [CNN, VIT], ids=["cnn", "vit"])
def test_cuda_features_match_cpu(arch):
    size = 64 if arch is CNN else 224
    images = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(0))
    names = list(resolve_layers(arch[0], {"n": 4}, POOLING, size, arch[1])["layer"])
    cpu = extract_features(
        create_model(arch[0], "random", 0, size, arch[1]), images, names, POOLING, "cross_entropy", 4
    )
    model = create_model(arch[0], "random", 0, size, arch[1]).cuda()
    gpu = extract_features(model, images, names, POOLING, "cross_entropy", 4)
    for signal in ("act", "grad"):
        for a, b in zip(cpu[signal], gpu[signal]):
            _close(a, b)


def test_cuda_batch_size_invariance():
    images = torch.randn(12, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    model = create_model(CNN[0], "random", 0, 64, CNN[1]).cuda()
    names = list(resolve_layers(CNN[0], {"n": 4}, POOLING, 64, CNN[1])["layer"])
    one = extract_features(model, images, names, POOLING, "cross_entropy", 1)
    all_ = extract_features(model, images, names, POOLING, "cross_entropy", 12)
    for signal in ("act", "grad"):
        for a, b in zip(one[signal], all_[signal]):
            _close(a, b)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_cuda_reduced_precision_close_to_float32(precision):
    from test_features_cache import PRECISION_TOLERANCE

    images = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    model = create_model(VIT[0], "random", 0, 224, VIT[1]).cuda()
    names = list(resolve_layers(VIT[0], {"n": 4}, POOLING, 224, VIT[1])["layer"])
    ref = extract_features(model, images, names, POOLING, "cross_entropy", 8)
    got = extract_features(model, images, names, POOLING, "cross_entropy", 8, precision=precision)
    for signal in ("act", "grad"):
        min_r, max_error, _ = PRECISION_TOLERANCE[(precision, signal)]  # (median image: CPU test only)
        for a, b in zip(ref[signal], got[signal]):
            assert b.dtype == np.float32
            _close(a, b, min_r, max_error)


def test_auto_batch_size_fits_and_runs():
    model = create_model(VIT[0], "random", 0, 224, VIT[1]).cuda()
    names = list(resolve_layers(VIT[0], {"n": 4}, POOLING, 224, VIT[1])["layer"])
    sample = torch.randn(1, 3, 224, 224)

    def run(x):
        return extract_features(model, x, names, POOLING, "cross_entropy", len(x))

    size = auto_batch_size(run, sample, torch.device("cuda"), cap=512)
    assert 8 <= size <= 512
    run(sample.expand(size, -1, -1, -1).contiguous().cuda())  # the chosen batch fits
    torch.cuda.empty_cache()


def test_run_extract_on_cuda_with_workers_and_pinned_memory(demo_manifest, tmp_path):
    manifest_path, _ = demo_manifest
    layers = resolve_layers(CNN[0], {"n": 3}, POOLING, 32, CNN[1])
    write_table(tmp_path / "layers.parquet", layers)
    spec = {"timm_name": CNN[0], "weights": "random", "input_size": 32, "timm_kwargs": CNN[1], "loss": "cross_entropy"}
    outs = {}
    for device, workers in (("cpu", 0), ("cuda", 2)):
        outs[device] = tmp_path / device
        extract_to_folder(
            manifest_path,
            tmp_path / "layers.parquet",
            outs[device],
            spec,
            POOLING,
            seed=0,
            device=device,
            batch_size="auto",
            cache_dir=tmp_path / f"cache-{device}",
            shard_size=5,
            workers=workers,
        )
    for signal in ("act", "grad"):
        for k in range(3):
            cpu, gpu = (np.asarray(load_features(outs[d], signal, k)) for d in ("cpu", "cuda"))
            # 32 px images: the smallest gradients differ by up to 0.3 % of the layer's largest (H200).
            _close(cpu, gpu, max_error=1e-2)


def test_cuda_feedback_signals_match_cpu():
    from brainprop.features import learning_rules as lr

    images = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    names = list(resolve_layers(CNN[0], {"n": 4}, POOLING, 64, CNN[1])["layer"])
    signals = ("fa", "dfa", "sign")
    cpu_model = create_model(CNN[0], "random", 0, 64, CNN[1])
    cpu = extract_features(cpu_model, images, names, POOLING, "cross_entropy", 6, signals=signals, seed=2)
    model = create_model(CNN[0], "random", 0, 64, CNN[1]).cuda()
    gpu = extract_features(model, images, names, POOLING, "cross_entropy", 3, signals=signals, seed=2)
    for signal in signals:
        for a, b in zip(cpu[signal], gpu[signal]):
            _close(a, b)
    # Feedback through the forward weights is backprop on CUDA too.
    feedback = Feedback(model)
    feedback._rules["fa"] = lr.feedback_matrices(model, "bp", 0)
    x = images.cuda()
    fa = extract_batch(model, x, names, POOLING, "cross_entropy", signals=("fa",), feedback=feedback)["fa"]
    grad = extract_batch(model, x, names, POOLING, "cross_entropy", signals=("grad",))["grad"]
    for f, g in zip(fa, grad):
        torch.testing.assert_close(f, g, rtol=1e-5, atol=1e-6 * float(g.abs().max()))
