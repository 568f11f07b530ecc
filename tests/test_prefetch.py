"""Prefetching pretrained weights: a hand-made Hugging Face cache read offline by timm and by check_offline."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from brainprop.features.prefetch import PREFETCH_COLUMNS, _candidates, check_offline, prefetch_models, weight_source

NAME = "resnet18.a1_in1k"  # small model whose default tag lives on the hub as timm/resnet18.a1_in1k
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty hub cache, HF_HUB_OFFLINE=1 (huggingface_hub reads both at import, so patch its constants)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _fill_cache(cache, repo_id: str, filename: str, payload: bytes) -> None:
    """Write one file in huggingface_hub's cache layout: blobs/<sha256>, snapshots/<rev>/<file> -> blob, refs/main."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    digest = hashlib.sha256(payload).hexdigest()
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / digest).write_bytes(payload)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(REVISION)
    snap = root / "snapshots" / REVISION
    snap.mkdir(parents=True)
    os.symlink(os.path.join("..", "..", "blobs", digest), snap / filename)


@pytest.fixture
def cached_random_resnet(offline_cache, tmp_path):
    """A random resnet18 saved into the fake cache as the weights of resnet18.a1_in1k."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    model = timm.create_model("resnet18", pretrained=False, zero_init_last=False).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "weights.safetensors"
    save_file(state, str(path))
    _fill_cache(offline_cache, "timm/resnet18.a1_in1k", "model.safetensors", path.read_bytes())
    return model


def test_weight_source_follows_timm_file_order():
    src = weight_source(NAME)
    assert (src.kind, src.location, src.filenames) == (
        "hf-hub",
        "timm/resnet18.a1_in1k",
        ("model.safetensors", "pytorch_model.bin"),
    )
    assert _candidates("open_clip_pytorch_model.bin") == ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    with pytest.raises(ValueError, match="no_such_model"):
        weight_source("no_such_model")


def test_timm_loads_the_cached_weights_offline(cached_random_resnet):
    import timm

    torch.set_num_threads(1)
    models = {"r18": {"timm_name": NAME, "weights": "pretrained"}}
    assert check_offline(models) == []
    loaded = timm.create_model(NAME, pretrained=True, zero_init_last=False).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = cached_random_resnet(x), loaded(x)
    assert torch.equal(got, expected)
    # A model built with other random weights differs: the comparison can fail.
    torch.manual_seed(4)
    other = timm.create_model("resnet18", pretrained=False, zero_init_last=False).eval()
    with torch.no_grad():
        assert not torch.allclose(other(x), expected)


def test_check_offline_names_missing_models(cached_random_resnet):
    models = {
        "r18": {"timm_name": NAME, "weights": "pretrained"},
        "r34_missing": {"timm_name": "resnet34.a1_in1k", "weights": "pretrained"},
        "rand": {"timm_name": "resnet50", "weights": "random"},
        "ckpt": {"timm_name": "resnet50", "weights": "/nowhere/model.pth"},
    }
    problems = check_offline(models)
    assert len(problems) == 1
    assert "models.r34_missing" in problems[0] and "snakemake prefetch" in problems[0]
    assert "timm/resnet34.a1_in1k" in problems[0]


def test_prefetch_table_and_offline_failure(cached_random_resnet):
    models = {
        "r18": {"timm_name": NAME, "weights": "pretrained"},
        "rand": {"timm_name": "resnet50", "weights": "random"},
        "ckpt": {"timm_name": "resnet50", "weights": "/nowhere/model.pth"},
    }
    table = prefetch_models(models)
    assert list(table.columns) == PREFETCH_COLUMNS
    assert list(table["status"]) == ["cached", "skipped_random", "skipped_checkpoint"]
    assert table.loc[0, "filename"] == "model.safetensors" and os.path.isfile(table.loc[0, "path"])
    # Offline, a model missing from the cache fails fast with its alias in the message.
    with pytest.raises(RuntimeError, match=r"models\.r34 "):
        prefetch_models({"r34": {"timm_name": "resnet34.a1_in1k", "weights": "pretrained"}})
