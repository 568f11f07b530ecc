"""Configuration: JSON-Schema validation with defaults, cross-field checks, and errors that name the key."""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
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
    validator = _validator_with_defaults(_schema(schema_path))
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_message(e) for e in errors))
    _check_cross_fields(config)
    if check_models:
        _check_timm_names(config)
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
REAL_KIND_ATLAS = {
    "nsd": "nsd",
    "nsd_algonauts": "algonauts",
    "things_fmri": "things",
    "things_meg": "",
    "things_eeg2": "",
}


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
    for alias, model in config["models"].items():
        weights = model["weights"]
        if weights not in ("random", "pretrained") and not Path(weights).is_file():
            problems.append(
                f"config key models.{alias}.weights: {weights!r} is neither 'random', 'pretrained' "
                "nor an existing checkpoint file"
            )
        if "names" in model["layers"] and "n" in model["layers"] and model["layers"]["n"] != 22:
            problems.append(f"config key models.{alias}.layers: give either 'n' or 'names', not both")
    for alias in config.get("joint", {}).get("models") or []:
        if alias not in config["models"]:
            problems.append(
                f"config key joint.models: {alias!r} is not a model alias; defined models: {sorted(config['models'])}"
            )
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _timm_cache_path(version: str) -> Path:
    """Where the model names of one timm version are cached (XDG cache directory)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "brainprop" / f"timm-{version}-models.txt"


def timm_model_names() -> set[str]:
    """timm's registered model names, cached per timm version.

    Importing timm costs seconds, and Snakemake parses the config at every start (and in every
    cluster job); the names only change with the timm version.
    """
    from importlib.metadata import version

    path = _timm_cache_path(version("timm"))
    try:
        return set(path.read_text().split())
    except OSError:
        pass
    import timm

    names = sorted(timm.list_models())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text("\n".join(names) + "\n")
        os.replace(tmp, path)
    except OSError:  # a read-only home: check without the cache
        pass
    return set(names)


def _check_timm_names(config: dict) -> None:
    known = timm_model_names()
    problems = []
    for alias, model in config["models"].items():
        name = model["timm_name"].split(".")[0]  # a pretrained tag may follow the dot
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=5)
            problems.append(
                f"config key models.{alias}.timm_name: {model['timm_name']!r} is not a timm model; "
                f"nearest timm names: {close}"
            )
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
