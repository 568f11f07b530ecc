"""Example factories for `source: python` (copy one to start your own; docs/features.md, "Model sources").

A factory is a function `f(*, pretrained: bool, **kwargs) -> dict`; `kwargs` come from the
config's `models.<alias>.kwargs`. brainprop calls it inside `with torch.device(...)`: on the
`meta` device (no memory, no weights: `pretrained=False`) to resolve block shapes, on the CPU to
run. With `weights: random` brainprop seeds torch first and asks for `pretrained=False`; with a
checkpoint file it asks for `pretrained=False` and loads the file itself (with `key_map` if
given); with `weights: pretrained` the factory loads its own weights. The dict:

- `module` (required): the `torch.nn.Module`;
- `blocks` (required): module names of its blocks in forward order (`layers.n` picks among
  them; depth = ordinal / (number of blocks - 1));
- `preprocessing` (required): `input_size` (int or [3, H, W]), `mean`, `std`, and optionally
  `resize_size` (shorter side before the centre crop; default: the input size) and
  `interpolation` (default bilinear);
- `output` (default `logits`): what `module(x)` returns, `logits` (B, classes) or `embedding` (B, dim);
- `classifier` (default: the last `nn.Linear` when the output is logits): the module whose
  input is the embedding (read by `self_distillation`);
- `tokens` (default none): for blocks that output (B, N, C) tokens or channels-last maps,
  `num_prefix_tokens`, `num_reg_tokens`, `has_class_token`, `channels_last`.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class TinyCNN(nn.Module):
    """Four conv blocks, global pooling and a linear classifier."""

    def __init__(self, width: int = 8, n_classes: int = 10):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        self.blocks = nn.Sequential(
            *[
                nn.Sequential(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2 if i else 1, padding=1), nn.ReLU())
                for i in range(4)
            ]
        )
        self.fc = nn.Linear(chans[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_classes)."""
        return self.fc(self.blocks(x).mean(dim=(2, 3)))


def tiny_cnn(*, pretrained: bool = False, width: int = 8, n_classes: int = 10, input_size: int = 32) -> dict:
    """A self-contained 4-block CNN with random weights: the contract in its smallest form."""
    if pretrained:
        raise ValueError("tiny_cnn has no pretrained weights; use weights: random or a checkpoint file")
    return {
        "module": TinyCNN(width, n_classes),
        "blocks": [f"blocks.{i}" for i in range(4)],
        "preprocessing": {"input_size": input_size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    }


def mobilenet_v2_imagenet(*, pretrained: bool = False) -> dict:
    """torchvision's MobileNetV2 with the ImageNet weights `make install` put in the weights folder.

    The pattern for any PyTorch network with a weight file of its own: build the module, load
    the file with `torch.load(weights_only=True)` when asked for pretrained weights, name the blocks.
    """
    import torchvision

    from .weights import resolve_checkpoint, verify_checkpoint

    module = torchvision.models.mobilenet_v2()
    if pretrained:
        path = verify_checkpoint(resolve_checkpoint("mobilenet_v2-b0353104.pth"))
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return {
        "module": module,
        "blocks": [f"features.{i}" for i in range(len(module.features))],
        "preprocessing": {
            "input_size": 224,
            "resize_size": 256,
            "interpolation": "bilinear",
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
        },
        "output": "logits",
        "classifier": "classifier.1",
    }


# OWL-ViT's image preprocessing (OwlViTImageProcessor: CLIP's mean and std, square resize).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


class OwlViTImageEncoder(nn.Module):
    """OWL-ViT's image tower: the ViT (`vision_model`) and the projection into the image–text space."""

    def __init__(self, vision_model: nn.Module, visual_projection: nn.Module):
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = visual_projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image embeddings (B, projection_dim): the projected, layer-normed class token."""
        return self.visual_projection(self.vision_model(pixel_values=x).pooler_output)


def owlvit_image_encoder(
    *,
    pretrained: bool = False,
    checkpoint: str = "google/owlvit-base-patch32",
    config: dict | None = None,
    input_size: int | None = None,
) -> dict:
    """OWL-ViT (Minderer et al. 2022; Hugging Face `transformers`) as an image encoder: the reference study's
    detection-trained model, whose image tower is a CLIP-style ViT.

    `weights: pretrained` loads `checkpoint` with `OwlViTModel.from_pretrained` from the Hugging
    Face cache (fetch it on a node with network first, e.g. `huggingface-cli download
    google/owlvit-base-patch32`; brainprop's `prefetch` rule skips python sources); otherwise the
    architecture of `config` (keyword arguments of `transformers.OwlViTConfig`; None: the
    base-patch32 defaults) is built with random weights, which is what the tests and the `meta`
    device (layer resolution) use. Blocks are the ViT's encoder layers, each (B, 1 + patches, C)
    with a class token; the output is the image embedding (losses: `self_distillation`). The
    input size is the config's `image_size` (768 for base-patch32) unless `input_size` is given.
    """
    from transformers import OwlViTConfig, OwlViTModel

    full = OwlViTModel.from_pretrained(checkpoint) if pretrained else OwlViTModel(OwlViTConfig(**(config or {})))
    vision_config = full.config.vision_config
    module = OwlViTImageEncoder(full.vision_model, full.visual_projection)
    del full  # the text tower is not needed
    return {
        "module": module,
        "blocks": [f"vision_model.encoder.layers.{i}" for i in range(vision_config.num_hidden_layers)],
        "preprocessing": {
            "input_size": int(input_size or vision_config.image_size),
            "interpolation": "bicubic",
            "mean": CLIP_MEAN,
            "std": CLIP_STD,
        },
        "output": "embedding",
        "tokens": {"num_prefix_tokens": 1, "has_class_token": True},
    }
