"""Tests of brainprop.features: hooked activations and gradients, pooling, checkpoints, loaders, CKA.

Every model is a random-weight timm model (`pretrained=False`) on small inputs. Gradients are
checked against `torch.autograd.grad` of the loss taken one image at a time on a copy of the
model with its own hooks, the input requiring grad (no detached leaf), then pooled with `pool`.
Tolerance: rtol 1e-4 and atol 1e-5 x the largest |reference| of the layer (float32 forward;
batched and one-image convolutions differ by about 1e-6 relative).
"""

from __future__ import annotations

import copy
import os
import pickle

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from brainprop.features.cka import cka_table, linear_cka
from brainprop.features.extract import extract_features
from brainprop.features.files import (
    feature_path,
    load_features,
    load_layers,
    load_nuisance,
    load_output,
    load_samples,
    save_samples,
)
from brainprop.features.layers import find_blocks, resolve_layers
from brainprop.features.losses import LOSS_PREPARERS, LOSSES, _crop_box, image_seed, prototypes, teacher_view
from brainprop.features.models import CheckpointError, create_model, image_transform, load_model, model_info
from brainprop.features.pooling import TokenContext, pool, token_context
from brainprop.features.projection import project, projected_dim, projection_matrix
from brainprop.features.rules import extract_to_folder
from brainprop.io import CorruptFileError, save_array, write_table

CNN = ("resnet18", {"zero_init_last": False})
VIT = ("vit_tiny_patch16_224", {})
SIZE = 64
N_IMAGES = 16
# The two ImageNet-trained CNNs `make install` puts in the weights folder, at the test size.
TRAINED = {
    "lite0": {
        "source": "timm",
        "name": "tf_efficientnet_lite0",
        "weights": "efficientnet-lite0-57934424.pth",
        "key_map": "lukemelas_efficientnet",
        "input_size": SIZE,
    },
    "mobilenet": {
        "source": "torchvision",
        "name": "mobilenet_v2.IMAGENET1K_V1",
        "weights": "pretrained",
        "input_size": SIZE,
    },
}


# ---------------------------------------------------------------- helpers and fixtures


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(spec: tuple[str, dict], seed: int = 0, size: int = SIZE) -> torch.nn.Module:
    return create_model(spec[0], "random", seed, size, spec[1])


def _images(n: int = N_IMAGES, size: int = SIZE, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _reference(model: torch.nn.Module, images: torch.Tensor, names: list[str]) -> tuple[dict, dict]:
    """Unpooled block outputs and dL/d(output), one image at a time, with own hooks on a copy."""
    ref = copy.deepcopy(model)
    modules = dict(ref.named_modules())
    outs: dict[str, list] = {n: [] for n in names}
    grads: dict[str, list] = {n: [] for n in names}
    for image in images:
        store: dict[str, torch.Tensor] = {}
        handles = [
            modules[n].register_forward_hook(lambda m, i, o, n=n, store=store: store.__setitem__(n, o)) for n in names
        ]
        try:
            x = image[None].clone().requires_grad_(True)
            logits = ref(x)
            loss = F.cross_entropy(logits, logits.argmax(dim=1))
            g = torch.autograd.grad(loss, [store[n] for n in names])
        finally:
            for h in handles:
                h.remove()
        for n, gn in zip(names, g):
            outs[n].append(store[n].detach())
            grads[n].append(gn)
    return {n: torch.cat(v) for n, v in outs.items()}, {n: torch.cat(v) for n, v in grads.items()}


def _assert_close(got: np.ndarray, ref: np.ndarray) -> None:
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * scale if scale > 0 else 0.0)


@pytest.fixture(scope="module")
def cnn_case():
    """resnet18 (random, zero_init_last=False) at 64 px: model, images, blocks, reference."""
    model = _model(CNN)
    images = _images()
    names = find_blocks(model)
    return model, images, names, TokenContext(), *_reference(model, images, names)


