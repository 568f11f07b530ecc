"""Building models of every source (`sources`) with random, pretrained or checkpoint weights; outputs; device.

`load_model(spec, seed)` gives a frozen eval-mode module whatever its source, with a
`ModelInfo` attached (`model_info`) that says how to preprocess its images, how to read its
token layout and which output its losses read; the rest of the features stage reads only that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .keymaps import apply_key_map
from .pooling import TokenContext, token_context
from .sources import SOURCES, Built, canonical_model, source_of
from .weights import WeightFileError, resolve_checkpoint, verify_checkpoint

__all__ = [
    "OUTPUT_KINDS",
    "CheckpointError",
    "ModelInfo",
    "Outputs",
    "build",
    "create_model",
    "forward_outputs",
    "image_transform",
    "input_shape",
    "load_model",
    "model_info",
    "preprocessing_config",
    "resolve_device",
]


@dataclass
class ModelInfo:
    """What brainprop knows about a built module: its source, preprocessing, outputs and blocks."""

    source: str
    name: str
    preprocessing: dict  # JSON-ready (the feature cache key holds it)
    output: str  # "timm" | "logits" | "embedding": what the losses read (see forward_outputs)
    classifier: str | None = None  # output "logits": module whose input is the embedding
    tokens: TokenContext = field(default_factory=TokenContext)
    built: Built | None = None  # the source's view, for its block list

    def blocks(self) -> list[str]:
        """The model's blocks in forward order, as its source defines them."""
        return SOURCES[self.source].blocks(self.built)


def _info(source: str, name: str, built: Built) -> ModelInfo:
    return ModelInfo(
        source, name, built.preprocessing, built.output, built.classifier, TokenContext(**built.tokens), built
    )


def build(spec: dict, device: str | torch.device = "cpu", pretrained: bool = False) -> torch.nn.Module:
    """Build a model entry's module (meta device: shapes only) with its ModelInfo attached, weights untouched."""
    spec = canonical_model(spec)
    built = source_of(spec).build(spec["name"], spec.get("kwargs"), device, spec.get("input_size"), pretrained)
    built.module.brainprop_info = _info(spec["source"], spec["name"], built)
    return built.module


def model_info(model: torch.nn.Module, input_size: int | None = None) -> ModelInfo:
    """The attached ModelInfo, or one read from a bare timm-like module (timm's conventions)."""
    info = getattr(model, "brainprop_info", None)
    if info is not None:
        return info
    source = SOURCES["timm"]
    output = "timm" if hasattr(model, "forward_head") else "logits"
    built = Built(model, source.preprocessing(model, input_size), output)
    return ModelInfo("timm", type(model).__name__, built.preprocessing, output, None, token_context(model), built)


class CheckpointError(ValueError, RuntimeError):
    """A checkpoint file cannot be read or does not fit its model; the message names the key, file and fix."""


def _read_checkpoint(path, key: str) -> dict:
    """The state dict in a checkpoint file (`weights_only`; a `{"state_dict": ...}` wrapper unwrapped)."""
    fix = (
        f"point {key} at a state dict saved with torch.save(model.state_dict(), path), or put the right file at "
        f"{path}, then run snakemake again (the file is an input of the extract rule: replacing it reruns "
        "the extraction)"
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling and zip errors come in many types
        with open(path, "rb") as fh:
            head = fh.read(4)
        if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
            why = f"its first bytes {head!r} are neither a zip archive (torch.save's format) nor a pickle"
        else:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            why = f"{type(err).__name__}: {lines[-1][:300] if lines else ''}"
        raise CheckpointError(
            f"{key}: {path} is not a checkpoint torch.load(weights_only=True) can read ({why}); expected a "
            f"PyTorch state dict file; {fix}"
        ) from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{key}: {path} holds a {type(state).__name__}, not a state dict (a mapping of names to tensors); {fix}"
        )
    return state


