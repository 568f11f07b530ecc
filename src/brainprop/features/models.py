"""Building models: timm architectures with random, pretrained or checkpoint weights; preprocessing; device."""

from __future__ import annotations

import re
from pathlib import Path

import torch

__all__ = ["build_model", "create_model", "image_transform", "input_shape", "preprocessing_config", "resolve_device"]


def input_shape(model: torch.nn.Module, input_size: int | None) -> tuple[int, int, int]:
    from timm.data import resolve_data_config

    size = resolve_data_config({}, model=model)["input_size"]
    return (3, input_size, input_size) if input_size else tuple(size)


def build_model(
    timm_name: str,
    device: str | torch.device,
    input_size: int | None = None,
    kwargs: dict | None = None,
    pretrained: bool = False,
) -> torch.nn.Module:
    import timm

    kwargs = dict(kwargs or {})
    if input_size and _accepts_img_size(timm_name):
        kwargs["img_size"] = input_size
    with torch.device(device):
        return timm.create_model(timm_name, pretrained=pretrained, **kwargs)


def _accepts_img_size(timm_name: str) -> bool:
    return bool(re.match(r"(vit|deit|eva|beit|dinov|swin|vit_)", timm_name))


def resolve_device(device: str) -> torch.device:
    """Map the config's device (auto|cpu|cuda) to a torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device(device)


def create_model(
    timm_name: str, weights: str, seed: int, input_size: int | None = None, timm_kwargs: dict | None = None
) -> torch.nn.Module:
    """Create a frozen eval-mode timm model with `random` (seeded), `pretrained` or checkpoint weights."""
    if weights == "random":
        torch.manual_seed(seed)
        model = build_model(timm_name, "cpu", input_size, timm_kwargs)
    elif weights == "pretrained":
        try:
            model = build_model(timm_name, "cpu", input_size, timm_kwargs, pretrained=True)
        except Exception as err:  # hub errors come in many types
            raise RuntimeError(
                f"could not load pretrained weights for {timm_name!r} ({type(err).__name__}: {err}). "
                "Without network, run the prefetch rule on a node with internet, or give a local "
                "checkpoint path as models.<alias>.weights."
            ) from err
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} (models.<alias>.weights) does not exist")
        model = build_model(timm_name, "cpu", input_size, timm_kwargs)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model.load_state_dict(state)
    model.eval()
    model.requires_grad_(False)
    return model


def image_transform(model: torch.nn.Module, input_size: int | None):
    from timm.data import create_transform, resolve_data_config

    overrides = {"input_size": (3, input_size, input_size), "crop_pct": 1.0} if input_size else {}
    return create_transform(**resolve_data_config(overrides, model=model))


def preprocessing_config(model_spec: dict) -> dict:
    """timm's preprocessing for the model (from a weightless copy), as JSON-ready values."""
    model = build_model(model_spec["timm_name"], "meta", model_spec.get("input_size"), model_spec.get("timm_kwargs"))
    return _preprocessing(model, model_spec.get("input_size"))


def _preprocessing(model: torch.nn.Module, input_size: int | None) -> dict:
    from timm.data import resolve_data_config

    overrides = {"input_size": (3, input_size, input_size), "crop_pct": 1.0} if input_size else {}
    cfg = resolve_data_config(overrides, model=model)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(cfg.items())}