def _photos(model: torch.nn.Module, n: int = N_IMAGES) -> torch.Tensor:
    """n real images: crops of scikit-image photographs, preprocessed for the model."""
    from PIL import Image
    from skimage import data

    transform = image_transform(model)
    photos = [
        Image.fromarray(getattr(data, name)()).convert("RGB") for name in ("chelsea", "coffee", "astronaut", "rocket")
    ]
    crops = []
    for k in range(n):
        photo = photos[k % len(photos)]
        w, h = photo.size
        side = min(w, h) * (1.0 - 0.15 * (k // len(photos)))
        left, top = (w - side) * ((k * 37) % 11) / 10, (h - side) * ((k * 53) % 7) / 6
        crops.append(transform(photo.crop((int(left), int(top), int(left + side), int(top + side)))))
    return torch.stack(crops)


def _trained_case(key: str):
    """A trained CNN in float64: its ReLU6 clips at 0 and 6, and in float32 the rounding of a batched
    convolution (about 1e-7) flips the odd unit sitting on a clip, which moves every gradient below it
    by about 1e-3 of its scale (measured on MobileNetV2); float64 leaves the arithmetic to compare."""
    model = load_model(TRAINED[key], 0).double()
    images = _photos(model).double()
    names = model_info(model).blocks()
    return model, images, names, TokenContext(), *_reference(model, images, names)


@pytest.fixture(scope="module")
def lite0_case(trained_weights):
    """EfficientNet-Lite0, ImageNet-trained (timm, lukemelas file through the key map), 64 px photographs."""
    return _trained_case("lite0")


@pytest.fixture(scope="module")
def mobilenet_case(trained_weights):
    """MobileNetV2, ImageNet-trained (torchvision IMAGENET1K_V1 from the weights folder), 64 px photographs."""
    return _trained_case("mobilenet")


@pytest.fixture(scope="module")
def vit_case():
    """vit_tiny at 64 px (class token, head on the class token): model, images, blocks, reference."""
    model = _model(VIT)
    images = _images()
    names = find_blocks(model)
    ctx = TokenContext(num_prefix_tokens=1, num_reg_tokens=0, has_class_token=True)
    return model, images, names, ctx, *_reference(model, images, names)


# ---------------------------------------------------------------- 1, 2: gradients and batch size


@pytest.mark.parametrize(
    "case, mode",
    [
        ("cnn_case", "grid"),
        ("cnn_case", "mean"),
        ("vit_case", "grid"),
        ("vit_case", "mean"),
        ("vit_case", "cls"),
        ("lite0_case", "grid"),
        ("lite0_case", "mean"),
        ("mobilenet_case", "grid"),
    ],
)
def test_features_match_one_image_autograd(case, mode, request):
    model, images, names, ctx, ref_out, ref_grad = request.getfixturevalue(case)
    spec = {"mode": mode, "grid": 2}
    feats = extract_features(model, images, names, spec, "cross_entropy", batch_size=N_IMAGES)
    assert set(feats) == {"act", "grad"}
    for k, name in enumerate(names):
        _assert_close(feats["act"][k], pool(ref_out[name], spec, ctx).numpy())
        _assert_close(feats["grad"][k], pool(ref_grad[name], spec, ctx).numpy())
    # The check is not vacuous: the first block's gradient is not zero.
    assert np.abs(feats["grad"][0]).max() > 0


@pytest.mark.parametrize("case", ["cnn_case", "vit_case", "lite0_case", "mobilenet_case"])
@pytest.mark.parametrize("batch_size", [1, 5])
def test_batch_size_invariance(case, batch_size, request):
    model, images, names, *_ = request.getfixturevalue(case)
    spec = {"mode": "grid", "grid": 2}
    full = extract_features(model, images, names, spec, "cross_entropy", batch_size=N_IMAGES)
    small = extract_features(model, images, names, spec, "cross_entropy", batch_size=batch_size)
    for signal in ("act", "grad"):
        for a, b in zip(small[signal], full[signal]):
            assert a.dtype == np.float32 and a.shape == (N_IMAGES, b.shape[1])
            _assert_close(a, b)


def test_extraction_leaves_model_frozen_and_unhooked(cnn_case):
    model, images, names, *_ = cnn_case
    extract_features(model, images[:2], names, {"mode": "mean"}, "cross_entropy")
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())


# ---------------------------------------------------------------- 3: checkpoints


class _Payload:
    """An object whose unpickling creates a directory: proof that arbitrary code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("wrapped", [False, True])
def test_checkpoint_gives_identical_features(cnn_case, tmp_path, wrapped):
    model, images, names, *_ = cnn_case
    path = tmp_path / "random.pt"
    state = model.state_dict()
    torch.save({"state_dict": state} if wrapped else state, path)
    loaded = create_model(CNN[0], str(path), seed=123, input_size=SIZE, timm_kwargs=CNN[1])
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    spec = {"mode": "grid", "grid": 2}
    a = extract_features(model, images[:4], names, spec, "cross_entropy")
    b = extract_features(loaded, images[:4], names, spec, "cross_entropy")
    for signal in ("act", "grad"):
        for x, y in zip(a[signal], b[signal]):
            np.testing.assert_array_equal(x, y)
    # Another seed without the checkpoint gives other features: the weights came from the file.
    other = create_model(CNN[0], "random", seed=123, input_size=SIZE, timm_kwargs=CNN[1])
    c = extract_features(other, images[:4], names[:1], spec, "cross_entropy", signals=("act",))
    assert not np.allclose(c["act"][0], a["act"][0])


def test_missing_checkpoint_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "weights.pt"
    with pytest.raises(FileNotFoundError, match=str(path)):
        create_model("resnet18", str(path), seed=0)


def test_checkpoint_with_pickled_object_is_refused(cnn_case, tmp_path):
    model = cnn_case[0]
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": model.state_dict(), "extra": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"is not a checkpoint torch\.load\(weights_only=True\) can read") as err:
        create_model(CNN[0], str(path), seed=0, input_size=SIZE, timm_kwargs=CNN[1])
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()


def test_pretrained_passes_input_size_and_wraps_hub_errors(monkeypatch):
    import timm

    calls = []

    def fake_create(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs))
        if name == "offline_model":
            raise OSError("no network")
        with torch.device("cpu"):
            return torch.nn.Linear(2, 2)

    monkeypatch.setattr(timm, "create_model", fake_create)
    create_model("vit_tiny_patch16_224", "pretrained", seed=0, input_size=64, timm_kwargs={"num_classes": 5})
    assert calls[-1] == ("vit_tiny_patch16_224", True, {"num_classes": 5, "img_size": 64})
    with pytest.raises(RuntimeError, match="offline_model.*prefetch"):
        create_model("offline_model", "pretrained", seed=0)


# ---------------------------------------------------------------- 4: pooling


def _adaptive_bounds(size: int, g: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling cells: [floor(i*size/g), ceil((i+1)*size/g))."""
    return [((i * size) // g, -((-(i + 1) * size) // g)) for i in range(g)]


def _hand_grid(fmap: np.ndarray, g: int) -> np.ndarray:
    """(B, C, H, W) -> (B, C*g*g) by explicit cell means, channel-major."""
    b, c, h, w = fmap.shape
    out = np.zeros((b, c, g, g))
    for i, (y0, y1) in enumerate(_adaptive_bounds(h, g)):
        for j, (x0, x1) in enumerate(_adaptive_bounds(w, g)):
            out[:, :, i, j] = fmap[:, :, y0:y1, x0:x1].mean(axis=(2, 3))
    return out.reshape(b, -1)


@pytest.mark.parametrize("side, g", [(4, 2), (5, 2), (6, 3)])
def test_pooling_cnn_layout(side, g):
    x = np.random.default_rng(0).normal(size=(2, 3, side, side)).astype(np.float32)
    t = torch.from_numpy(x)
    np.testing.assert_allclose(pool(t, {"mode": "mean"}).numpy(), x.mean(axis=(2, 3)), rtol=1e-6, atol=1e-6)
    got = pool(t, {"mode": "grid", "grid": g}).numpy()
    np.testing.assert_allclose(got, _hand_grid(x.astype(np.float64), g), rtol=1e-6, atol=1e-6)
    assert pool(t, {"mode": "grid"}).shape == (2, 3 * 4)  # default grid is 2
    with pytest.raises(ValueError, match="class token"):
        pool(t, {"mode": "cls"})
    with pytest.raises(ValueError, match="class token"):
        pool(t, {"mode": "cls_mean"})


def test_pooling_channels_last_layout():
    """Swin-like (B, H, W, C) outputs pool like their (B, C, H, W) transpose."""
    x = torch.randn(2, 4, 4, 3)
    ctx = TokenContext(channels_last=True)
    nchw = x.permute(0, 3, 1, 2).numpy().astype(np.float64)
    np.testing.assert_allclose(pool(x, {"mode": "grid"}, ctx).numpy(), _hand_grid(nchw, 2), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pool(x, {"mode": "mean"}, ctx).numpy(), nchw.mean(axis=(2, 3)), rtol=1e-6)


@pytest.mark.parametrize("n_reg", [0, 4])
def test_pooling_token_layout(n_reg):
    b, side, c = 2, 4, 3
    rng = np.random.default_rng(1)
    cls = rng.normal(size=(b, 1, c))
    regs = np.full((b, n_reg, c), 1e6)  # registers must never leak into mean or grid
    patches = rng.normal(size=(b, side * side, c))
    x = torch.from_numpy(np.concatenate([cls, regs, patches], axis=1).astype(np.float32))
    ctx = TokenContext(num_prefix_tokens=1 + n_reg, num_reg_tokens=n_reg, has_class_token=True)
    fmap = patches.reshape(b, side, side, c).transpose(0, 3, 1, 2)  # token index = row * side + col
    expected = {
        "cls": cls[:, 0],
        "mean": patches.mean(axis=1),
        "cls_mean": np.concatenate([cls[:, 0], patches.mean(axis=1)], axis=1),
        "grid": np.concatenate([cls[:, 0], _hand_grid(fmap, 2)], axis=1),
    }
    for mode, want in expected.items():
        np.testing.assert_allclose(pool(x, {"mode": mode, "grid": 2}, ctx).numpy(), want, rtol=1e-5, atol=1e-6)
    # Without a class token (registers only), grid is the patch grid alone and cls is refused.
    no_cls = TokenContext(num_prefix_tokens=n_reg, num_reg_tokens=n_reg, has_class_token=False)
    tokens = torch.from_numpy(np.concatenate([regs, patches], axis=1).astype(np.float32))
    got = pool(tokens, {"mode": "grid"}, no_cls).numpy()
    np.testing.assert_allclose(got, _hand_grid(fmap, 2), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="class token"):
        pool(tokens, {"mode": "cls"}, no_cls)


def test_pooling_errors():
    with pytest.raises(ValueError) as err:
        pool(torch.zeros(1, 3, 2, 2), {"mode": "max"})
    assert "'max'" in str(err.value)
    for mode in ("grid", "mean", "cls", "cls_mean"):
        assert repr(mode) in str(err.value)
    with pytest.raises(ValueError, match="square"):
        pool(torch.zeros(1, 1 + 15, 3), {"mode": "mean"}, TokenContext(1, 0, True))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        pool(torch.zeros(2, 3), {"mode": "mean"})


def test_token_context_reads_timm_models():
    import timm

    with torch.device("meta"):
        regs = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, reg_tokens=4)
        bare = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=64, reg_tokens=4, class_token=False, global_pool="avg"
        )
        swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
        cnn = timm.create_model("resnet18", pretrained=False)
        sam = timm.create_model("samvit_base_patch16", pretrained=False)
    assert token_context(regs) == TokenContext(5, 4, True, False)
    assert token_context(bare) == TokenContext(4, 4, False, False)
    assert token_context(swin).channels_last
    assert token_context(cnn) == TokenContext()
    assert token_context(sam) == TokenContext(channels_last=True)  # format read from patch_embed


# ---------------------------------------------------------------- 5: losses


def test_cross_entropy_needs_a_classifier_head():
    model = create_model("resnet18", "random", 0, 32, {"num_classes": 0})
    with pytest.raises(ValueError, match="classifier head"):
        extract_features(model, _images(2, 32), ["layer4.1"], {"mode": "mean"}, "cross_entropy")


def test_unknown_loss_lists_valid_losses(cnn_case):
    model, images, names, *_ = cnn_case
    with pytest.raises(ValueError) as err:
        extract_features(model, images[:1], names, {"mode": "mean"}, "mse")
    assert "'mse'" in str(err.value)
    for name in LOSSES:
        assert repr(name) in str(err.value)


# ---------------------------------------------------------------- 6: layer resolution


@pytest.fixture
def meta_spy(monkeypatch):
    """Record the device of every model timm builds."""
    import timm

    devices: list[torch.device] = []
    original = timm.create_model

    def spy(*args, **kwargs):
        model = original(*args, **kwargs)
        devices.append(next(model.parameters()).device)
        return model

    monkeypatch.setattr(timm, "create_model", spy)
    return devices


def test_resolve_layers_resnet_all_blocks_on_meta(meta_spy):
    table = resolve_layers("resnet18", {"n": 22}, {"mode": "grid", "grid": 2}, SIZE, CNN[1])
    assert meta_spy and all(d.type == "meta" for d in meta_spy)
    assert list(table["layer"]) == [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    assert list(table["layer_index"]) == list(range(8)) and list(table["ordinal"]) == list(range(8))
    depth = table["depth"].to_numpy()
    assert depth[0] == 0.0 and depth[-1] == 1.0 and np.all(np.diff(depth) > 0)
    np.testing.assert_allclose(depth, np.arange(8) / 7)
    assert table["layer_index"].dtype == np.int64 and table["depth"].dtype == np.float64


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_resolve_layers_even_selection(n):
    table = resolve_layers("resnet18", {"n": n}, {"mode": "mean"}, SIZE, CNN[1])
    ordinals = table["ordinal"].to_numpy()
    assert len(table) == n and ordinals[0] == 0 and ordinals[-1] == 7
    gaps = np.diff(ordinals)
    assert gaps.min() >= 1 and gaps.max() - gaps.min() <= 1  # evenly spaced up to rounding
    np.testing.assert_allclose(table["depth"], ordinals / 7)


def test_resolve_layers_explicit_names_and_errors():
    table = resolve_layers("resnet18", {"names": ["layer2.0", "layer4.1"]}, {"mode": "mean"}, SIZE, CNN[1])
    assert list(table["layer"]) == ["layer2.0", "layer4.1"]
    assert list(table["ordinal"]) == [2, 7] and list(table["layer_index"]) == [0, 1]
    np.testing.assert_allclose(table["depth"], [2 / 7, 1.0])
    with pytest.raises(ValueError) as err:
        resolve_layers("resnet18", {"names": ["layer9.9"]}, {"mode": "mean"}, SIZE)
    assert "layer9.9" in str(err.value) and "layer1.0" in str(err.value) and "layer4.1" in str(err.value)
    with pytest.raises(ValueError, match="not a block"):
        resolve_layers("resnet18", {"names": ["conv1"]}, {"mode": "mean"}, SIZE)
    with pytest.raises(ValueError, match="positive integer"):
        resolve_layers("resnet18", {"n": 0}, {"mode": "mean"}, SIZE)


@pytest.mark.parametrize(
    "case, spec",
    [
        ("cnn_case", {"mode": "grid", "grid": 2}),
        ("cnn_case", {"mode": "grid", "grid": 3}),
        ("cnn_case", {"mode": "mean"}),
        ("vit_case", {"mode": "grid", "grid": 2}),
        ("vit_case", {"mode": "cls_mean"}),
    ],
)
def test_resolved_dim_equals_real_pooled_dim(case, spec, request):
    model, images, *_ = request.getfixturevalue(case)
    timm_name, kwargs = CNN if case == "cnn_case" else VIT
    table = resolve_layers(timm_name, {"n": 4}, spec, SIZE, kwargs)
    feats = extract_features(model, images[:2], list(table["layer"]), spec, "cross_entropy")
    assert list(table["dim"]) == [a.shape[1] for a in feats["act"]] == [g.shape[1] for g in feats["grad"]]


def test_resolve_layers_channels_last_model():
    """Swin blocks output (B, H, W, C): the grid keeps C channels, not H."""
    table = resolve_layers("swin_tiny_patch4_window7_224", {"n": 2}, {"mode": "grid", "grid": 2})
    assert list(table["dim"]) == [96 * 4, 768 * 4]


# ---------------------------------------------------------------- 7: class-token head


def test_vit_class_token_head_gives_finite_zero_patch_gradients(vit_case):
    model, images, names, *_ = vit_case
    last = [names[0], names[-1]]
    grid = extract_features(model, images[:4], last, {"mode": "grid", "grid": 2}, "cross_entropy")
    mean = extract_features(model, images[:4], last, {"mode": "mean"}, "cross_entropy")
    for feats in (grid, mean):
        for signal in ("act", "grad"):
            assert all(np.isfinite(a).all() for a in feats[signal])
    dim = 192
    assert np.abs(grid["grad"][1][:, :dim]).max() > 0  # class token gradient
    assert np.all(grid["grad"][1][:, dim:] == 0)  # patch-token gradients of the last block
    assert np.all(mean["grad"][1] == 0)
    assert np.abs(mean["grad"][0]).max() > 0  # earlier blocks reach the class token through attention


# ---------------------------------------------------------------- 8: extract_to_folder and loaders


@pytest.mark.parametrize("loss", ["cross_entropy", "self_distillation"])
def test_run_extract_end_to_end(demo_manifest, tmp_path, loss):
    import timm
    from PIL import Image

    manifest_path, manifest = demo_manifest
    pooling = {"mode": "grid", "grid": 2}
    spec = {"timm_name": CNN[0], "weights": "random", "input_size": 32, "timm_kwargs": CNN[1], "loss": loss}
    layers = resolve_layers(CNN[0], {"n": 3}, pooling, 32, CNN[1])
    write_table(tmp_path / "layers.parquet", layers)
    out = tmp_path / "extract"
    extract_to_folder(
        manifest_path, tmp_path / "layers.parquet", out, spec, pooling, seed=0, device="cpu", batch_size=5
    )

    assert load_layers(tmp_path / "layers.parquet").equals(layers)
    for signal in ("act", "grad"):
        for k, dim in enumerate(layers["dim"]):
            path = out / signal / f"{k:02d}.npy"
            assert feature_path(out, signal, k) == path and path.is_file()
            array = load_features(out, signal, k)
            assert array.dtype == np.float32 and array.shape == (12, dim) and np.isfinite(array).all()
    samples = load_samples(out)
    assert list(samples["image_id"]) == list(manifest["image_id"])
    assert list(samples["group"]) == list(manifest["group"])
    # Beside the layers: the output the loss reads (logits; the embedding for self-distillation) and the
    # nuisance table, both in manifest order.
    output = load_output(out)
    assert output.shape == (12, 1000 if loss == "cross_entropy" else 512) and np.isfinite(output).all()
    nuisance = load_nuisance(out)
    assert list(nuisance["image_id"]) == list(manifest["image_id"])
    assert list(nuisance.columns[1:]) == ["confidence", "entropy", "grad_norm_00", "grad_norm_01", "grad_norm_02"]
    assert np.isfinite(nuisance.iloc[:, 1:].to_numpy()).all() and (nuisance["grad_norm_00"] > 0).all()

    # Row i is image i: recompute image 7 alone with an independently built transform.
    model = create_model(CNN[0], "random", 0, 32, CNN[1])
    config = timm.data.resolve_data_config({"input_size": (3, 32, 32), "crop_pct": 1.0}, model=model)
    with Image.open(manifest_path.parent / manifest["path"].iloc[7]) as img:
        x = timm.data.create_transform(**config)(img.convert("RGB"))[None]
    # The image id (not the row) seeds the teacher view: extract_to_folder passed the manifest's ids.
    one = extract_features(model, x, list(layers["layer"]), pooling, loss, image_ids=[manifest["image_id"].iloc[7]])
    for signal in ("act", "grad"):
        for k in range(len(layers)):
            _assert_close(np.asarray(load_features(out, signal, k))[7:8], one[signal][k])
    extras = extract_features(
        model, x, list(layers["layer"]), pooling, loss, image_ids=[manifest["image_id"].iloc[7]], extras=True
    )
    _assert_close(np.asarray(output)[7:8], extras["output"][0])
    np.testing.assert_allclose(nuisance.iloc[7, 1:].to_numpy(float), extras["nuisance"][0][0], rtol=1e-4)


def _record_checksums(folder, n_images: int) -> None:
    """The samples table of a hand-made extract folder, with every matrix's SHA-256 as the extract rule records."""
    import hashlib

    sums = {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.npy")}
    save_samples(folder, pd.DataFrame({"image_id": [str(i) for i in range(n_images)]}), sha256=sums)


def _saved(folder, layer_index: int, array: np.ndarray):
    """One matrix in an extract folder, with its SHA-256 recorded."""
    path = feature_path(folder, "act", layer_index)
    save_array(path, array)
    _record_checksums(folder, len(array))
    return path


@pytest.mark.parametrize("mmap", [True, False])
def test_truncated_features_raise_corrupt_file_error(tmp_path, mmap):
    path = _saved(tmp_path, 0, np.ones((12, 40), dtype=np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=str(path)):
        load_features(tmp_path, "act", 0, mmap=mmap)


def test_load_features_rejects_non_matrix(tmp_path):
    _saved(tmp_path, 3, np.ones(5, dtype=np.float32))
    with pytest.raises(ValueError, match="n_images, dim"):
        load_features(tmp_path, "act", 3)


# ---------------------------------------------------------------- 9: CKA


def _hsic(k: np.ndarray, m: np.ndarray) -> float:
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ m @ h)) / (n - 1) ** 2


def _cka_by_hsic(a: np.ndarray, b: np.ndarray) -> float:
    k, m = a @ a.T, b @ b.T
    return _hsic(k, m) / np.sqrt(_hsic(k, k) * _hsic(m, m))


@pytest.mark.parametrize("n, da, db", [(30, 5, 8), (10, 40, 25)])
def test_linear_cka_against_hsic(n, da, db):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(n, da))
    b = a[:, :3] @ rng.normal(size=(3, db)) + 0.5 * rng.normal(size=(n, db))
    value = linear_cka(a, b)
    assert value == pytest.approx(_cka_by_hsic(a, b), rel=1e-10)
    assert 0 < value < 1
    assert linear_cka(a, a) == pytest.approx(1.0, rel=1e-12)
    assert linear_cka(3.7 * a + 2.0, b) == pytest.approx(value, rel=1e-10)  # scale and shift
    q, _ = np.linalg.qr(rng.normal(size=(da, da)))
    assert linear_cka(a @ q, b) == pytest.approx(value, rel=1e-10)
    # Not invariant to anisotropic scaling: the reference can tell a wrong formula apart.
    assert linear_cka(a * np.arange(1, da + 1), b) != pytest.approx(value, rel=1e-3)
    assert linear_cka(a.astype(np.float32), b) == pytest.approx(value, rel=1e-5)
    assert np.isnan(linear_cka(np.ones((n, 3)), b))


def test_cka_table(tmp_path):
    rng = np.random.default_rng(3)
    base = rng.normal(size=(20, 6))
    mats = {
        "act": [base, base @ rng.normal(size=(6, 9)) + rng.normal(size=(20, 9)), rng.normal(size=(20, 4))],
        "grad": [rng.normal(size=(20, 5)), np.zeros((20, 5)), rng.normal(size=(20, 7))],
    }
    for signal, arrays in mats.items():
        for k, a in enumerate(arrays):
            save_array(feature_path(tmp_path, signal, k), a.astype(np.float32))
    _record_checksums(tmp_path, 20)
    names = ["b0", "b1", "b2"]
    write_table(
        tmp_path / "layers.parquet",
        pd.DataFrame(
            {
                "layer": names,
                "layer_index": np.arange(3, dtype=np.int64),
                "ordinal": np.arange(3, dtype=np.int64),
                "depth": [0.0, 0.5, 1.0],
                "dim": [6, 9, 4],
            }
        ),
    )
    table = cka_table(tmp_path, tmp_path / "layers.parquet", ["act", "grad"])
    assert list(table.columns) == ["signal", "layer_a", "layer_b", "cka"] and len(table) == 18
    for signal, arrays in mats.items():
        m = table[table["signal"] == signal].pivot(index="layer_a", columns="layer_b", values="cka").loc[names, names]
        m = m.to_numpy()
        np.testing.assert_array_equal(m, m.T)
        for i in range(3):
            for j in range(3):
                want = linear_cka(arrays[i].astype(np.float32), arrays[j].astype(np.float32))
                np.testing.assert_allclose(m[i, j], want, rtol=1e-12)
    act = table[table["signal"] == "act"]
    assert np.all(act.loc[act["layer_a"] == act["layer_b"], "cka"] == 1.0)
    # An all-zero gradient layer has no CKA, not even with itself (NaN, never a spurious 1).
    grad = table[table["signal"] == "grad"]
    zero = grad[(grad["layer_a"] == "b1") | (grad["layer_b"] == "b1")]
    assert zero["cka"].isna().all()
    assert np.all(grad.loc[(grad["layer_a"] == grad["layer_b"]) & (grad["layer_a"] != "b1"), "cka"] == 1.0)


# ---------------------------------------------------------------- 10: self-distillation, labelled losses


def _timm_embedding(ref, x):
    return ref.forward_head(ref.forward_features(x), pre_logits=True)


def _mobilenet_embedding(ref, x):
    """torchvision MobileNetV2's pre-logits written out: global average of its features."""
    return F.adaptive_avg_pool2d(ref.features(x), 1).flatten(1)


def _sd_reference(model, images, ids, names, params, embed=_timm_embedding, norm=None):
    """dL/d(output) one image at a time: teacher on its view without grad, loss written out here."""
    ref = copy.deepcopy(model)
    modules = dict(ref.named_modules())
    mean, std = norm or (ref.pretrained_cfg["mean"], ref.pretrained_cfg["std"])
    grads: dict[str, list] = {n: [] for n in names}
    for image, image_id in zip(images, ids):
        with torch.no_grad():
            view = teacher_view(image, image_id, mean, std, params)[None]
            teacher = embed(ref, view).double()
        store: dict[str, torch.Tensor] = {}
        handles = [
            modules[n].register_forward_hook(lambda m, i, o, n=n, store=store: store.__setitem__(n, o)) for n in names
        ]
        try:
            x = image[None].clone().requires_grad_(True)
            student = embed(ref, x).double()
            w = np.random.default_rng(params["seed"]).standard_normal((params["n_prototypes"], student.shape[1]))
            w = torch.from_numpy(w / np.linalg.norm(w, axis=1, keepdims=True))
            t = torch.softmax((teacher / teacher.norm()) @ w.T / 0.04, dim=1)
            s = torch.log_softmax((student / student.norm()) @ w.T / 0.1, dim=1)
            g = torch.autograd.grad(-(t * s).sum(), [store[n] for n in names])
        finally:
            for h in handles:
                h.remove()
        for n, gn in zip(names, g):
            grads[n].append(gn)
    return {n: torch.cat(v) for n, v in grads.items()}


IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.parametrize(
    "case, embed, norm",
    [
        ("cnn_case", _timm_embedding, None),
        ("vit_case", _timm_embedding, None),
        ("mobilenet_case", _mobilenet_embedding, IMAGENET_NORM),  # torchvision: the classifier's input
    ],
)
def test_self_distillation_matches_one_image_autograd(case, embed, norm, request):
    model, images, names, ctx, ref_out, _ = request.getfixturevalue(case)
    images, names = images[:6], names[::2]
    ids = [f"img{i:03d}" for i in range(6)]
    params = {"seed": 3, "n_prototypes": 512}
    spec = {"mode": "grid", "grid": 2}
    got = extract_features(model, images, names, spec, "self_distillation", 6, params, image_ids=ids)
    ref = _sd_reference(model, images, ids, names, params, embed, norm)
    for k, name in enumerate(names):
        # The teacher pass did not overwrite the recorded activations.
        _assert_close(got["act"][k], pool(ref_out[name][:6], spec, ctx).numpy())
        _assert_close(got["grad"][k], pool(ref[name], spec, ctx).numpy())
    assert np.abs(got["grad"][0]).max() > 0
    # Batch-size invariance, and the teacher view follows the image id, not the position.
    small = extract_features(model, images, names, spec, "self_distillation", 4, params, image_ids=ids)
    for a, b in zip(small["grad"], got["grad"]):
        _assert_close(a, b)
    other = extract_features(model, images, names, spec, "self_distillation", 6, params, image_ids=ids[::-1])
    assert not np.allclose(other["grad"][0], got["grad"][0])


def test_teacher_view_is_deterministic_per_id():
    image = _images(1, 48)[0]
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    a = teacher_view(image, "img007", mean, std)
    np.testing.assert_array_equal(a.numpy(), teacher_view(image.clone(), "img007", mean, std).numpy())
    assert a.shape == image.shape and not torch.allclose(a, image)
    assert not torch.allclose(a, teacher_view(image, "img008", mean, std))
    assert not torch.allclose(a, teacher_view(image, "img007", mean, std, {"seed": 1}))
    # No crop, flip or jitter: the identity (up to the pixel clamp to [0, 1]).
    plain = torch.rand(3, 16, 16)
    ident = teacher_view((plain - 0.5) / 0.25, "x", mean, std, {"crop_scale": (1.0, 1.0), "flip": 0, "jitter": 0})
    np.testing.assert_allclose(ident.numpy() * 0.25 + 0.5, plain.numpy(), atol=1e-5)
    # Crop boxes follow torchvision's RandomResizedCrop law: area fraction within the scale range.
    for i in range(50):
        top, left, h, w = _crop_box(np.random.default_rng(image_seed(f"id{i}")), 64, 64, (0.4, 1.0))
        assert 0.4 * 64 * 64 * 0.9 <= h * w <= 64 * 64 and top + h <= 64 and left + w <= 64


def test_prototypes_are_unit_norm_and_seeded():
    p = prototypes(8, 100, 0).numpy()
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, rtol=1e-12)
    assert p.shape == (100, 8) and not np.allclose(p, prototypes(8, 100, 1).numpy())


