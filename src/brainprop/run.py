"""Model variants: controls (METHOD.md §6) and the sensitivity choices, as extra model aliases.

A variant is a copy of a configured model with one setting changed; the workflow runs it as
a model of its own (alias `{model}__{variant}`), so its tests sit beside the real model's rows
with the columns `base_model` and `variant` saying what it is:

- `random_init`: the same architecture with seeded random weights (what the architecture alone
  produces). A model whose weights are already `random` is its own random-init control, so
  no copy is made.
- `shuffled_loss`: the loss `cross_entropy_shuffled` (the model's own top-1 labels permuted
  across images), made only for models trained with `cross_entropy`.
- `pooling_{mode}` and `loss_{name}` (config `sensitivity.pooling`, `sensitivity.loss`):
  the open choices of METHOD.md §2, made only where they differ from the model's setting.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

__all__ = ["CONTROLS", "SEPARATOR", "model_variants", "variant_of"]

SEPARATOR = "__"

log = logging.getLogger(__name__)


def _random_init(model: dict) -> dict | None:
    return None if model["weights"] == "random" else {"weights": "random"}


def _shuffled_loss(model: dict) -> dict | None:
    if model["loss"] != "cross_entropy":
        return None
    return {"loss": "cross_entropy_shuffled", "loss_params": {}}


CONTROLS: dict[str, Callable[[dict], dict | None]] = {
    "random_init": _random_init,
    "shuffled_loss": _shuffled_loss,
}


def _derived(alias: str, model: dict, variant: str, change: dict) -> tuple[str, dict]:
    entry = copy.deepcopy(model) | copy.deepcopy(change)
    entry.pop("controls", None)
    entry["base_model"], entry["variant"] = alias, variant
    return f"{alias}{SEPARATOR}{variant}", entry


def model_variants(models: dict, sensitivity: dict | None = None) -> dict:
    """The configured models plus their control and sensitivity variants, by alias.

    Every entry gets `base_model` (its configured alias) and `variant` ("" for the real model).
    Controls come from each model's `controls` list; `sensitivity` may list `pooling` modes and
    `loss` names to rerun every model with.
    """
    sensitivity = sensitivity or {}
    out = {}
    for alias, model in models.items():
        if SEPARATOR in alias:
            raise ValueError(f"model alias {alias!r} contains {SEPARATOR!r}, which names variants; rename it")
        out[alias] = copy.deepcopy(model) | {"base_model": alias, "variant": ""}
        for control in model.get("controls", []):
            if control not in CONTROLS:
                raise ValueError(f"models.{alias}.controls: {control!r} unknown; expected one of {sorted(CONTROLS)}")
            change = CONTROLS[control](model)
            if change is None:
                log.info("model %s: control %s is the model itself or does not apply; no copy", alias, control)
                continue
            key, entry = _derived(alias, model, control, change)
            out[key] = entry
        for mode in sensitivity.get("pooling", []):
            if mode != model["pooling"]["mode"]:
                key, entry = _derived(alias, model, f"pooling_{mode}", {"pooling": model["pooling"] | {"mode": mode}})
                out[key] = entry
        for loss in sensitivity.get("loss", []):
            if loss != model["loss"]:
                key, entry = _derived(alias, model, f"loss_{loss}", {"loss": loss, "loss_params": {}})
                out[key] = entry
    return out


def variant_of(models: dict, alias: str) -> dict:
    """`{"base_model": ..., "variant": ...}` of an alias in `model_variants` output."""
    entry = models[alias]
    return {"base_model": entry["base_model"], "variant": entry["variant"]}
