"""Model sources (METHOD.md §1): where a model comes from, as a registry looked up by `models.<alias>.source`.

- `timm`: any timm name (`name.tag` picks a pretrained tag), built with `timm.create_model`.
- `torchvision`: any `torchvision.models` classification builder; `name.TAG` picks a member of
  the builder's weights enum for `weights: pretrained` (`mobilenet_v2.IMAGENET1K_V1`), no tag
  means the enum's `DEFAULT`.
- `python`: a user's `package.module:function` that returns the module, its preprocessing and
  its block names (the contract is in docs/features.md, "Model sources"; a copyable example is
  `brainprop.features.example_factory`).

Each source resolves the same four things, so layers, pooling, losses, learning-rule signals,
caching, prefetch and `brainprop plan` treat every model alike: the module (on the `meta`
device when only shapes are needed), its block list, its preprocessing (JSON-ready values that
enter the feature cache key) and the output the losses read (logits, or an embedding).

The config's canonical keys are `source`, `name` and `kwargs`; `timm_name` and `timm_kwargs`
are accepted for source `timm` and rewritten to `name` and `kwargs` by `canonical_model`.
Light to import: name checks read a per-version cache of each library's names, and the build
functions import torch and the library only when called.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

__all__ = [
    "LEGACY_KEYS",
    "SOURCES",
    "Built",
    "canonical_model",
    "model_files",
    "model_label",
    "source_of",
    "timm_model_names",
    "torchvision_model_tags",
]

# legacy key -> canonical key (source timm only)
LEGACY_KEYS: dict[str, str] = {"timm_name": "name", "timm_kwargs": "kwargs"}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def canonical_model(entry: dict, key: str = "models.<alias>") -> dict:
    """A model entry with the canonical keys `source`, `name`, `kwargs` (legacy timm keys renamed)."""
    out = dict(entry)
    source = out.get("source", "timm")
    for old, new in LEGACY_KEYS.items():
        if old not in out:
            continue
        if new in out:
            raise ValueError(f"config key {key}: give {new!r} or its older spelling {old!r}, not both")
        if source != "timm":
            raise ValueError(f"config key {key}.{old}: applies to source 'timm' only; source {source!r} takes {new!r}")
        out[new] = out.pop(old)
    out.setdefault("source", "timm")
    out.setdefault("kwargs", {})
    return out


def model_label(entry: dict) -> str:
    """The model's name as tables show it: the timm name, else `source:name`."""
    entry = canonical_model(entry)
    return entry["name"] if entry["source"] == "timm" else f"{entry['source']}:{entry['name']}"


# ---------------------------------------------------------------- per-version name caches


def _cache_path(library: str, lib_version: str, suffix: str) -> Path:
    """Where one library version's names are cached (XDG cache directory)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "brainprop" / f"{library}-{lib_version}-models.{suffix}"


def _write_cache(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:  # a read-only home: check without the cache
        pass


def timm_model_names() -> set[str]:
    """timm's registered model names, cached per timm version.

    Importing timm costs seconds, and Snakemake parses the config at every start (and in every
    cluster job); the names only change with the timm version.
    """
    path = _cache_path("timm", version("timm"), "txt")
    try:
        return set(path.read_text().split())
    except OSError:
        pass
    import timm

    names = sorted(timm.list_models())
    _write_cache(path, "\n".join(names) + "\n")
    return set(names)


def torchvision_model_tags() -> dict[str, list[str]]:
    """torchvision's classification builders and the members of each one's weights enum, cached per version."""
    path = _cache_path("torchvision", version("torchvision"), "json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    import torchvision.models as tvm

    tags = {}
    for name in tvm.list_models(module=tvm):
        try:
            tags[name] = [w.name for w in tvm.get_model_weights(name)]
        except (ValueError, KeyError):
            tags[name] = []
    _write_cache(path, json.dumps(tags, sort_keys=True))
    return tags


# ---------------------------------------------------------------- what a built model is


@dataclass
class Built:
    """A module from a source and what brainprop needs to know about it."""

    module: Any  # torch.nn.Module
    preprocessing: dict  # JSON-ready values (they enter the feature cache key)
    output: str  # what the losses read: "timm" (forward_features/forward_head), "logits" or "embedding"
    classifier: str | None = None  # output "logits": the module whose input is the embedding
    tokens: dict = field(default_factory=dict)  # TokenContext fields for (B, N, C) or channels-last outputs
    blocks: list[str] | None = None  # the block list, where the source gives it (python); see Source.blocks


def _nearest(name: str, names: list[str]) -> list[str]:
    return difflib.get_close_matches(name, names, n=5, cutoff=0.5)


def _square(input_size: int | None, preprocessing: dict) -> dict:
    """Preprocessing with a square input size from the config (resize to it, crop nothing)."""
    if not input_size:
        return preprocessing
    return {**preprocessing, "input_size": [3, int(input_size), int(input_size)], "resize_size": int(input_size)}


def _pil_transform(pre: dict) -> Callable:
    """Resize the shorter side, centre crop, to tensor, normalise: the preprocessing of torchvision and python."""
    from torchvision import transforms as T

    mode = T.InterpolationMode(pre.get("interpolation", "bilinear"))
    return T.Compose(
        [
            T.Resize(int(pre["resize_size"]), interpolation=mode, antialias=True),
            T.CenterCrop(list(pre["input_size"][1:])),
            T.ToTensor(),
            T.Normalize(list(pre["mean"]), list(pre["std"])),
        ]
    )


def _last_linear(module) -> str | None:
    """Name of the module's last nn.Linear (in module order): the classifier of a torchvision network."""
    from torch import nn

    names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def _composite_blocks(module, patterns: dict[str, str]) -> list[str] | None:
    """The first pattern whose non-leaf modules match at least twice (finest first), else None."""
    named = [(n, m) for n, m in module.named_modules() if next(m.children(), None) is not None]
    for pattern in patterns.values():
        found = [n for n, _ in named if re.fullmatch(pattern, n)]
        if len(found) >= 2:
            return found
    return None