def test_self_distillation_default_is_not_degenerate():
    """With the default 4,096 prototypes the loss varies with the image (gradients differ by image)."""
    model = _model(VIT, size=32)
    got = extract_features(model, _images(3, 32), ["blocks.0"], {"mode": "mean"}, "self_distillation")
    g = got["grad"][0]
    assert np.isfinite(g).all() and np.abs(g).max() > 0 and not np.allclose(g[0], g[1])


def _ce_grads(model, images, names, labels):
    ref = copy.deepcopy(model)
    modules = dict(ref.named_modules())
    store: dict[str, torch.Tensor] = {}
    handles = [
        modules[n].register_forward_hook(lambda m, i, o, n=n, store=store: store.__setitem__(n, o)) for n in names
    ]
    try:
        x = images.clone().requires_grad_(True)
        loss = F.cross_entropy(ref(x), torch.as_tensor(labels), reduction="sum")
        return torch.autograd.grad(loss, [store[n] for n in names])
    finally:
        for h in handles:
            h.remove()


def test_cross_entropy_given_labels(cnn_case):
    model, images, names, ctx, *_ = cnn_case
    images, names = images[:6], names[-2:]
    labels = np.array([3, 7, 1, 999, 0, 42])
    spec = {"mode": "mean"}
    ids = [f"i{k}" for k in range(6)]
    by_array = extract_features(model, images, names, spec, "cross_entropy", 4, {"labels": labels})
    by_map = extract_features(
        model, images, names, spec, "cross_entropy", 4, {"labels": dict(zip(ids, labels.tolist()))}, image_ids=ids
    )
    ref = _ce_grads(model, images, names, labels)
    for k in range(2):
        _assert_close(by_array["grad"][k], pool(ref[k], spec, ctx).numpy())
        np.testing.assert_array_equal(by_map["grad"][k], by_array["grad"][k])
    own = extract_features(model, images, names, spec, "cross_entropy", 4)
    assert not np.allclose(own["grad"][1], by_array["grad"][1])
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        extract_features(model, images[:1], names, spec, "cross_entropy", 1, {"labels": [1000]})
    with pytest.raises(ValueError, match="i9"):
        extract_features(model, images[:1], names, spec, "cross_entropy", 1, {"labels": {"i0": 1}}, image_ids=["i9"])


