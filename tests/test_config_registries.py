"""Every enum of the config schema equals the registry the code looks the value up in (one list, one place)."""

from __future__ import annotations

import importlib

import pytest
import yaml

from brainprop.config import SCHEMA_PATH

SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
MODEL = SCHEMA["properties"]["models"]["additionalProperties"]["properties"]
DATASET = SCHEMA["properties"]["datasets"]["additionalProperties"]["properties"]
TOP = SCHEMA["properties"]

# name -> (schema node of the enum, "module:registry" the code looks the value up in, values beside it)
CASES = {
    "pooling": (SCHEMA["$defs"]["pooling"]["properties"]["mode"], "brainprop.features.pooling:POOLINGS", set()),
    "losses": (MODEL["loss"], "brainprop.features.losses:LOSSES", set()),
    "signals": (MODEL["signals"], "brainprop.features.extract:SIGNALS", set()),
    "precision": (MODEL["precision"], "brainprop.features.extract:PRECISIONS", set()),
    "controls": (MODEL["controls"], "brainprop.run:CONTROLS", set()),
    "storage": (TOP["extraction"]["properties"]["storage_dtype"], "brainprop.features.cache:STORAGE_DTYPES", set()),
    # simulated datasets have no reader: the brain stage plants them
    "kinds": (DATASET["kind"], "brainprop.brain.datasets:DATASET_KINDS", {"simulated"}),
    "scenarios": (DATASET["simulation"]["properties"]["scenario"], "brainprop.brain.simulate:SCENARIOS", set()),
    "nulls": (TOP["stats"]["properties"]["subject_null"], "brainprop.stats.nulls:NULLS", set()),
    "calibration nulls": (TOP["calibration"]["properties"]["nulls"], "brainprop.stats.nulls:NULLS", set()),
    "backends": (TOP["encoding"]["properties"]["backend"], "brainprop.encoding._backends:BACKENDS", set()),
    "exclude": (TOP["hierarchy"]["properties"]["exclude"], "brainprop.hierarchy.scores:EXCLUSION_RULES", set()),
    "imagesets": (
        TOP["stimuli"]["additionalProperties"]["properties"]["kind"],
        "brainprop.stimuli.rules:IMAGESET_KINDS",
        set(),
    ),
    "formats": (TOP["figures"]["properties"]["formats"], "brainprop.figures.style:FORMATS", set()),
    "sensitivity pooling": (TOP["sensitivity"]["properties"]["pooling"], "brainprop.features.pooling:POOLINGS", set()),
    "sensitivity exclude": (
        TOP["sensitivity"]["properties"]["exclude"],
        "brainprop.hierarchy.scores:EXCLUSION_RULES",
        set(),
    ),
    "grad_normalize": (MODEL["grad_normalize"], "brainprop.features.extract:GRAD_NORMALIZATIONS", set()),
    "sensitivity grad_normalize": (
        TOP["sensitivity"]["properties"]["grad_normalize"],
        "brainprop.features.extract:GRAD_NORMALIZATIONS",
        set(),
    ),
    "nuisance": (TOP["encoding"]["properties"]["nuisance"], "brainprop.encoding.nuisance:NUISANCES", set()),
    "sensitivity nuisance": (
        TOP["sensitivity"]["properties"]["nuisance"]["items"],
        "brainprop.encoding.nuisance:NUISANCES",
        set(),
    ),
    "reference": (TOP["joint"]["properties"]["reference"], "brainprop.encoding.joint:REFERENCES", set()),
    "sensitivity reference": (
        TOP["sensitivity"]["properties"]["reference"],
        "brainprop.encoding.joint:REFERENCES",
        set(),
    ),
}


def _enum(node: dict) -> set:
    """The enum of a schema node, or of its array items."""
    return set(node["enum"] if "enum" in node else node["items"]["enum"])


def _registry(where: str) -> set:
    module, _, name = where.partition(":")
    return set(getattr(importlib.import_module(module), name))


@pytest.mark.parametrize("name", sorted(CASES))
def test_schema_enum_equals_its_registry(name):
    node, where, beside = CASES[name]
    assert _enum(node) == _registry(where) | beside


def test_sensitivity_losses_are_the_losses_that_need_no_control():
    # cross_entropy_shuffled is the shuffled-loss control (brainprop.run.CONTROLS), not a choice to vary;
    # a loss that reads a file (features.weights.LOSS_FILES) is named with its params, {name, params}.
    losses = _registry("brainprop.features.losses:LOSSES")
    by_name, with_params = TOP["sensitivity"]["properties"]["loss"]["items"]["oneOf"]
    assert _enum(with_params["properties"]["name"]) == losses - {"cross_entropy_shuffled"}
    files = _registry("brainprop.features.weights:LOSS_FILES")
    assert _enum(by_name) == losses - {"cross_entropy_shuffled"} - files