class TimmSource:
    """timm models: `timm.create_model(name, pretrained, **kwargs)`; preprocessing from timm's data config."""

    library = "timm"

    def check(self, name: str) -> str | None:
        """A problem with a timm name (nearest names listed), or None."""
        base = name.split(".")[0]  # a pretrained tag may follow the dot
        known = timm_model_names()
        if base in known:
            return None
        return f"{name!r} is not a timm model; nearest timm names: {_nearest(base, sorted(known))}"

    def build(self, name: str, kwargs: dict, device, input_size: int | None, pretrained: bool) -> Built:
        """Create the model on `device` (meta for shapes only)."""
        import timm
        import torch

        kwargs = dict(kwargs or {})
        if input_size and re.match(r"(vit|deit|eva|beit|dinov|swin|vit_)", name):
            kwargs["img_size"] = input_size
        with torch.device(device):
            module = timm.create_model(name, pretrained=pretrained, **kwargs)
        from dataclasses import asdict

        from .pooling import token_context

        output = "timm" if hasattr(module, "forward_head") else "logits"
        return Built(module, self.preprocessing(module, input_size), output, tokens=asdict(token_context(module)))

    def preprocessing(self, module, input_size: int | None) -> dict:
        """timm's data config of the model, with a square input size from the config."""
        from timm.data import resolve_data_config

        overrides = {"input_size": (3, input_size, input_size), "crop_pct": 1.0} if input_size else {}
        cfg = resolve_data_config(overrides, model=module)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(cfg.items())}

    def transform(self, pre: dict) -> Callable:
        """timm's eval transform of a data config."""
        from timm.data import create_transform

        return create_transform(**{k: tuple(v) if isinstance(v, list) else v for k, v in pre.items()})

    def blocks(self, built: Built) -> list[str]:
        """Blocks by timm's module-name patterns (layers.BLOCK_PATTERNS)."""
        from .layers import find_blocks

        return find_blocks(built.module)

    def identity(self, name: str, kwargs: dict) -> dict:
        """What identifies the architecture in the feature cache (the keys brainprop used before sources)."""
        return {"timm": version("timm"), "timm_name": name, "timm_kwargs": kwargs or {}}

    def files(self, name: str) -> list[Path]:
        """Files the architecture is read from (none: it is in the library)."""
        return []


