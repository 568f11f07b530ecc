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


def _additional_properties(error, key: str) -> str:
    """Unknown keys, with the nearest allowed key and the allowed ones."""
    allowed = sorted(error.schema.get("properties", {}))
    extra = sorted(set(error.instance) - set(allowed))
    hint = ""
    if extra and allowed:
        close = difflib.get_close_matches(extra[0], allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"config key {key}: unknown key(s) {extra}{hint}; allowed keys: {allowed}"


def _enum(error, key: str) -> str:
    """A value outside an enum, with the allowed values."""
    return f"config key {key}: {error.instance!r} is not allowed; allowed values: {error.validator_value}"


def _bound(schema: dict, inclusive: str, exclusive: str) -> tuple[bool, object] | None:
    """(closed?, value) of one end of a schema's range, or None when that end is open."""
    if inclusive in schema:
        return True, schema[inclusive]
    if exclusive in schema:
        return False, schema[exclusive]
    return None


def _describe(schema: dict) -> str:
    """What a (sub)schema accepts, in words: 'an integer in [1, 100]', 'a number in (0, 1]', "'auto'"."""
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        return " or ".join(repr(v) for v in schema["enum"])
    types = schema.get("type") if isinstance(schema.get("type"), list) else [schema.get("type")]
    kind = "an integer" if "integer" in types else "a number" if "number" in types else f"a {types[0]}"
    lo, hi = _bound(schema, "minimum", "exclusiveMinimum"), _bound(schema, "maximum", "exclusiveMaximum")
    if lo and hi:
        return f"{kind} in {'[' if lo[0] else '('}{lo[1]}, {hi[1]}{']' if hi[0] else ')'}"
    if lo:
        return f"{kind} {'>=' if lo[0] else '>'} {lo[1]}"
    if hi:
        return f"{kind} {'<=' if hi[0] else '<'} {hi[1]}"
    return kind


def _out_of_range(error, key: str) -> str:
    """A number beyond its bounds, with the allowed range and the reason for it (`$comment`)."""
    reason = f" ({error.schema['$comment']})" if "$comment" in error.schema else ""
    return f"config key {key}: {error.instance!r} is out of range; expected {_describe(error.schema)}{reason}"


def _one_of(error, key: str) -> str:
    """A value matching none of the choices (an integer range or 'auto'), naming each."""
    choices = " or ".join(_describe(s) for s in error.validator_value)
    ranged = any(e.validator in _RANGES for e in error.context)  # the right type, beyond its bounds
    return f"config key {key}: {error.instance!r} is {'out of range' if ranged else 'not allowed'}; expected {choices}"


_RANGES = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


# jsonschema validator -> message(error, key path); others: jsonschema's own message after the key
_MESSAGES = {
    "additionalProperties": _additional_properties,
    "enum": _enum,
    **dict.fromkeys(_RANGES, _out_of_range),
    "oneOf": _one_of,
}


def _message(error) -> str:
    """One line per schema error: the key path, the value and what is allowed."""
    key = _key_path(error)
    if error.validator in _MESSAGES:
        return _MESSAGES[error.validator](error, key)
    return f"config key {key}: {error.message}"


def validate_config(config: dict, schema_path: Path | None = None, check_models: bool = True) -> dict:
    """Validate `config` in place (filling defaults) and run the cross-field checks; return it."""
    _check_key_types(config)
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
    ("datasets", "*", "sensor_groups"),
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
    """Checks across keys, before any job: references, real datasets and the strict checks (STRICT_CHECKS)."""
    problems = _check_real_datasets(config) + [p for check in STRICT_CHECKS for p in check(config)]
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
    for key in ("joint", "sensitivity"):
        for alias in config.get(key, {}).get("models") or []:
            if alias not in config["models"]:
                problems.append(
                    f"config key {key}.models: {alias!r} is not a model alias; defined models: "
                    f"{sorted(config['models'])}"
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
    """Read a config file strictly (brainprop.configfile: duplicate and non-string keys are errors) and validate it."""
    from .configfile import read_config_file

    return validate_config(read_config_file(path), check_models=check_models)


def config_hash(config: dict) -> str:
    """A short stable hash of a (validated) config, recorded in every table's provenance."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def alphas(encoding: dict) -> np.ndarray:
    """The ridge penalty grid of the `encoding.alphas` config entry."""
    spec = encoding["alphas"]
    return np.logspace(spec["log10_min"], spec["log10_max"], spec["n"])


# ---- strict checks: names, counts against what the run will have, ranges that only make sense one way


# what YAML 1.1 makes of an unquoted key -> (the spellings that give it, how to quote the meant name)
_NON_STRING_KEYS = {
    True: ("on, yes or true", "'on'"),
    False: ("off, no or false", "'off'"),
    None: ("null, ~ or nothing", "'null'"),
}


def _unquoted(key: object) -> tuple[str, str]:
    """How YAML spells a non-string key unquoted, and the quoted name to write instead."""
    if isinstance(key, bool) or key is None:
        return _NON_STRING_KEYS[key]
    return ("a number" if isinstance(key, (int, float)) else f"a {type(key).__name__}"), f"'{key}'"


def _key_problems(value: object, path: str) -> list[str]:
    """Keys of every mapping under `value` that are not strings (what YAML made of `on:`, `1:`, `null:`)."""
    problems = []
    if isinstance(value, dict):
        for key, sub in value.items():
            if not isinstance(key, str):
                spelled, quoted = _unquoted(key)
                problems.append(
                    f"config key {path or '(top level)'}: key {key!r} is not a name (YAML reads unquoted "
                    f"{spelled} as {key!r}); quote it in the config file ({quoted}:)"
                )
            problems += _key_problems(sub, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            problems += _key_problems(item, f"{path}.{i}")
    return problems


def _check_key_types(config: dict) -> None:
    """Refuse non-string keys before the schema (its name patterns skip them, and sorting them fails)."""
    problems = _key_problems(config, "")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


# maps whose keys name folders and wildcards (and subjects, per dataset)
_NAMED_MAPS = ("stimuli", "models", "datasets")


def _case_collisions(names: list[str], key: str) -> list[str]:
    """Names that differ only in case: their folders collide on case-insensitive file systems."""
    first: dict[str, str] = {}
    problems = []
    for name in names:
        other = first.setdefault(name.lower(), name)
        if other != name:
            a, b = sorted((name, other))
            problems.append(
                f"config key {key}: {a!r} and {b!r} differ only in case, so their output folders collide on "
                "case-insensitive file systems (macOS, Windows); rename one"
            )
    return problems


def _check_names(config: dict) -> list[str]:
    """Model aliases keep `__` for variants; names of folders may not differ only in case."""
    from .run import SEPARATOR

    problems = [
        f"config key models.{alias}: {SEPARATOR!r} separates a model from its variants (resnet18{SEPARATOR}"
        f"random_init); rename it, e.g. {alias.replace(SEPARATOR, '_')!r}"
        for alias in config["models"]
        if SEPARATOR in alias
    ]
    for key in _NAMED_MAPS:
        problems += _case_collisions(list(config[key]), key)
    for name, ds in config["datasets"].items():
        problems += _case_collisions(list(ds["subjects"]), f"datasets.{name}.subjects")
    return problems


def _check_folds(config: dict) -> list[str]:
    """encoding.folds against the groups (or images) of every demo image set a dataset uses."""
    from .stimuli.demo import demo_group_count

    enc = config["encoding"]
    folds, grouped = enc["folds"], enc["group_folds"]
    problems = []
    for imageset in dict.fromkeys(ds["imageset"] for ds in config["datasets"].values()):
        spec = config["stimuli"].get(imageset, {})
        if spec.get("kind") != "demo":
            continue  # a dataset's image set: its groups are known once its manifest is written (the folds rule)
        n_images = spec["n_images"]
        limit = demo_group_count(n_images) if grouped else n_images
        if folds <= limit:
            continue
        if grouped:
            why = (
                f"has at most {limit} groups (n_images {n_images}), and encoding.group_folds: true keeps each "
                f"group in one fold; set encoding.folds to at most {limit}, or encoding.group_folds: false"
            )
        else:
            why = f"has {n_images} images; set encoding.folds to at most {n_images}"
        problems.append(f"config key encoding.folds: {folds} folds, but image set {imageset!r} {why}")
    return problems


def _check_penalty_grids(config: dict) -> list[str]:
    """encoding.alphas and joint.alphas run from log10_min up to log10_max, with distinct values."""
    problems = []
    for key in ("encoding", "joint"):
        spec = config[key]["alphas"]
        lo, hi, n = spec["log10_min"], spec["log10_max"], spec["n"]
        if lo > hi:
            problems.append(
                f"config key {key}.alphas: log10_min {lo:g} > log10_max {hi:g} (a reversed penalty grid); swap them"
            )
        elif lo == hi and n > 1:
            problems.append(
                f"config key {key}.alphas: log10_min = log10_max = {lo:g} with n {n} gives {n} equal penalties; "
                "set n: 1 for one penalty, or widen the range"
            )
    return problems


def _check_layers(config: dict) -> list[str]:
    """A layer list is given as a count or as names, not both (the schema fills n only without names)."""
    return [
        f"config key models.{alias}.layers: give either 'n' (that many evenly spaced blocks) or 'names' "
        "(these blocks), not both; remove one"
        for alias, model in config["models"].items()
        if "n" in model["layers"] and "names" in model["layers"]
    ]


def _poolings(config: dict) -> list[tuple[str, dict]]:
    """(key, pooling block) of every model and every simulated dataset's plant."""
    out = [(f"models.{alias}.pooling", model["pooling"]) for alias, model in config["models"].items()]
    for name, ds in config["datasets"].items():
        if ds.get("simulation"):
            out.append((f"datasets.{name}.simulation.plant_pooling", ds["simulation"]["plant_pooling"]))
    return out


def _check_projections(config: dict) -> list[str]:
    """A projection only shrinks: dim <= above (else layers just over `above` would grow to `dim`)."""
    problems = []
    for key, pooling in _poolings(config):
        dim, above = pooling["projection"]["dim"], pooling["projection"]["above"]
        if dim is not None and dim > above:
            problems.append(
                f"config key {key}.projection: dim {dim} > above {above}: a layer of {above + 1} to {dim} dims "
                f"would be projected up to {dim}; set dim to at most {above} (or above to at least {dim})"
            )
    return problems


def _epoch(meg: dict) -> tuple[float, float]:
    """First and last sample time (s) of a simulated MEG epoch (brainprop.brain.simulate)."""
    return meg["tmin"], meg["tmin"] + (meg["n_times"] - 1) / meg["sfreq"]


def _check_simulations(config: dict) -> list[str]:
    """A simulated dataset's plant, ROI names and MEG windows fit what the simulation makes."""
    from .brain.simulate import SIM_ROIS

    problems = []
    rois = list(SIM_ROIS)
    for name, ds in config["datasets"].items():
        sim = ds.get("simulation")
        if ds["kind"] != "simulated" or not sim:
            continue
        key = f"datasets.{name}"
        plant = sim["plant_pooling"]
        if plant["mode"] != "grid":
            problems.append(
                f"config key {key}.simulation.plant_pooling.mode: {plant['mode']!r}; expected 'grid' (the latents "
                "are drawn from the cells of the plant's grid map)"
            )
        if plant["grid"] % sim["latent_grid"]:
            divisors = [d for d in range(1, plant["grid"] + 1) if plant["grid"] % d == 0]
            problems.append(
                f"config key {key}.simulation.latent_grid: {sim['latent_grid']} does not divide "
                f"plant_pooling.grid {plant['grid']}; choose one of {divisors}"
            )
        for level, names in ds["roi_levels"].items():
            unknown = [r for r in names if r not in SIM_ROIS]
            if unknown:
                problems.append(f"config key {key}.roi_levels.{level}: {unknown} not simulated ROIs; they are {rois}")
        if ds["reference_roi"] not in SIM_ROIS:
            problems.append(
                f"config key {key}.reference_roi: {ds['reference_roi']!r} is not a simulated ROI; they are {rois}"
            )
        first, last = _epoch(sim["meg"])
        epoch = f"the simulated epoch ({first:g} to {last:g} s: simulation.meg tmin, n_times, sfreq)"
        times = first + np.arange(sim["meg"]["n_times"]) / sim["meg"]["sfreq"]
        for level, (start, end) in ds["meg_windows"].items():
            if start < end and not ((times >= start) & (times <= end)).any():
                problems.append(
                    f"config key {key}.meg_windows.{level}: {[start, end]} holds no sample of {epoch}; "
                    "choose a window inside it"
                )
        for window in ("forward_window", "backward_window"):
            start, end = sim["meg"][window]
            if start < end and (start < first - 1e-9 or end > last + 1e-9):
                problems.append(
                    f"config key {key}.simulation.meg.{window}: {[start, end]} must lie within {epoch} (the planted "
                    "latencies fall in it)"
                )
    return problems


def _check_sensor_groups(config: dict) -> list[str]:
    """Every dataset's sensor groups name a known set or compile as regular expressions."""
    from .brain.sensors import check_sensor_groups

    return [
        p
        for name, ds in config["datasets"].items()
        for p in check_sensor_groups(ds["sensor_groups"], f"datasets.{name}.sensor_groups")
    ]


def _check_tmax_window(config: dict) -> list[str]:
    """hierarchy.tmax_window is [start, end] with start < end where both are given."""
    start, end = config["hierarchy"]["tmax_window"]
    if start is not None and end is not None and not start < end:
        return [
            f"config key hierarchy.tmax_window: {[start, end]} must be [start, end] with start < end "
            "(null for the epoch's first or last sample)"
        ]
    return []


def _check_calibration(config: dict) -> list[str]:
    """Calibration draws its subjects from a simulated dataset: one must exist."""
    if not config["calibration"]["enabled"] or any(ds["kind"] == "simulated" for ds in config["datasets"].values()):
        return []
    return [
        "config key calibration.enabled: true, but no dataset is of kind simulated (calibration draws its subjects "
        "from a simulated dataset's source model); add one (as in config/calibration.yaml) or set "
        "calibration.enabled: false"
    ]


def _check_loss_files(config: dict) -> list[str]:
    """The files the losses name (a head checkpoint, text embeddings) exist; sensitivity losses are distinct."""
    from .features.weights import LOSS_FILES, WeightFileError, loss_files, resolve_checkpoint

    entries = [(f"models.{alias}.loss_params", m["loss"], m["loss_params"]) for alias, m in config["models"].items()]
    losses = config["sensitivity"]["loss"]
    for i, item in enumerate(losses):
        if isinstance(item, dict):
            entries.append((f"sensitivity.loss.{i}.params", item["name"], item.get("params") or {}))
    problems = []
    for key, loss, params in entries:
        for name in LOSS_FILES.get(loss, ()):
            if not params.get(name):
                problems.append(f"config key {key}.{name}: loss {loss!r} needs this file (docs/features.md, 'Losses')")
        for name, value in loss_files(loss, params).items():
            try:
                resolve_checkpoint(value, f"config key {key}.{name}")
            except WeightFileError as err:
                problems.append(str(err))
    names = [item if isinstance(item, str) else item["name"] for item in losses]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        problems.append(
            f"config key sensitivity.loss: {twice} listed more than once (each loss names one variant, loss_<name>); "
            "keep one entry per loss"
        )
    return problems


# the strict cross-field checks, each config -> problems; run by _check_cross_fields after the schema
STRICT_CHECKS = (
    _check_names,
    _check_folds,
    _check_penalty_grids,
    _check_layers,
    _check_projections,
    _check_simulations,
    _check_sensor_groups,
    _check_tmax_window,
    _check_calibration,
    _check_loss_files,
)