def test_cross_entropy_shuffled_permutes_own_labels_batch_invariantly(vit_case):
    model, images, names, ctx, *_ = vit_case
    names = names[-2:]
    spec = {"mode": "cls_mean"}
    with torch.no_grad():
        top1 = model(images).argmax(dim=1).numpy()
    assert len(set(top1)) > 1  # a permutation can change something
    perm = np.random.default_rng(5).permutation(N_IMAGES)
    ref = _ce_grads(model, images, names, top1[perm])
    full = extract_features(model, images, names, spec, "cross_entropy_shuffled", N_IMAGES, {"seed": 5})
    small = extract_features(model, images, names, spec, "cross_entropy_shuffled", 3, {"seed": 5})
    for k in range(2):
        _assert_close(full["grad"][k], pool(ref[k], spec, ctx).numpy())
        _assert_close(small["grad"][k], full["grad"][k])
    own = extract_features(model, images, names, spec, "cross_entropy", N_IMAGES)
    assert not np.allclose(own["grad"][1], full["grad"][1], atol=1e-6)


def test_shuffled_labels_of_a_one_class_network_are_a_logged_no_op(caplog):
    # A random network often predicts one class for every image: permuting its labels changes nothing.
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    with torch.no_grad():
        head[1].weight.zero_()
        head[1].bias.copy_(torch.tensor([0.0, 5.0, 0.0, 0.0]))
    prepare = LOSS_PREPARERS["cross_entropy_shuffled"]
    with caplog.at_level("INFO", logger="brainprop.features.losses"):
        params = prepare(head, [_images(6, 8)], {"seed": 3})
    assert params["labels"].tolist() == [1] * 6
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "1 distinct top-1 classes over 6 images" in caplog.text and "label of 0 images" in caplog.text
    caplog.clear()
    with torch.no_grad():
        head[1].weight.normal_(generator=torch.Generator().manual_seed(0))
    with caplog.at_level("INFO", logger="brainprop.features.losses"):
        prepare(head, [_images(6, 8)], {"seed": 3})
    assert [r.levelname for r in caplog.records] == ["INFO"]