def _fit_problems(state: dict, expected: dict) -> list[str]:
    """How a state dict differs from a model's: missing, unexpected and mis-shaped tensors (a few named each)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in the model"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for what, items in (
        (f"of the model's {len(expected)} tensors missing from the file", missing),
        (f"of the file's {len(state)} tensors unknown to the model", unexpected),
        ("tensors of another shape", shapes),
    ):
        if items:
            problems.append(f"{len(items)} {what} (e.g. {', '.join(items[:3])})")
    return problems


def _load_state(model: torch.nn.Module, spec: dict, key: str) -> None:
    """Load a checkpoint file (weights_only) into `model`, through the entry's key map if it has one."""
    path = verify_checkpoint(resolve_checkpoint(spec["weights"], key), key)
    state = _read_checkpoint(path, key)
    if spec.get("key_map"):
        state = apply_key_map(spec["key_map"], state, model.state_dict(), str(path))
    problems = _fit_problems(state, model.state_dict())
    if problems:
        hint = "" if spec.get("key_map") else "; a checkpoint saved by another library needs models.<alias>.key_map"
        raise CheckpointError(
            f"{key}: checkpoint {path} does not fit {spec['source']} model {spec['name']!r}: {'; '.join(problems)}. "
            f"Expected a state dict of that architecture (the names and shapes of its state_dict()){hint}; point "
            f"{key} at a checkpoint of {spec['name']!r}, or set the model's name to the checkpoint's architecture, "
            "then run snakemake again"
        )
    model.load_state_dict(state)


def load_model(spec: dict, seed: int, key: str = "models.<alias>.weights") -> torch.nn.Module:
    """A frozen eval-mode model of any source with `random` (seeded), `pretrained` or checkpoint weights.

    `spec` is a model entry: source, name, kwargs (or timm_name, timm_kwargs), weights, key_map,
    input_size. A checkpoint is a path or a bare file name in the weights folder (`weights`);
    its `key_map` renames keys saved under another library's names (`keymaps`).
    """
    spec = canonical_model(spec)
    weights = spec.get("weights", "random")
    if weights == "random":
        torch.manual_seed(seed)
        model = build(spec, "cpu")
    elif weights == "pretrained":
        try:
            model = build(spec, "cpu", pretrained=True)
        except (WeightFileError, ValueError):
            raise
        except Exception as err:  # hub errors come in many types
            raise RuntimeError(
                f"could not load pretrained weights for {spec['name']!r} ({type(err).__name__}: {err}). "
                "Without network, run the prefetch rule on a node with internet, or give a local "
                "checkpoint path as models.<alias>.weights."
            ) from err
    else:
        resolve_checkpoint(weights, key)  # a missing file fails before the model is built
        model = build(spec, "cpu")
        _load_state(model, spec, key)
    model.eval()
    model.requires_grad_(False)
    return model


def create_model(
    timm_name: str, weights: str, seed: int, input_size: int | None = None, timm_kwargs: dict | None = None
) -> torch.nn.Module:
    """`load_model` of a timm model (the shorthand of source timm)."""
    spec = {"source": "timm", "name": timm_name, "kwargs": timm_kwargs or {}, "weights": weights}
    return load_model(spec | {"input_size": input_size}, seed)


def input_shape(model: torch.nn.Module, input_size: int | None = None) -> tuple[int, int, int]:
    """(channels, height, width) of the model's input."""
    return (3, input_size, input_size) if input_size else tuple(model_info(model).preprocessing["input_size"])


def image_transform(model: torch.nn.Module, input_size: int | None = None) -> Callable:
    """The eval transform (PIL image -> normalised tensor) of the model's preprocessing."""
    info = model_info(model, input_size)
    return SOURCES[info.source].transform(info.preprocessing)


def preprocessing_config(model_spec: dict) -> dict:
    """The model's preprocessing (from a weightless copy on the meta device), as JSON-ready values."""
    return model_info(build(model_spec, "meta")).preprocessing


