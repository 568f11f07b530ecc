"""Configuration: JSON-Schema validation with defaults, cross-field checks, and errors that name the key."""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from pathlib import Path

import numpy as np
import yaml

__all__ = ["SCHEMA_PATH", "ConfigError", "alphas", "config_hash", "load_config", "validate_config"]

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key, the value and what is allowed."""


def _schema(path: Path | None = None) -> dict:
    path = Path(path or SCHEMA_PATH)
    if not path.exists():
        raise FileNotFoundError(f"config schema {path} not found (is brainprop installed from its repository?)")
    return yaml.safe_load(path.read_text())


def _validator_with_defaults(schema: dict):
    """A Draft 2020-12 validator that also fills in `default` values, depth first."""
    from jsonschema import Draft202012Validator, validators

    base = Draft202012Validator.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if isinstance(instance, dict):
            for key, sub in props.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from base(validator, props, instance, schema)

    cls = validators.extend(Draft202012Validator, {"properties": properties})
    return cls(schema)


def _key_path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _message(error) -> str:
    key = _key_path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        hint = ""
        if extra and allowed:
            close = difflib.get_close_matches(extra[0], allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"config key {key}: unknown key(s) {extra}{hint}; allowed keys: {allowed}"
    if error.validator == "enum":
        return f"config key {key}: {error.instance!r} is not allowed; allowed values: {error.validator_value}"
    if error.validator == "required":
        return f"config key {key}: {error.message}"
    return f"config key {key}: {error.message}"


def validate_config(config: dict, schema_path: Path | None = None, check_models: bool = True) -> dict:
    """Validate `config` in place (filling defaults) and run the cross-field checks; return it."""
    _prefill_real_datasets(config)
    spelled = _canonical_models(config)
    validator = _validator_with_defaults(_schema(schema_path))
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_message(e) for e in errors))
    _check_cross_fields(config)
    if check_models:
        _check_model_names(config, spelled)
    canonical = _canonical_order(config)
    config.clear()
    config.update(canonical)
    return config


# Maps whose entry order the user chooses (it orders figures and tables); every other mapping
# is sorted by key, so that reordering keys in the YAML file changes no rule's params (and
# triggers no rerun).
_ORDERED_MAPS = {
    ("stimuli",),
    ("models",),
    ("datasets",),
    ("datasets", "*", "roi_levels"),
    ("datasets", "*", "meg_windows"),
}


def _canonical_order(value, path: tuple = ()):
    """`value` with the keys of every mapping sorted, except the user-ordered maps."""
    if isinstance(value, dict):
        ordered = any(len(p) == len(path) and all(a in ("*", b) for a, b in zip(p, path)) for p in _ORDERED_MAPS)
        keys = list(value) if ordered else sorted(value, key=str)
        return {k: _canonical_order(value[k], (*path, str(k))) for k in keys}
    if isinstance(value, list):
        return [_canonical_order(v, path) for v in value]
    return value


# real dataset kind -> default atlas name of its fMRI targets ("" for MEG)
REAL_KIND_ATLAS = {"nsd": "nsd", "nsd_algonauts": "algonauts", "things_fmri": "things", "things_meg": ""}


def _prefill_real_datasets(config: dict) -> None:
    """Give real datasets their option block (so the schema fills its defaults) and their kind's atlas."""
    datasets = config.get("datasets")
    if not isinstance(datasets, dict):
        return
    for ds in datasets.values():
        if isinstance(ds, dict) and ds.get("kind") in REAL_KIND_ATLAS:
            ds.setdefault(ds["kind"], {})
            ds.setdefault("atlas", REAL_KIND_ATLAS[ds["kind"]])


def _check_real_datasets(config: dict) -> list[str]:
    """A real dataset has a root, only its own option block, and an image set of kind dataset naming it."""
    problems = []
    for name, ds in config["datasets"].items():
        kind = ds["kind"]
        others = sorted(k for k in (*REAL_KIND_ATLAS, "simulation") if k in ds and k != kind)
        if kind == "simulated":
            others = [k for k in others if k != "simulation"]
        if others:
            problems.append(f"config key datasets.{name}: {others} do not apply to kind {kind!r}")
        if kind == "simulated":
            continue
        if "root" not in ds:
            problems.append(f"config key datasets.{name}.root: required for kind {kind!r} (the dataset's folder)")
        spec = config["stimuli"].get(ds["imageset"], {})
        if spec.get("kind") != "dataset" or spec.get("dataset") != name:
            problems.append(
                f"config key datasets.{name}.imageset: {ds['imageset']!r} must be an image set "
                f"{{kind: dataset, dataset: {name}}} for kind {kind!r}"
            )
    for key, spec in config["stimuli"].items():
        if spec["kind"] == "dataset":
            target = config["datasets"].get(spec.get("dataset"), {})
            if target.get("kind") in (None, "simulated"):
                problems.append(
                    f"config key stimuli.{key}.dataset: {spec.get('dataset')!r} is not a real dataset; "
                    f"real datasets: {sorted(n for n, d in config['datasets'].items() if d['kind'] != 'simulated')}"
                )
    return problems