def test_shuffled_and_self_distillation_errors():
    headless = create_model("resnet18", "random", 0, 32, {"num_classes": 0})
    with pytest.raises(ValueError, match="classifier head"):
        extract_features(headless, _images(2, 32), ["layer4.1"], {"mode": "mean"}, "cross_entropy_shuffled")
    with pytest.raises(ValueError, match="one id per image"):
        extract_features(headless, _images(2, 32), ["layer4.1"], {"mode": "mean"}, "self_distillation", image_ids=["a"])


# ---------------------------------------------------------------- 11: sparse random projection


def test_projection_matrix_law_and_determinism():
    d, k = 2500, 300
    r = projection_matrix(d, k, 0, 3).to_dense().numpy()
    s = np.sqrt(d)
    values = np.unique(r)
    np.testing.assert_allclose(values, [-np.sqrt(s / k), 0.0, np.sqrt(s / k)])
    density = (r != 0).mean()
    assert abs(density - 1 / s) < 4 * np.sqrt(1 / s / (d * k))  # Binomial(d*k, 1/s), 4 sd
    assert abs((r > 0).mean() - (r < 0).mean()) < 4 * np.sqrt(1 / s / (d * k))
    projection_matrix.cache_clear()
    np.testing.assert_array_equal(projection_matrix(d, k, 0, 3).to_dense().numpy(), r)
    assert not np.array_equal(projection_matrix(d, k, 0, 4).to_dense().numpy(), r)
    assert not np.array_equal(projection_matrix(d, k, 1, 3).to_dense().numpy(), r)