# torchvision's block lists: non-leaf modules, finest pattern first (first with two matches wins).
TORCHVISION_BLOCK_PATTERNS: dict[str, str] = {
    "vit_blocks": r"encoder\.layers\.encoder_layer_\d+",  # ViT
    "stage_blocks": r"features\.\d+\.\d+",  # EfficientNet (v1, v2), ConvNeXt, Swin: stage.block
    "resnet_blocks": r"layer\d+\.\d+",  # ResNet, ResNeXt, Wide-ResNet
    "regnet_blocks": r"trunk_output\.block\d+\.block\d+-\d+",  # RegNet
    "densenet_blocks": r"features\.denseblock\d+\.denselayer\d+",  # DenseNet
    "mnasnet_blocks": r"layers\.\d+\.\d+",  # MNASNet
    "shufflenet_blocks": r"stage\d+\.\d+",  # ShuffleNetV2
    "maxvit_blocks": r"blocks\.\d+\.layers\.\d+",  # MaxViT
    "inception_blocks": r"(inception\d[a-e]|Mixed_\d[a-e])",  # GoogLeNet, Inception-v3
    "feature_blocks": r"features\.\d+",  # MobileNetV2/V3, SqueezeNet: one block per features entry
}
# Block outputs that are not (B, C, H, W): token sequences with a class token, or channels last.
TORCHVISION_TOKENS: dict[str, dict] = {
    "VisionTransformer": {"num_prefix_tokens": 1, "has_class_token": True},
    "SwinTransformer": {"channels_last": True},
}