def _check_weights(models: dict) -> list[str]:
    """Each checkpoint file exists (bare names in the weights folder); a key map goes with a checkpoint."""
    from .features.weights import WeightFileError, is_checkpoint, resolve_checkpoint

    problems = []
    for alias, model in models.items():
        weights, key = model["weights"], f"config key models.{alias}.weights"
        if is_checkpoint(weights):
            try:
                resolve_checkpoint(weights, key)
            except WeightFileError as err:
                problems.append(f"{err} (expected 'random', 'pretrained' or a checkpoint file)")
        elif model.get("key_map"):
            problems.append(
                f"config key models.{alias}.key_map: {model['key_map']!r} renames a checkpoint's keys, but "
                f"weights is {weights!r}; give a checkpoint file as weights or drop key_map"
            )
    return problems


def _check_cross_fields(config: dict) -> None:
    problems = _check_real_datasets(config)
    for name, ds in config["datasets"].items():
        if ds["imageset"] not in config["stimuli"]:
            problems.append(
                f"config key datasets.{name}.imageset: {ds['imageset']!r} is not an image set; "
                f"defined image sets: {sorted(config['stimuli'])}"
            )
        sim = ds.get("simulation")
        if ds["kind"] == "simulated" and sim is None:
            problems.append(f"config key datasets.{name}.simulation: required for kind 'simulated'")
        if sim and sim["source_model"] not in config["models"]:
            problems.append(
                f"config key datasets.{name}.simulation.source_model: {sim['source_model']!r} is not a "
                f"model alias; defined models: {sorted(config['models'])}"
            )
        if sim:
            meg = sim["meg"]
            for key in ("forward_window", "backward_window"):
                lo, hi = meg[key]
                if not lo < hi:
                    problems.append(
                        f"config key datasets.{name}.simulation.meg.{key}: {meg[key]} must be [start, end] "
                        "with start < end"
                    )
        for level, window in ds.get("meg_windows", {}).items():
            if not window[0] < window[1]:
                problems.append(
                    f"config key datasets.{name}.meg_windows.{level}: {window} must be [start, end] with start < end"
                )
    problems += _check_weights(config["models"])
    for alias, model in config["models"].items():
        if "names" in model["layers"] and "n" in model["layers"] and model["layers"]["n"] != 22:
            problems.append(f"config key models.{alias}.layers: give either 'n' or 'names', not both")
    for alias in config.get("joint", {}).get("models") or []:
        if alias not in config["models"]:
            problems.append(
                f"config key joint.models: {alias!r} is not a model alias; defined models: {sorted(config['models'])}"
            )
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _canonical_models(config: dict) -> dict[str, str]:
    """Rewrite each model's timm_name/timm_kwargs to name/kwargs; returns alias -> the key its name was given as."""
    from .features.sources import canonical_model

    models = config.get("models")
    if not isinstance(models, dict):
        return {}
    problems, spelled = [], {}
    for alias, entry in models.items():
        if not isinstance(entry, dict):
            continue
        spelled[alias] = "timm_name" if "timm_name" in entry else "name"
        try:
            models[alias] = canonical_model(entry, f"models.{alias}")
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return spelled


def timm_model_names() -> set[str]:
    """timm's registered model names, cached per timm version (features.sources)."""
    from .features.sources import timm_model_names as names

    return names()


def _check_model_names(config: dict, spelled: dict[str, str] | None = None) -> None:
    """Every model's name exists in its source (nearest names listed); cheap: per-version name caches."""
    from .features.sources import SOURCES

    problems = []
    for alias, model in config["models"].items():
        problem = SOURCES[model["source"]].check(model["name"])
        if problem:
            key = (spelled or {}).get(alias, "name")
            problems.append(f"config key models.{alias}.{key}: {problem} (source {model['source']!r})")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def load_config(path: str | Path, check_models: bool = True) -> dict:
    """Read a YAML config file and validate it."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return validate_config(config, check_models=check_models)


def config_hash(config: dict) -> str:
    """A short stable hash of a (validated) config, recorded in every table's provenance."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def alphas(encoding: dict) -> np.ndarray:
    """The ridge penalty grid of the `encoding.alphas` config entry."""
    spec = encoding["alphas"]
    return np.logspace(spec["log10_min"], spec["log10_max"], spec["n"])