def resolve_device(device: str) -> torch.device:
    """Map the config's device (auto|cpu|cuda) to a torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device(device)


# ---------------------------------------------------------------- outputs the losses read


class Outputs:
    """The outputs a loss may read from one forward pass, computed on demand (`OUTPUT_KINDS` by name)."""

    def __init__(
        self,
        logits: Callable[[], torch.Tensor],
        embedding: Callable[[], torch.Tensor],
        cls_mean: Callable[[], torch.Tensor] | None = None,
    ):
        self._logits, self._embedding, self._cls_mean = logits, embedding, cls_mean

    def logits(self) -> torch.Tensor:
        """Classifier output (B, classes)."""
        return self._logits()

    def embedding(self) -> torch.Tensor:
        """Pooled pre-logits (B, dim): the classifier's input, or the output of an embedding model."""
        return self._embedding()

    def cls_mean(self) -> torch.Tensor:
        """[class token, mean of the patch tokens] of the final (normed) tokens (B, 2 dim): DINOv3's head input."""
        if self._cls_mean is None:
            raise ValueError(
                "output 'cls_mean' (class token and mean patch token of the final tokens, the input of DINOv3's "
                "linear head) needs a timm transformer with a class token; this model has none: read 'embedding'"
            )
        return self._cls_mean()

    def named(self, kind: str) -> torch.Tensor:
        """The output named `kind` (one of `OUTPUT_KINDS`)."""
        if kind not in OUTPUT_KINDS:
            raise ValueError(f"model output {kind!r} unknown; valid outputs: {list(OUTPUT_KINDS)}")
        return getattr(self, kind)()


# What a loss can read from a forward pass (`Outputs.named`).
OUTPUT_KINDS = ("logits", "embedding", "cls_mean")


def _timm_outputs(model: torch.nn.Module, info: ModelInfo, images: torch.Tensor) -> Outputs:
    features = model.forward_features(images)
    cls_mean = None
    if features.ndim == 3 and info.tokens.has_class_token:
        start = info.tokens.num_prefix_tokens

        def cls_mean() -> torch.Tensor:
            return torch.cat([features[:, 0], features[:, start:].mean(dim=1)], dim=1)

    return Outputs(
        lambda: model.forward_head(features), lambda: model.forward_head(features, pre_logits=True), cls_mean
    )


def _classifier_outputs(model: torch.nn.Module, info: ModelInfo, images: torch.Tensor) -> Outputs:
    seen: dict[str, torch.Tensor] = {}
    handle = None
    if info.classifier is not None:
        head = dict(model.named_modules())[info.classifier]
        handle = head.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0].flatten(1)))
    try:
        logits = model(images)
    finally:
        if handle is not None:
            handle.remove()

    def embedding() -> torch.Tensor:
        if "x" not in seen:
            raise ValueError(
                f"{info.name}: no classifier module whose input is the embedding (classifier {info.classifier!r})"
            )
        return seen["x"]

    return Outputs(lambda: logits, embedding)


def _embedding_outputs(model: torch.nn.Module, info: ModelInfo, images: torch.Tensor) -> Outputs:
    out = model(images)

    def no_logits() -> torch.Tensor:
        raise ValueError(
            f"{info.name}: the model outputs an embedding of shape {tuple(out.shape)}, not logits; "
            "losses that need a classifier head (cross_entropy, cross_entropy_shuffled) do not apply: "
            "use loss 'self_distillation'"
        )

    return Outputs(no_logits, lambda: out)


# ModelInfo.output -> how one forward pass gives the losses their logits and embedding.
OUTPUT_STYLES: dict[str, Callable[[torch.nn.Module, ModelInfo, torch.Tensor], Outputs]] = {
    "timm": _timm_outputs,
    "logits": _classifier_outputs,
    "embedding": _embedding_outputs,
}


def forward_outputs(model: torch.nn.Module, images: torch.Tensor) -> Outputs:
    """Run the model on a batch (block hooks fire) and return what its losses read."""
    info = model_info(model)
    return OUTPUT_STYLES[info.output](model, info, images)