class TorchvisionSource:
    """torchvision classification builders; `name.TAG` names a member of the builder's weights enum."""

    library = "torchvision"

    def check(self, name: str) -> str | None:
        """A problem with a builder name or tag (nearest builders, or the builder's tags), or None."""
        builder, _, tag = name.partition(".")
        tags = torchvision_model_tags()
        if builder not in tags:
            return (
                f"{name!r} is not a torchvision.models classification builder; nearest builders: "
                f"{_nearest(builder, sorted(tags))}"
            )
        if tag and tag not in tags[builder]:
            return f"{name!r}: {builder} has no weights {tag!r}; its weights: {tags[builder] or 'none'}"
        return None

    def weights_enum(self, name: str):
        """The weights enum member that `name` names (its tag, else DEFAULT), or None without weights."""
        import torchvision.models as tvm

        builder, _, tag = name.partition(".")
        try:
            enum = tvm.get_model_weights(builder)
        except (ValueError, KeyError):
            if tag:
                raise ValueError(f"torchvision {builder} has no weights enum, so no tag {tag!r}") from None
            return None
        return enum[tag] if tag else enum.DEFAULT

    def build(self, name: str, kwargs: dict, device, input_size: int | None, pretrained: bool) -> Built:
        """Call the builder (weights=None, or the enum member served from a local file when pretrained)."""
        import torch
        import torchvision.models as tvm

        builder = tvm.get_model_builder(name.partition(".")[0])
        member = self.weights_enum(name)
        with torch.device(device):
            if pretrained:
                if member is None:
                    raise ValueError(f"torchvision {name} has no pretrained weights; use weights: random")
                with _served_from(pretrained_file(member)):
                    module = builder(weights=member, progress=False, **(kwargs or {}))
            else:
                module = builder(weights=None, **(kwargs or {}))
        return Built(
            module,
            self.preprocessing_of(member, input_size),
            "logits",
            classifier=_last_linear(module),
            tokens=TORCHVISION_TOKENS.get(type(module).__name__, {}),
        )

    def preprocessing_of(self, member, input_size: int | None) -> dict:
        """The weights' eval transform as values (ImageNet's 256/224 when the builder has no weights)."""
        if member is None:
            pre = {"input_size": [3, 224, 224], "resize_size": 256, "interpolation": "bilinear"}
            pre |= {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
        else:
            t = member.transforms()
            crop = list(t.crop_size) * (2 if len(t.crop_size) == 1 else 1)
            pre = {
                "input_size": [3, *crop],
                "resize_size": int(t.resize_size[0]),
                "interpolation": t.interpolation.value,
                "mean": [float(v) for v in t.mean],
                "std": [float(v) for v in t.std],
            }
        return dict(sorted(_square(input_size, pre).items()))

    def transform(self, pre: dict) -> Callable:
        """Resize, centre crop, normalise (torchvision's ImageClassification, from the values)."""
        return _pil_transform(pre)

    def blocks(self, built: Built) -> list[str]:
        """Blocks by TORCHVISION_BLOCK_PATTERNS over non-leaf modules."""
        found = _composite_blocks(built.module, TORCHVISION_BLOCK_PATTERNS)
        if found is None:
            raise ValueError(
                f"{type(built.module).__name__}: no block list found (tried "
                f"{list(TORCHVISION_BLOCK_PATTERNS.values())}); name the layers explicitly with "
                "models.<alias>.layers.names"
            )
        return found

    def identity(self, name: str, kwargs: dict) -> dict:
        """What identifies the architecture in the feature cache."""
        return {"source": "torchvision", "torchvision": version("torchvision"), "name": name, "kwargs": kwargs or {}}

    def files(self, name: str) -> list[Path]:
        """Files the architecture is read from (none: it is in the library)."""
        return []


def pretrained_file(member) -> Path:
    """The local file of a torchvision weights enum member: the weights folder, then torch hub's cache.

    Raises WeightFileError naming the file and how to restore it (never downloads).
    """
    import torch

    from .weights import WEIGHT_FILES, WeightFileError, install_command, verify_checkpoint, weights_dir

    filename = Path(member.url).name
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for folder in (weights_dir(), hub):
        path = folder / filename
        if path.is_file():
            verify_checkpoint(path)
            _check_hash_prefix(path)
            return path
    if filename in WEIGHT_FILES:
        fix = f"restore it with {install_command(filename)}"
    else:
        fix = (
            f"on a node with internet run `snakemake prefetch --configfile <config>` (downloads {member.url} "
            f"into {hub})"
        )
    raise WeightFileError(
        f"torchvision weights {type(member).__name__}.{member.name}: file {filename} is neither in the weights "
        f"folder {weights_dir()} nor in torch hub's cache {hub}; {fix}"
    )


def _check_hash_prefix(path: Path) -> None:
    """torch hub's convention: the hex digits after the last '-' of the name start the file's sha256."""
    from ..io import file_sha256
    from .weights import WeightFileError

    match = re.search(r"-([a-f0-9]{6,})\.", path.name)
    if match and not file_sha256(path).startswith(match.group(1)):
        raise WeightFileError(
            f"{path}: sha256 does not start with {match.group(1)} as its name says (corrupt download?); delete it "
            "and fetch it again"
        )


class _served_from:
    """While active, torchvision's weights enums load their state dict from `path` (weights_only, no download)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import torch
        from torchvision.models._api import WeightsEnum

        self.original = WeightsEnum.get_state_dict
        path = self.path
        WeightsEnum.get_state_dict = lambda self, *a, **k: torch.load(path, map_location="cpu", weights_only=True)
        return self

    def __exit__(self, *exc) -> None:
        from torchvision.models._api import WeightsEnum

        WeightsEnum.get_state_dict = self.original


PYTHON_NAME = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
# Keys of a factory's return value: required, and optional with their defaults.
FACTORY_REQUIRED = ("module", "blocks", "preprocessing")
FACTORY_DEFAULTS: dict = {"output": "logits", "classifier": None, "tokens": {}}
PREPROCESSING_REQUIRED = ("input_size", "mean", "std")


class PythonSource:
    """A user's `package.module:function(pretrained=..., **kwargs)` returning the model and what it needs."""

    library = "python"

    def check(self, name: str) -> str | None:
        """A problem with a `module:function` name (its module must be importable), or None."""
        if not PYTHON_NAME.fullmatch(name):
            return f"{name!r} is not of the form 'package.module:function'"
        module = name.split(":")[0]
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError) as err:
            return f"{name!r}: module {module!r} cannot be imported ({err})"
        if found is None:
            return f"{name!r}: no module {module!r} on the Python path (install it or add it to PYTHONPATH)"
        return None

    def factory(self, name: str) -> Callable:
        """The factory function a `module:function` name points to."""
        module, function = name.split(":")
        fn = getattr(importlib.import_module(module), function, None)
        if not callable(fn):
            raise ValueError(f"python model {name!r}: {module} has no function {function!r}")
        return fn

    def build(self, name: str, kwargs: dict, device, input_size: int | None, pretrained: bool) -> Built:
        """Call the factory on `device` and check what it returns."""
        import torch

        with torch.device(device):
            parts = self.factory(name)(pretrained=pretrained, **(kwargs or {}))
        if not isinstance(parts, dict):
            raise ValueError(f"python model {name!r}: the factory returned {type(parts).__name__}; expected a dict")
        missing = [k for k in FACTORY_REQUIRED if k not in parts]
        unknown = sorted(set(parts) - set(FACTORY_REQUIRED) - set(FACTORY_DEFAULTS))
        if missing or unknown:
            raise ValueError(
                f"python model {name!r}: the factory's dict lacks {missing} / has unknown keys {unknown}; "
                f"expected {list(FACTORY_REQUIRED)} and optionally {sorted(FACTORY_DEFAULTS)}"
            )
        parts = {**FACTORY_DEFAULTS, **parts}
        module = parts["module"]
        if not isinstance(module, torch.nn.Module):
            raise ValueError(f"python model {name!r}: 'module' is a {type(module).__name__}, not a torch.nn.Module")
        modules = dict(module.named_modules())
        bad = [b for b in parts["blocks"] if b not in modules]
        if bad or len(parts["blocks"]) < 1:
            raise ValueError(f"python model {name!r}: blocks {bad} are not modules of the model")
        if parts["output"] not in ("logits", "embedding"):
            raise ValueError(f"python model {name!r}: output {parts['output']!r}; expected 'logits' or 'embedding'")
        classifier = parts["classifier"] or (_last_linear(module) if parts["output"] == "logits" else None)
        if classifier is not None and classifier not in modules:
            raise ValueError(f"python model {name!r}: classifier {classifier!r} is not a module of the model")
        return Built(
            module,
            self.preprocessing_of(name, parts["preprocessing"], input_size),
            parts["output"],
            classifier=classifier,
            tokens=dict(parts["tokens"]),
            blocks=list(parts["blocks"]),
        )

    def preprocessing_of(self, name: str, pre: dict, input_size: int | None) -> dict:
        """The factory's preprocessing, completed (resize_size, interpolation) and JSON-ready."""
        missing = [k for k in PREPROCESSING_REQUIRED if k not in pre]
        if missing:
            raise ValueError(f"python model {name!r}: preprocessing lacks {missing}; expected {PREPROCESSING_REQUIRED}")
        size = pre["input_size"]
        size = [3, int(size), int(size)] if isinstance(size, int) else [int(v) for v in size]
        out = {
            "input_size": size,
            "resize_size": int(pre.get("resize_size", min(size[1:]))),
            "interpolation": str(pre.get("interpolation", "bilinear")),
            "mean": [float(v) for v in pre["mean"]],
            "std": [float(v) for v in pre["std"]],
        }
        return dict(sorted(_square(input_size, out).items()))

    def transform(self, pre: dict) -> Callable:
        """Resize, centre crop, normalise, from the factory's values."""
        return _pil_transform(pre)

    def blocks(self, built: Built) -> list[str]:
        """The factory's block list."""
        return list(built.blocks)

    def identity(self, name: str, kwargs: dict) -> dict:
        """The factory's name, kwargs and the sha256 of its module's source file."""
        files = self.files(name)
        digest = hashlib.sha256(files[0].read_bytes()).hexdigest() if files else None
        return {"source": "python", "name": name, "kwargs": kwargs or {}, "factory_sha256": digest}

    def files(self, name: str) -> list[Path]:
        """The factory module's source file (found without importing the module itself), when it has one."""
        spec = importlib.util.find_spec(name.split(":")[0])
        origin = spec.origin if spec is not None else None
        return [Path(origin)] if origin and Path(origin).is_file() else []


SOURCES: dict[str, TimmSource | TorchvisionSource | PythonSource] = {
    "timm": TimmSource(),
    "torchvision": TorchvisionSource(),
    "python": PythonSource(),
}


def model_files(entry: dict, key: str = "models.<alias>.weights") -> list[str]:
    """Files a model entry's features are computed from: its checkpoint file and a python factory's module.

    The workflow declares them as inputs of the model's extraction, so replacing one (a checkpoint
    overwritten at the same path) reruns exactly the jobs that depend on it.
    """
    from .weights import is_checkpoint, resolve_checkpoint

    entry = canonical_model(entry)
    files = [str(path) for path in source_of(entry).files(entry["name"])]
    weights = entry.get("weights", "random")
    if is_checkpoint(weights):
        files.append(str(resolve_checkpoint(weights, key)))
    return files


def source_of(entry: dict) -> TimmSource | TorchvisionSource | PythonSource:
    """The source of a (canonical) model entry; an unknown source lists the valid ones."""
    name = entry.get("source", "timm")
    if name not in SOURCES:
        raise ValueError(f"model source {name!r} unknown; valid sources: {sorted(SOURCES)}")
    return SOURCES[name]
