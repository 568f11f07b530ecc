"""OWL-ViT through the `python` model source (`brainprop.features.example_factory.owlvit_image_encoder`).

Built from a small `transformers.OwlViTConfig` with random weights (nothing is downloaded): the
image embedding must equal Hugging Face's own `OwlViTModel` forward, the layers resolve on the
meta device for the full base-patch32 architecture, and a batched extraction of activations and
gradients equals one image at a time.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from brainprop.features.extract import extract_features
from brainprop.features.layers import resolve_layers
from brainprop.features.models import load_model, model_info

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAME = "brainprop.features.example_factory:owlvit_image_encoder"
TINY = {
    "vision_config": {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
        "image_size": 32, "patch_size": 8,
    },
    "text_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
    "projection_dim": 24,
}  # fmt: skip
SPEC = {"source": "python", "name": NAME, "kwargs": {"config": TINY}, "weights": "random"}


def test_owlvit_embedding_equals_hugging_face_forward():
    from transformers import OwlViTConfig, OwlViTModel

    model = load_model(SPEC, 0)
    reference = OwlViTModel(OwlViTConfig(**TINY)).eval()
    reference.vision_model.load_state_dict(model.vision_model.state_dict())
    reference.visual_projection.load_state_dict(model.visual_projection.state_dict())
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x)
        theirs = reference(input_ids=torch.ones(3, 4, dtype=torch.long), pixel_values=x).image_embeds
    np.testing.assert_allclose((ours / ours.norm(dim=-1, keepdim=True)).numpy(), theirs.numpy(), atol=1e-5)
    info = model_info(model)
    assert info.preprocessing["input_size"] == [3, 32, 32] and info.output == "embedding"


def test_owlvit_base_layers_resolve_on_the_meta_device():
    table = resolve_layers({"source": "python", "name": NAME}, {"n": 22}, {"mode": "grid", "grid": 2})
    assert table["layer"].tolist() == [f"vision_model.encoder.layers.{i}" for i in range(12)]  # base-patch32
    assert table["dim"].tolist() == [5 * 768] * 12  # grid 2x2 of the patch tokens plus the class token


def test_owlvit_batched_gradients_equal_one_image_at_a_time():
    model = load_model(SPEC, 0)
    names = model_info(model).blocks()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ids = ["a", "b", "c", "d"]
    pooling = {"mode": "cls"}
    batched = extract_features(model, x, names, pooling, "self_distillation", batch_size=4, image_ids=ids)
    single = extract_features(model, x, names, pooling, "self_distillation", batch_size=1, image_ids=ids)
    for signal in ("act", "grad"):
        for a, b in zip(batched[signal], single[signal]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert all(np.abs(g).max() > 0 for g in batched["grad"][:-1])
    with torch.no_grad():
        hidden = model.vision_model(pixel_values=x, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(batched["act"][0], hidden[1][:, 0].numpy(), rtol=1e-5, atol=1e-6)