def test_projection_preserves_distances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5000)) * rng.uniform(0.5, 2, size=5000)
    spec = {"projection": {"dim": 2000, "above": 100}}
    y = project(torch.from_numpy(x), spec, 0).numpy()
    assert y.shape == (40, 2000)
    from scipy.spatial.distance import pdist

    ratio = pdist(y) / pdist(x)
    assert abs(ratio.mean() - 1) < 0.02 and ratio.min() > 0.85 and ratio.max() < 1.15
    assert projected_dim(5000, spec) == 2000 and projected_dim(100, spec) == 100
    assert projected_dim(20000, {}) == 4096 and projected_dim(16384, {}) == 16384  # METHOD §2 default
    assert projected_dim(10**6, {"projection": {"dim": None}}) == 10**6


def test_projection_applies_one_matrix_to_act_and_grad(cnn_case):
    model, images, names, *_ = cnn_case
    images, names = images[:4], names[:3]
    plain = {"mode": "grid", "grid": 2, "projection": {"dim": None}}
    proj = {"mode": "grid", "grid": 2, "projection": {"dim": 50, "above": 0, "seed": 7}}
    a = extract_features(model, images, names, plain, "cross_entropy")
    b = extract_features(model, images, names, proj, "cross_entropy")
    for k in range(3):
        r = projection_matrix(a["act"][k].shape[1], 50, 7, k).to_dense().numpy()
        for signal in ("act", "grad"):
            assert b[signal][k].shape == (4, 50)
            _assert_close(b[signal][k], a[signal][k].astype(np.float64) @ r)
    table = resolve_layers(CNN[0], {"n": 3}, proj, SIZE, CNN[1])
    assert list(table["dim"]) == [50, 50, 50]


