"""The model zoo (config/models.yaml): every timm name and pretrained tag exists offline, every
model builds without weights on the meta device with a block list, and each loss default follows
METHOD.md §2 (cross_entropy exactly when the built model has a classifier head)."""

from __future__ import annotations

import copy
import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ZOO = yaml.safe_load((ROOT / "config" / "models.yaml").read_text())["models"]
COMPARISON = {"resnet", "convnext", "vit_mae", "vit", "clip", "siglip2", "sam"}
FURTHER = {"dinov2", "eva02", "swin", "efficientnet", "deit3", "beit", "convnext_v2"}


def test_zoo_composition():
    families = [m["family"] for m in ZOO.values()]
    assert len(ZOO) == 18
    assert families.count("dinov3") >= 3
    assert set(families) >= COMPARISON and set(families) >= FURTHER
    assert all(m["weights"] == "pretrained" and "." in m["timm_name"] for m in ZOO.values())


def test_zoo_is_a_valid_models_block():
    from brainprop.config import load_config, validate_config

    config = copy.deepcopy(load_config(ROOT / "tests" / "configs" / "tiny.yaml"))
    config["models"].update(copy.deepcopy(ZOO))
    validate_config(config)


@pytest.mark.parametrize("alias", sorted(ZOO))
def test_zoo_name_and_tag_are_in_timm_registry(alias):
    import timm

    name = ZOO[alias]["timm_name"]
    assert name in timm.list_pretrained(name.split(".")[0] + "*"), f"{alias}: {name} is not a pretrained tag"
    cfg = timm.models.get_pretrained_cfg(name)
    assert cfg is not None and cfg.tag == name.split(".", 1)[1]


@pytest.mark.parametrize("alias", sorted(ZOO))
def test_zoo_builds_on_meta_with_blocks_and_matching_loss(alias):
    import timm
    import torch

    from brainprop.features.layers import find_blocks

    entry = ZOO[alias]
    with torch.device("meta"):
        model = timm.create_model(entry["timm_name"], pretrained=False, **entry.get("timm_kwargs", {}))
    assert next(model.parameters()).device.type == "meta"
    assert len(find_blocks(model)) >= 8
    has_head = model.num_classes > 0
    assert entry["loss"] == ("cross_entropy" if has_head else "self_distillation"), (alias, model.num_classes)
    assert not has_head or model.num_classes == 1000  # a head here is an ImageNet-1k classifier


@pytest.mark.parametrize("alias", sorted(ZOO))
def test_zoo_last_layer_pools_to_its_channels(alias):
    """Mean pooling of the last block gives the model's final feature channels (layouts read right)."""
    import timm
    import torch

    from brainprop.features.layers import resolve_layers

    entry = ZOO[alias]
    kwargs = entry.get("timm_kwargs", {})
    with torch.device("meta"):
        model = timm.create_model(entry["timm_name"], pretrained=False, **kwargs)
    table = resolve_layers(entry["timm_name"], {"n": 22}, {"mode": "mean"}, None, kwargs)
    assert table["depth"].iloc[0] == 0.0 and table["depth"].iloc[-1] == 1.0
    assert table["dim"].iloc[-1] == model.feature_info[-1]["num_chs"]
