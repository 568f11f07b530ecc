"""Tests of the extraction cache and the extract rule's runtime: keys, shards, resume, precision, memory.

Models are random-weight timm models on 32 px images of the demo image set (conftest's
`demo_manifest`, 12 images). Reduced-precision features are compared with float32 ones at a
tolerance stated per test (autocast changes the arithmetic, so they are close, not equal).
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from brainprop.features.cache import ShardCache, feature_identity, feature_key, file_sha256, weights_identity
from brainprop.features.extract import (
    BATCH_TOLERANCE,
    BatchRunner,
    ImageDataset,
    _gradients,
    batch_difference,
    batch_size_from_memory,
    extract_features,
    image_loader,
)
from brainprop.features.files import feature_path, load_features, load_output
from brainprop.features.layers import resolve_layers
from brainprop.features.models import create_model, image_transform
from brainprop.features.rules import extract_to_folder
from brainprop.io import read_provenance, write_table

CNN = ("resnet18", {"zero_init_last": False})
POOLING = {"mode": "grid", "grid": 2}
SPEC = {"timm_name": CNN[0], "weights": "random", "input_size": 32, "timm_kwargs": CNN[1], "loss": "cross_entropy"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def layers_path(tmp_path):
    layers = resolve_layers(CNN[0], {"n": 3}, POOLING, 32, CNN[1])
    write_table(tmp_path / "layers.parquet", layers)
    return tmp_path / "layers.parquet"


def _extract(manifest_path, layers_path, out, **kwargs):
    options = {"seed": 0, "device": "cpu", "batch_size": 5, "cache_dir": out.parent / "cache", "shard_size": 4}
    options.update(kwargs)
    spec = {**SPEC, **options.pop("spec", {})}
    return extract_to_folder(manifest_path, layers_path, out, spec, POOLING, **options)


def _arrays(out, n_layers=3) -> dict:
    return {(s, k): np.asarray(load_features(out, s, k)) for s in ("act", "grad") for k in range(n_layers)}


# ---------------------------------------------------------------- the cache key


def _identity(images, **changes) -> dict:
    model = {**SPEC, **changes.pop("model", {})}
    args = {
        "seed": 0,
        "preprocessing": {"input_size": [3, 32, 32]},
        "layers": ["layer1.0", "layer4.1"],
        "pooling": POOLING,
        "manifest": images,
        "storage_dtype": "float32",
    }
    args.update(changes)
    return feature_identity(model, **args)


def test_every_ingredient_of_the_features_changes_the_key(demo_manifest, tmp_path):
    _, manifest = demo_manifest
    base = feature_key(_identity(manifest))
    other_images = manifest.assign(sha256=manifest["sha256"].str[::-1])
    changed = {
        "timm_name": _identity(manifest, model={"timm_name": "resnet34"}),
        "timm_kwargs": _identity(manifest, model={"timm_kwargs": {}}),
        "seed of random weights": _identity(manifest, seed=1),
        "preprocessing": _identity(manifest, preprocessing={"input_size": [3, 64, 64]}),
        "layers": _identity(manifest, layers=["layer1.0", "layer4.0"]),
        "pooling": _identity(manifest, pooling={"mode": "mean"}),
        "loss": _identity(manifest, model={"loss": "self_distillation"}),
        "loss_params": _identity(manifest, model={"loss_params": {"seed": 3}}),
        "precision": _identity(manifest, model={"precision": "bfloat16"}),
        "signals": _identity(manifest, model={"signals": ["act"]}),
        "image content": _identity(manifest, manifest=other_images),
        "image order": _identity(manifest, manifest=manifest.iloc[::-1]),
        "storage dtype": _identity(manifest, storage_dtype="float16"),
        "grad_normalize": _identity(manifest, model={"grad_normalize": "l2"}),
    }
    # A loss that reads a file: its content, not only its name, is in the key.
    head = tmp_path / "head.pth"
    head.write_bytes(b"first")
    changed["head file"] = _identity(manifest, model={"loss": "head", "loss_params": {"head": str(head)}})
    first = feature_key(changed["head file"])
    head.write_bytes(b"second")
    changed["head file content"] = _identity(manifest, model={"loss": "head", "loss_params": {"head": str(head)}})
    assert feature_key(changed["head file content"]) != first
    # The default scale adds nothing, so keys made before grad_normalize existed stay valid.
    assert feature_key(_identity(manifest, model={"grad_normalize": "none"})) == base
    keys = {name: feature_key(identity) for name, identity in changed.items()}
    assert all(key != base for key in keys.values()), [n for n, k in keys.items() if k == base]
    assert len(set(keys.values())) == len(keys)
    # Same identity, same key; key order in the dicts does not matter.
    assert feature_key(_identity(manifest)) == base
    assert feature_key(dict(reversed(list(_identity(manifest).items())))) == base


def test_weights_identity_hashes_checkpoint_content(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(3)}, path)
    first = weights_identity(str(path), seed=0)
    assert first == weights_identity(str(path), seed=5) == f"checkpoint(sha256={file_sha256(path)})"
    torch.save({"w": torch.ones(3)}, path)
    assert weights_identity(str(path), seed=0) != first
    assert weights_identity("random", 0) != weights_identity("random", 1)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        weights_identity(str(tmp_path / "missing.pth"), 0)


# ---------------------------------------------------------------- shards: verify, resume, assemble


def _cache(tmp_path, n_images=10, shard_size=4) -> ShardCache:
    return ShardCache(tmp_path / "cache", {"k": 1, "storage_dtype": "float32"}, n_images, shard_size, ["act"], 2)


def _extras(n: int, value: float = 0.0) -> dict:
    """The per-image arrays every shard stores beside the signals (cache.EXTRAS): output and nuisance."""
    return {"output": [np.full((n, 5), value, np.float32)], "nuisance": [np.full((n, 4), value, np.float32)]}


def _shard_features(shard, value: float) -> dict:
    return {"act": [np.full((shard.size, 3), value + k, dtype=np.float32) for k in range(2)], **_extras(shard.size)}


def test_shards_partition_the_images(tmp_path):
    cache = _cache(tmp_path)
    assert [(s.start, s.stop) for s in cache.shards] == [(0, 4), (4, 8), (8, 10)]


def test_only_verified_shards_are_trusted(tmp_path, caplog):
    cache = _cache(tmp_path)
    with cache.lock():
        for shard in cache.shards[:2]:
            cache.write_shard(shard, _shard_features(shard, shard.index))
        assert cache.pending() == [cache.shards[2]]
        # A truncated array (a job killed mid-write would leave none, but disks fail) is caught
        # by its checksum; a shard folder without shard.json (killed before it) is not trusted.
        broken = feature_path(cache.shard_dir(cache.shards[1]), "act", 1)
        broken.write_bytes(broken.read_bytes()[:-8])
        partial = cache.shard_dir(cache.shards[2])
        feature_path(partial, "act", 0).parent.mkdir(parents=True)
        np.save(feature_path(partial, "act", 0), np.zeros((2, 3), np.float32))
        with caplog.at_level(logging.INFO, logger="brainprop.features.cache"):
            assert cache.pending() == cache.shards[1:]
        assert "1 shard(s) of 3 verified, 2 to extract (2 incomplete or corrupt, deleted)" in caplog.text
        assert not partial.exists() and not cache.shard_dir(cache.shards[1]).exists()


def test_assemble_concatenates_and_verifies(tmp_path):
    cache = _cache(tmp_path)
    with cache.lock():
        for shard in cache.shards:
            cache.write_shard(shard, _shard_features(shard, 10 * shard.index))
        assert not cache.is_assembled()
        cache.assemble()
        assert cache.is_assembled()
        assert not any(cache.shard_dir(s).exists() for s in cache.shards)
        layer1 = np.load(feature_path(cache.assembled_dir, "act", 1))
        expected = np.concatenate([np.full((s.size, 3), 10 * s.index + 1.0) for s in cache.shards])
        np.testing.assert_array_equal(layer1, expected)
        # Tampering with an assembled file is noticed.
        np.save(feature_path(cache.assembled_dir, "act", 1), layer1 + 1)
        assert not cache.is_assembled()


def test_write_shard_rejects_wrong_rows(tmp_path):
    cache = _cache(tmp_path)
    shard = cache.shards[0]
    with pytest.raises(ValueError, match="3 rows, expected 4"):
        cache.write_shard(shard, {"act": [np.zeros((3, 3), np.float32)] * 2, **_extras(3)})


def test_identity_clash_in_one_folder_is_an_error(tmp_path):
    cache = _cache(tmp_path)
    with cache.lock():
        pass
    (cache.root / "identity.json").write_text('{"k": 2}')
    with pytest.raises(RuntimeError, match="identity.json differs"), cache.lock():
        pass


# ---------------------------------------------------------------- extract_to_folder with the cache


def test_resume_trusts_verified_shards_and_redoes_the_rest(demo_manifest, layers_path, tmp_path, caplog):
    manifest_path, _ = demo_manifest
    out = tmp_path / "extract"
    key = _extract(manifest_path, layers_path, out)
    full = _arrays(out)
    assert (out / "act" / "00.npy").stat().st_nlink == 2  # hard link into the cache, no second copy

    # Rebuild the state of a job killed in its third shard: shard 0 verified but planted with
    # different numbers (so we can see it is reused, not recomputed), shard 1 truncated.
    cache = ShardCache(
        tmp_path / "cache", read_provenance(out / "samples.parquet")["identity"], 12, 4, ["act", "grad"], 3
    )
    assert cache.key == key
    import shutil

    extras = {"output": np.array(load_output(cache.assembled_dir)), "nuisance": cache.load_extra("nuisance")}
    shutil.rmtree(cache.assembled_dir)
    shutil.rmtree(out)
    for shard, shift in zip(cache.shards[:2], (1000.0, 0.0)):
        rows = slice(shard.start, shard.stop)
        cache.write_shard(
            shard,
            {s: [full[(s, k)][rows] + shift for k in range(3)] for s in ("act", "grad")}
            | {name: [np.asarray(a[rows])] for name, a in extras.items()},
        )
    broken = feature_path(cache.shard_dir(cache.shards[1]), "grad", 2)
    broken.write_bytes(broken.read_bytes()[:100])

    with caplog.at_level(logging.INFO):
        assert _extract(manifest_path, layers_path, out, batch_size=3) == key
    assert "1 shard(s) of 3 verified, 2 to extract (1 incomplete or corrupt, deleted)" in caplog.text
    resumed = _arrays(out)
    for name, array in resumed.items():
        np.testing.assert_array_equal(array[:4], full[name][:4] + 1000.0)  # the verified shard was reused
        # Recomputed at another batch size: equal within the documented batch tolerance.
        assert batch_difference(full[name][4:], array[4:]) <= BATCH_TOLERANCE[name[0]]


def test_rerun_with_the_same_identity_extracts_nothing(demo_manifest, layers_path, tmp_path, caplog):
    manifest_path, _ = demo_manifest
    key = _extract(manifest_path, layers_path, tmp_path / "a")
    with caplog.at_level(logging.INFO):
        # Batch size, shard size and the output folder are not part of the identity.
        assert _extract(manifest_path, layers_path, tmp_path / "b", batch_size=7, shard_size=5) == key
    assert "complete; nothing to extract" in caplog.text and "extracting" not in caplog.text
    for name, array in _arrays(tmp_path / "a").items():
        np.testing.assert_array_equal(array, _arrays(tmp_path / "b")[name])


def test_float16_storage_halves_the_files(demo_manifest, layers_path, tmp_path):
    manifest_path, _ = demo_manifest
    k32 = _extract(manifest_path, layers_path, tmp_path / "f32")
    k16 = _extract(manifest_path, layers_path, tmp_path / "f16", storage_dtype="float16")
    assert k16 != k32
    a32, a16 = _arrays(tmp_path / "f32"), _arrays(tmp_path / "f16")
    for name in a32:
        assert a16[name].dtype == np.float16
        np.testing.assert_allclose(
            a16[name].astype(np.float32), a32[name], rtol=2e-3, atol=2e-3 * np.abs(a32[name]).max()
        )


def test_progress_lines_in_the_log(demo_manifest, layers_path, tmp_path, caplog):
    manifest_path, _ = demo_manifest
    with caplog.at_level(logging.INFO, logger="brainprop.features.extract"):
        _extract(manifest_path, layers_path, tmp_path / "out", progress_every_s=1e-9)
    lines = [r.getMessage() for r in caplog.records if "images/s" in r.getMessage()]
    assert len(lines) >= 3  # one per batch at this interval (5 + 5 + 2 images by shard: 4+4+4 -> 3 shards)
    assert lines[-1].startswith("extract: 12/12 images") and "ETA 0 s" in lines[-1]


def test_auto_batch_size_on_cpu_uses_the_fallback(demo_manifest, layers_path, tmp_path, caplog):
    manifest_path, _ = demo_manifest
    with caplog.at_level(logging.INFO):
        _extract(manifest_path, layers_path, tmp_path / "out", batch_size="auto")
    assert "batch size 32" in caplog.text


def test_batch_size_from_memory_closed_form():
    # 100 MiB fixed + 10 MiB per image; 1 GiB free at 80 %: floor((819.2 - 100) / 10) = 71.
    mib = 2**20
    assert batch_size_from_memory(120 * mib, 160 * mib, 2, 6, 1024 * mib) == 71
    assert batch_size_from_memory(120 * mib, 160 * mib, 2, 6, 1024 * mib, cap=16) == 16
    assert batch_size_from_memory(120 * mib, 160 * mib, 2, 6, 50 * mib) == 1


# ---------------------------------------------------------------- precision and memory


def _grid_features(precision: str, images: torch.Tensor) -> tuple[dict, list[str]]:
    model = create_model(CNN[0], "random", 0, 32, CNN[1])
    names = list(resolve_layers(CNN[0], {"n": 3}, POOLING, 32, CNN[1])["layer"])
    return extract_features(model, images, names, POOLING, "cross_entropy", 4, precision=precision), names


# Stated tolerances (random resnet18, 32 px): (min correlation, max |error| / max |float32|, median over
# images of each image's max |error| / max |float32|) per signal. Reduced precision moves a unit whose
# input sits within its rounding (float16: 5e-4 relative, bfloat16: 4e-3) of a ReLU's or max-pool's
# kink to the other side, which changes that one image's gradient below it; so the largest error is
# one image's, and the median image says whether the arithmetic itself is right. Measured over 8 seeds
# of 6 images (benchmarks/batch_invariance.py explains the float32 side): float16 grad r >= 0.9985,
# largest error 36 % (one image; seed 0: 5.0 %, which failed the former 5 % bound on this machine),
# median image <= 2.3 %; float16 act r >= 0.999999, error <= 0.12 %; bfloat16 act r >= 0.99996,
# error <= 0.9 %; bfloat16 grad r >= 0.9898, error <= 36 %, median image <= 8 %.
PRECISION_TOLERANCE = {
    ("bfloat16", "act"): (0.9999, 0.02, 0.02),
    ("bfloat16", "grad"): (0.98, 0.5, 0.15),
    ("float16", "act"): (0.99999, 0.005, 0.005),
    ("float16", "grad"): (0.998, 0.5, 0.05),
}


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_reduced_precision_is_close_to_float32(precision):
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ref, _ = _grid_features("float32", images)
    got, _ = _grid_features(precision, images)
    for signal in ("act", "grad"):
        min_r, max_error, median_error = PRECISION_TOLERANCE[(precision, signal)]
        for a, b in zip(ref[signal], got[signal]):
            assert b.dtype == np.float32 and np.isfinite(b).all()
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > min_r
            per_image = np.abs(a - b).max(axis=1) / np.abs(a).max()
            assert per_image.max() <= max_error and np.median(per_image) <= median_error
            assert not np.array_equal(a, b)  # autocast really ran


def test_float16_gradients_are_scaled_against_underflow():
    # Gradients of 1e-9 are below float16's smallest subnormal (6e-8): unscaled they vanish.
    x = torch.ones(4, 8, dtype=torch.float16, requires_grad=True)
    out = x * 1.0
    value = (out.float() * 1e-9).sum()
    (grad,) = _gradients(value, [out], "float16")
    assert grad.dtype == torch.float32
    np.testing.assert_allclose(grad.numpy(), 1e-9, rtol=1e-2)
    out = x * 1.0
    (unscaled,) = torch.autograd.grad((out.float() * 1e-9).sum(), [out])
    assert (unscaled == 0).all()  # the underflow the scaling prevents


def test_out_of_memory_splits_the_batch_and_gives_the_same_features():
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ref, names = _grid_features("float32", images)
    model = create_model(CNN[0], "random", 0, 32, CNN[1])

    def fail_above_three(module, args):
        if args[0].shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (planted)")

    model.conv1.register_forward_pre_hook(fail_above_three)
    runner = BatchRunner(model, names, POOLING, "cross_entropy", {}, ("act", "grad"), "float32")
    got = runner(images, [str(i) for i in range(8)], np.arange(8))
    assert runner.largest_fit == 2
    calls = []
    model.conv1.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    runner(images[:6], [str(i) for i in range(6)], np.arange(6))
    assert calls == [2, 2, 2]  # later batches are split at once, without trying what cannot fit
    for signal in ("act", "grad"):
        for a, b in zip(ref[signal], got[signal]):
            assert batch_difference(a, b) <= BATCH_TOLERANCE[signal]  # batches of 2 against batches of 4


def test_batch_tolerance_holds_on_a_trained_network_and_is_not_vacuous(trained_weights, tmp_path):
    """The documented batch tolerance, on ImageNet MobileNetV2 (ReLU6): batch 1 against 16 moves
    gradients (units on a clip flip) but stays within BATCH_TOLERANCE; activations barely move."""
    from PIL import Image

    from brainprop.features.models import load_model
    from brainprop.stimuli.demo import make_demo_images

    model = load_model({"source": "torchvision", "name": "mobilenet_v2.IMAGENET1K_V1", "weights": "pretrained"}, 0)
    manifest = make_demo_images(tmp_path, n_images=16, size=64, seed=0)
    transform = image_transform(model, 64)
    images = torch.stack([transform(Image.open(tmp_path / p).convert("RGB")) for p in manifest["path"]])
    names = ["features.4", "features.10", "features.16"]
    one = extract_features(model, images, names, POOLING, "cross_entropy", batch_size=1)
    all_ = extract_features(model, images, names, POOLING, "cross_entropy", batch_size=16)
    moved = []
    for signal in ("act", "grad"):
        for a, b in zip(one[signal], all_[signal]):
            assert batch_difference(a, b) <= BATCH_TOLERANCE[signal]
            moved.append(batch_difference(a, b))
    print("batch 1 vs 16, act then grad:", moved)
    assert max(moved[3:]) > 1e-6  # the batch cut does change gradients: the tolerance is not slack


def test_other_runtime_errors_are_not_taken_for_memory():
    model = create_model(CNN[0], "random", 0, 32, CNN[1])
    model.conv1.register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    runner = BatchRunner(model, ["layer1.0"], POOLING, "cross_entropy", {}, ("act",), "float32")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        runner(torch.zeros(2, 3, 32, 32), ["a", "b"], np.arange(2))


def test_image_dataset_reads_the_manifest_in_order(demo_manifest):
    manifest_path, manifest = demo_manifest
    model = create_model(CNN[0], "random", 0, 32, CNN[1])
    dataset = ImageDataset(manifest_path, image_transform(model, 32))
    assert len(dataset) == len(manifest)
    loader = image_loader(dataset, [(2, 6), (6, 11)], 3, workers=1, device=torch.device("cpu"))
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [3, 1, 3, 2]  # no batch crosses the end of a span
    assert torch.cat([b[1] for b in batches]).tolist() == list(range(2, 11))
    np.testing.assert_array_equal(batches[0][0][1].numpy(), dataset[3][0].numpy())