# ---------------------------------------------------------------- 11: the gradient's scale, nuisances, user losses


def _loss_reference(model, images, names, loss_of):
    """dL/d(block output), one image at a time, with the loss written out here: `loss_of(ref, x)` -> scalar."""
    ref = copy.deepcopy(model)
    modules = dict(ref.named_modules())
    grads: dict[str, list] = {n: [] for n in names}
    for image in images:
        store: dict[str, torch.Tensor] = {}
        handles = [
            modules[n].register_forward_hook(lambda m, i, o, n=n, store=store: store.__setitem__(n, o)) for n in names
        ]
        try:
            g = torch.autograd.grad(loss_of(ref, image[None].clone().requires_grad_(True)), [store[n] for n in names])
        finally:
            for h in handles:
                h.remove()
        for n, gn in zip(names, g):
            grads[n].append(gn)
    return {n: torch.cat(v) for n, v in grads.items()}


def test_l2_gradients_and_nuisances_match_one_image_autograd(cnn_case):
    """grad_normalize l2 = pool(g / ||g||) per image and layer; the nuisances are the logits' max softmax and
    entropy and the unpooled gradient's norm; the output matrix is the logits (independent recomputation)."""
    model, images, names, ctx, _, ref_grad = cnn_case
    images, names = images[:6], names[::3]
    spec = {"mode": "grid", "grid": 2}
    got = extract_features(model, images, names, spec, "cross_entropy", 4, grad_normalize="l2", extras=True)
    plain = extract_features(model, images, names, spec, "cross_entropy", 6, extras=True)
    with torch.no_grad():
        logits = copy.deepcopy(model)(images).double()
    p = torch.softmax(logits, dim=1)
    nuisance = got["nuisance"][0]
    np.testing.assert_allclose(nuisance[:, 0], p.max(dim=1).values.numpy(), rtol=1e-5)
    np.testing.assert_allclose(nuisance[:, 1], -(p * p.log()).sum(dim=1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(got["output"][0], logits.numpy(), rtol=1e-4, atol=1e-5)
    for k, name in enumerate(names):
        g = ref_grad[name][:6].double()
        norms = g.flatten(1).norm(dim=1)
        np.testing.assert_allclose(nuisance[:, 2 + k], norms.numpy(), rtol=1e-4)
        unit = g / norms[:, None, None, None]
        _assert_close(got["grad"][k], pool(unit, spec, ctx).numpy())
        np.testing.assert_array_equal(got["act"][k], plain["act"][k])  # activations are untouched
    # The norms, not the normalisation, are the nuisance: both extractions report the same ones.
    np.testing.assert_allclose(plain["nuisance"][0], nuisance, rtol=1e-5)
    assert set(extract_features(model, images[:2], names, spec, "cross_entropy")) == {"act", "grad"}
    with pytest.raises(ValueError, match="grad_normalize 'l1' unknown"):
        extract_features(model, images[:2], names, spec, "cross_entropy", grad_normalize="l1")


def _head_file(tmp_path, weight: torch.Tensor, bias: torch.Tensor, prefix: str = "") -> str:
    path = tmp_path / "head.pth"
    torch.save({f"{prefix}weight": weight, f"{prefix}bias": bias}, path)
    return str(path)


def test_head_loss_matches_one_image_autograd(cnn_case, tmp_path):
    """A user's linear head on the embedding (as DINOv3's ImageNet-1k head file: weight, bias)."""
    model, images, names, ctx, *_ = cnn_case
    images, names = images[:6], names[1::3]
    gen = torch.Generator().manual_seed(4)
    weight, bias = torch.randn(7, 512, generator=gen) * 0.1, torch.randn(7, generator=gen)
    params = {"head": _head_file(tmp_path, weight, bias, prefix="linear_head.")}
    spec = {"mode": "grid", "grid": 2}
    got = extract_features(model, images, names, spec, "head", 4, params, extras=True)

    def loss_of(ref, x):
        logits = F.linear(_timm_embedding(ref, x), weight, bias)
        return F.cross_entropy(logits, logits.argmax(dim=1))

    ref = _loss_reference(model, images, names, loss_of)
    for k, name in enumerate(names):
        _assert_close(got["grad"][k], pool(ref[name], spec, ctx).numpy())
    assert np.abs(got["grad"][0]).max() > 0
    with torch.no_grad():
        emb = _timm_embedding(copy.deepcopy(model), images)
    np.testing.assert_allclose(got["output"][0], emb.numpy(), rtol=1e-4, atol=1e-5)  # the head reads the embedding
    p = torch.softmax(F.linear(emb, weight, bias).double(), dim=1)
    np.testing.assert_allclose(got["nuisance"][0][:, 0], p.max(dim=1).values.numpy(), rtol=1e-4)


def test_own_classifier_as_a_head_gives_the_cross_entropy_gradients(mobilenet_case, tmp_path):
    """On the trained MobileNetV2, its own ImageNet classifier supplied as a head file reproduces cross_entropy."""
    model, images, names, ctx, *_ = mobilenet_case
    images, names = images[:6], names[::6]
    linear = model.classifier[1]
    params = {"head": _head_file(tmp_path, linear.weight.detach().clone(), linear.bias.detach().clone())}
    spec = {"mode": "grid", "grid": 2}
    head = extract_features(model, images, names, spec, "head", 6, params)
    own = extract_features(model, images, names, spec, "cross_entropy", 6)
    for a, b in zip(head["grad"], own["grad"]):
        _assert_close(a, b)
    assert np.abs(own["grad"][0]).max() > 0


def _text_file(tmp_path, table: np.ndarray, kind: str, **settings) -> str:
    if kind == "npy":
        path = tmp_path / "text.npy"
        np.save(path, table)
    else:
        path = tmp_path / "text.pt"
        torch.save({"embeddings": torch.from_numpy(table), **settings}, path)
    return str(path)


@pytest.mark.parametrize("form, kind", [("softmax", "npy"), ("sigmoid", "pt")])
def test_contrastive_loss_matches_one_image_autograd(cnn_case, tmp_path, form, kind):
    """Image-text loss against a user's text embeddings: CLIP's softmax, SigLIP's sigmoid (file's temperature, bias)."""
    model, images, names, ctx, *_ = cnn_case
    images, names = images[:6], names[::4]
    table = np.random.default_rng(2).standard_normal((9, 512))
    temperature, bias = 0.05, -2.0
    if kind == "npy":
        params = {"text_embeddings": _text_file(tmp_path, table, kind), "temperature": temperature, "form": form}
    else:
        path = _text_file(tmp_path, table, kind, temperature=temperature, bias=bias)
        params = {"text_embeddings": path, "form": form}
    spec = {"mode": "mean"}
    got = extract_features(model, images, names, spec, "contrastive", 4, params)
    text = torch.from_numpy(table).float()

    def loss_of(ref, x):
        emb = _timm_embedding(ref, x)
        sim = (emb / emb.norm(dim=1, keepdim=True)) @ (text / text.norm(dim=1, keepdim=True)).T / temperature
        if form == "softmax":
            return F.cross_entropy(sim, sim.argmax(dim=1))
        z = sim + bias
        labels = -torch.ones_like(z)
        labels[0, z.argmax()] = 1.0
        return -F.logsigmoid(labels * z).sum()

    ref = _loss_reference(model, images, names, loss_of)
    for k, name in enumerate(names):
        _assert_close(got["grad"][k], pool(ref[name], spec, ctx).numpy())
    assert np.abs(got["grad"][0]).max() > 0


def test_user_loss_files_are_loaded_safely_and_checked(cnn_case, tmp_path):
    """weights_only / allow_pickle=False loading and shape checks, each error naming the file."""
    from brainprop.features.losses import LossFileError

    model, images, names, *_ = cnn_case
    x, names, spec = images[:2], names[:1], {"mode": "mean"}

    def run(loss, params):
        return extract_features(model, x, names, spec, loss, 2, params)

    wrong = _head_file(tmp_path, torch.zeros(5, 100), torch.zeros(5))
    with pytest.raises(LossFileError, match=rf"{wrong} is a head for inputs of 100 dims.*'embedding' output has 512"):
        run("head", {"head": wrong})
    (tmp_path / "odd").mkdir()
    torch.save({"w": torch.zeros(5, 512), "b": torch.zeros(5), "c": torch.zeros(1)}, tmp_path / "odd" / "h.pth")
    with pytest.raises(LossFileError, match=r"odd/h.pth has keys \['b', 'c', 'w'\]"):
        run("head", {"head": str(tmp_path / "odd" / "h.pth")})
    pickled = tmp_path / "pickled.pth"
    torch.save({"weight": torch.zeros(5, 512), "bias": torch.zeros(5), "note": pd.Timestamp(0)}, pickled)
    with pytest.raises(LossFileError, match=rf"{pickled} cannot be read with torch.load\(weights_only=True\)"):
        run("head", {"head": str(pickled)})
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}, {"b": 2}], dtype=object), allow_pickle=True)
    with pytest.raises(LossFileError, match=rf"{objects} cannot be read with np.load\(allow_pickle=False\)"):
        run("contrastive", {"text_embeddings": str(objects), "temperature": 0.1})
    flat = _text_file(tmp_path, np.ones(512), "npy")
    with pytest.raises(LossFileError, match=rf"{flat} has shape \(512,\)"):
        run("contrastive", {"text_embeddings": flat, "temperature": 0.1})
    table = _text_file(tmp_path, np.random.default_rng(0).standard_normal((4, 512)), "npy")
    with pytest.raises(LossFileError, match=r"temperature: None; the file .*text.npy gives none"):
        run("contrastive", {"text_embeddings": table})
    with pytest.raises(LossFileError, match=r"checkpoint .*missing.pth does not exist"):
        run("head", {"head": str(tmp_path / "missing.pth")})
