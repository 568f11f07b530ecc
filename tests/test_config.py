"""Config validation: defaults are filled, and every kind of bad config stops with a message naming it."""

import copy
from pathlib import Path

import pytest
import yaml

from brainprop.config import ConfigError, alphas, load_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def _check(config: dict, *fragments: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_demo_config_is_valid_and_defaults_are_filled(demo):
    config = validate_config(copy.deepcopy(demo))
    assert config["encoding"]["folds"] == 5
    assert config["models"]["mobilenet_v2"]["weights"] == "pretrained"
    sim = config["datasets"]["sim_backprop"]["simulation"]
    assert sim["plant_pooling"]["grid"] == 4
    assert alphas(config["encoding"])[0] == 1.0 and alphas(config["encoding"])[-1] == 1e8


def _reversed_keys(value, path=()):
    if isinstance(value, dict):
        return {k: _reversed_keys(value[k], (*path, k)) for k in reversed(list(value))}
    return value


def test_key_order_in_the_file_does_not_change_the_config(demo):
    # Rule params come from the config and Snakemake compares them as written: a reordered
    # YAML file must give the same params (no rerun), except where the order is the user's choice.
    plain = validate_config(copy.deepcopy(demo))
    shuffled = validate_config(_reversed_keys(copy.deepcopy(demo)))
    as_text = lambda c: repr({k: c[k] for k in sorted(c)})  # noqa: E731
    user_ordered = ("stimuli", "models", "datasets")
    assert list(shuffled["models"]) == list(reversed(list(plain["models"])))
    assert list(shuffled["datasets"]["sim_backprop"]["roi_levels"]) == ["high", "intermediate", "early"]
    for key in plain:
        if key not in user_ordered:
            assert repr(plain[key]) == repr(shuffled[key]), key
    for alias, entry in plain["models"].items():
        assert repr(entry) == repr(shuffled["models"][alias])
    assert as_text(plain) != as_text(shuffled)  # only because of the user-ordered maps
    assert list(plain["models"]["efficientnet_lite0"]["pooling"]) == ["grid", "mode", "projection"]


def test_tiny_test_config_is_valid():
    load_config(ROOT / "tests" / "configs" / "tiny.yaml")


def test_unknown_top_level_key_is_named_with_a_suggestion(demo):
    bad = copy.deepcopy(demo)
    bad["encodnig"] = {}
    _check(bad, "unknown key(s) ['encodnig']", "did you mean 'encoding'")


def test_unknown_nested_key_is_named_with_its_path(demo):
    bad = copy.deepcopy(demo)
    bad["models"]["efficientnet_lite0"]["poolng"] = {"mode": "grid"}
    _check(bad, "models.efficientnet_lite0", "['poolng']", "did you mean 'pooling'")


def test_bad_enum_value_lists_allowed_values(demo):
    bad = copy.deepcopy(demo)
    bad["models"]["efficientnet_lite0"]["pooling"]["mode"] = "gird"
    _check(bad, "models.efficientnet_lite0.pooling.mode", "'gird' is not allowed", "cls_mean")


def test_wrong_type_names_key(demo):
    bad = copy.deepcopy(demo)
    bad["encoding"]["folds"] = "five"
    _check(bad, "encoding.folds", "'five' is not of type 'integer'")


def test_missing_required_key(demo):
    bad = copy.deepcopy(demo)
    del bad["datasets"]["sim_forward"]["subjects"]
    _check(bad, "datasets.sim_forward", "'subjects' is a required property")


def test_run_may_not_be_named_benchmarks(demo):
    bad = copy.deepcopy(demo)
    bad["run"] = "benchmarks"
    _check(bad, "config key run")


def test_unknown_imageset_reference(demo):
    bad = copy.deepcopy(demo)
    bad["datasets"]["sim_forward"]["imageset"] = "things"
    _check(bad, "datasets.sim_forward.imageset", "'things' is not an image set", "['demo']")


def test_unknown_source_model(demo):
    bad = copy.deepcopy(demo)
    bad["datasets"]["sim_backprop"]["simulation"]["source_model"] = "resnet50"
    _check(bad, "simulation.source_model", "'resnet50' is not a model alias")


def test_missing_checkpoint_file(demo, tmp_path):
    bad = copy.deepcopy(demo)
    bad["models"]["efficientnet_lite0"]["weights"] = str(tmp_path / "nope.pth")
    _check(bad, "models.efficientnet_lite0.weights", "nope.pth", "checkpoint")


def test_unknown_timm_name_suggests_nearest(demo):
    bad = copy.deepcopy(demo)
    bad["models"]["efficientnet_lite0"]["name"] = "tf_efficientnet_lite_0"
    _check(
        bad, "models.efficientnet_lite0.name", "'tf_efficientnet_lite_0' is not a timm model", "tf_efficientnet_lite0"
    )


def test_timm_names_are_cached_per_timm_version(monkeypatch, tmp_path):
    from importlib.metadata import version

    import timm

    from brainprop.config import timm_model_names

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    names = timm_model_names()
    assert names == set(timm.list_models())
    cache = tmp_path / "brainprop" / f"timm-{version('timm')}-models.txt"
    assert set(cache.read_text().split()) == names
    cache.write_text("resnet18\nmade_up_net\n")  # the cache, not timm, answers the next call
    assert timm_model_names() == {"resnet18", "made_up_net"}


def test_reversed_window(demo):
    bad = copy.deepcopy(demo)
    bad["datasets"]["sim_backprop"]["meg_windows"]["late"] = [1.0, 0.35]
    _check(bad, "meg_windows.late", "start < end")


def test_not_yaml_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)


# ---------------------------------------------------------------- bounds on the integers the code passes on


def _set(config: dict, path: str, value) -> dict:
    """`config` with the dotted key `path` set to `value` (missing mappings created)."""
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return config


def _schema_integers(node, path: str = "") -> list[tuple[str, dict]]:
    """(key path, schema) of every integer in the schema, `$defs` resolved by their own names."""
    out = []
    if isinstance(node, dict):
        if "integer" in (node.get("type") if isinstance(node.get("type"), list) else [node.get("type")]):
            out.append((path, node))
        for key, sub in node.items():
            if key not in ("default", "description", "$comment"):
                out.extend(_schema_integers(sub, f"{path}.{key}" if path else key))
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            out.extend(_schema_integers(sub, f"{path}[{i}]"))
    return out


def test_every_integer_of_the_schema_has_both_bounds():
    # A number passed to numpy, torch or scikit-learn beyond what it takes failed at job time
    # (a seed of 2**64 validated, then KFold refused it in the folds job).
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    unbounded = [path for path, node in _schema_integers(schema) if "minimum" not in node or "maximum" not in node]
    assert not unbounded, unbounded


# (key path in the demo config, the smallest value above the bound, the allowed range in the message)
UPPER_BOUNDS = [
    ("seed", 2**32, "[0, 4294967295]"),
    ("stimuli.demo.n_images", 100_001, "[10, 100000]"),
    ("stimuli.demo.size", 2049, "[16, 2048]"),
    ("models.efficientnet_lite0.input_size", 2049, "[16, 2048]"),
    ("models.efficientnet_lite0.layers.n", 101, "[2, 100]"),
    ("models.efficientnet_lite0.batch_size", 65_537, "[1, 65536]"),
    ("models.efficientnet_lite0.pooling.grid", 17, "[1, 16]"),
    ("models.efficientnet_lite0.pooling.projection.dim", 65_537, "[1, 65536]"),
    ("models.efficientnet_lite0.pooling.projection.above", 2**31, "[0, 2147483647]"),
    ("models.efficientnet_lite0.pooling.projection.seed", 2**32, "[0, 4294967295]"),
    ("extraction.shard_size", 2**20 + 1, "[1, 1048576]"),
    ("extraction.workers", 257, "[0, 256]"),
    ("datasets.sim_backprop.simulation.plant_pooling.grid", 17, "[1, 16]"),
    ("datasets.sim_backprop.simulation.vertices_per_roi", 10_001, "[1, 10000]"),
    ("datasets.sim_backprop.simulation.latent_dims", 1001, "[1, 1000]"),
    ("datasets.sim_backprop.simulation.latent_grid", 17, "[1, 16]"),
    ("datasets.sim_backprop.simulation.shared_components", 1001, "[0, 1000]"),
    ("datasets.sim_backprop.simulation.n_repetitions", 101, "[2, 100]"),
    ("datasets.sim_backprop.simulation.meg.n_times", 100_001, "[40, 100000]"),
    ("encoding.folds", 101, "[2, 100]"),
    ("encoding.alphas.n", 101, "[1, 100]"),
    ("joint.alphas.n", 31, "[1, 30]"),
    ("calibration.n_seeds", 100_001, "[1, 100000]"),
    ("calibration.n_sensors", 276, "[3, 275]"),
    ("calibration.n_permutations", 100_001, "[19, 100000]"),
    ("hierarchy.min_count", 101, "[2, 100]"),
    ("stats.n_permutations", 100_001, "[100, 100000]"),
    ("stats.n_boot", 100_001, "[100, 100000]"),
]


@pytest.mark.parametrize("path, value, allowed", UPPER_BOUNDS, ids=[p for p, _, _ in UPPER_BOUNDS])
def test_integer_beyond_its_bound_names_key_and_range(demo, path, value, allowed):
    _check(_set(copy.deepcopy(demo), path, value), f"config key {path}: {value} is out of range", f"in {allowed}")


def test_list_items_have_bounds_too(demo):
    bad = _set(copy.deepcopy(demo), "calibration.n_subjects", [4, 1001])
    _check(bad, "config key calibration.n_subjects.1: 1001 is out of range", "in [2, 1000]")
    bad = copy.deepcopy(demo)
    bad["datasets"]["n"] = {"kind": "nsd", "root": "/x", "imageset": "nsd", "subjects": ["subj01"]}
    bad["stimuli"]["nsd"] = {"kind": "dataset", "dataset": "n"}
    bad["datasets"]["n"]["nsd"] = {"sessions": [1, 41]}
    _check(bad, "config key datasets.n.nsd.sessions.1: 41 is out of range", "in [1, 40]")


def test_seed_beyond_2_63_fails_at_validation_with_the_reason(demo):
    bad = _set(copy.deepcopy(demo), "seed", 2**63 + 1)
    _check(bad, f"config key seed: {2**63 + 1} is out of range", "[0, 4294967295]", "random_state")


def test_lower_bound_names_the_range_too(demo):
    _check(_set(copy.deepcopy(demo), "encoding.alphas.n", 0), "encoding.alphas.n: 0 is out of range", "[1, 100]")
    _check(_set(copy.deepcopy(demo), "seed", -1), "config key seed: -1 is out of range", "[0, 4294967295]")


def test_batch_size_names_both_choices(demo):
    bad = _set(copy.deepcopy(demo), "models.efficientnet_lite0.batch_size", 10**6)
    _check(
        bad,
        "config key models.efficientnet_lite0.batch_size: 1000000 is out of range",
        "an integer in [1, 65536] or 'auto'",
    )
    bad = _set(copy.deepcopy(demo), "models.efficientnet_lite0.batch_size", "big")
    _check(
        bad,
        "config key models.efficientnet_lite0.batch_size: 'big' is not allowed",
        "an integer in [1, 65536] or 'auto'",
    )


def test_tmax_threshold_outside_0_1(demo):
    bad = _set(copy.deepcopy(demo), "sensitivity.tmax_threshold", [0.95, 1.5])
    _check(bad, "config key sensitivity.tmax_threshold.1: 1.5 is out of range", "expected a number in (0, 1]")
    _check(_set(copy.deepcopy(demo), "hierarchy.tmax_threshold", 0), "hierarchy.tmax_threshold: 0 is out of range")


# ---------------------------------------------------------------- cross-field checks before any job


def test_non_string_key_from_any_source_is_refused_with_a_hint(demo):
    # Snakemake's loader and `--config` hand over what YAML made of `on:` (True): it validated,
    # then sorting the aliases for the wildcard constraints crashed Snakemake.
    bad = copy.deepcopy(demo)
    bad["models"][True] = bad["models"].pop("mobilenet_v2")
    _check(bad, "config key models: key True is not a name", "on, yes or true", "quote it")
    bad = copy.deepcopy(demo)
    bad["stats"][1] = 5
    _check(bad, "config key stats: key 1 is not a name", "quote it")


def test_alias_with_the_variant_separator(demo):
    bad = copy.deepcopy(demo)
    bad["models"]["regnet__x"] = bad["models"].pop("mobilenet_v2")
    _check(bad, "config key models.regnet__x: '__' separates a model from its variants", "rename it")


def test_names_that_differ_only_in_case(demo):
    bad = copy.deepcopy(demo)
    bad["models"]["EfficientNet_Lite0"] = copy.deepcopy(bad["models"]["efficientnet_lite0"])
    _check(bad, "config key models: 'EfficientNet_Lite0' and 'efficientnet_lite0' differ only in case", "rename one")
    bad = copy.deepcopy(demo)
    bad["datasets"]["sim_forward"]["subjects"] = ["sub-01", "SUB-01"]
    _check(bad, "config key datasets.sim_forward.subjects: 'SUB-01' and 'sub-01' differ only in case")


def test_too_many_folds_for_the_demo_groups(demo):
    # The demo image set takes its images from 25 groups in turn (19 photographs, 6 textures);
    # grouped folds keep a group in one fold, so 30 folds failed in the folds job.
    bad = _set(copy.deepcopy(demo), "encoding.folds", 30)
    _check(
        bad,
        "config key encoding.folds: 30 folds",
        "image set 'demo'",
        "at most 25 groups",
        "set encoding.folds to at most 25",
        "encoding.group_folds: false",
    )
    small = _set(_set(copy.deepcopy(demo), "stimuli.demo.n_images", 12), "encoding.folds", 15)
    small["encoding"]["group_folds"] = False
    _check(small, "config key encoding.folds: 15 folds", "12 images", "set encoding.folds to at most 12")
    # each advised fix validates
    validate_config(_set(copy.deepcopy(bad), "encoding.folds", 25))
    validate_config(_set(copy.deepcopy(bad), "encoding.group_folds", False))
    validate_config(_set(small, "encoding.folds", 12))


def test_demo_group_count_is_what_make_demo_images_gives(demo_manifest, tmp_path):
    from brainprop.stimuli.demo import demo_group_count, make_demo_images

    assert demo_group_count(12) == demo_manifest[1]["group"].nunique() == 12
    assert demo_group_count(30) == make_demo_images(tmp_path, n_images=30, size=16)["group"].nunique() == 25


def test_folds_rule_names_the_key_and_the_fix():
    import numpy as np
    import pandas as pd

    from brainprop.encoding.folds import folds_table

    samples = pd.DataFrame({"image_id": [f"i{k}" for k in range(12)], "group": np.repeat(["a", "b", "c"], 4)})
    with pytest.raises(ValueError) as err:
        folds_table(samples, 5, 0, grouped=True)
    for fragment in ("encoding.folds", "5 folds", "3 groups", "at most 3", "encoding.group_folds: false"):
        assert fragment in str(err.value), str(err.value)


@pytest.mark.parametrize("key", ["encoding", "joint"])
def test_reversed_or_degenerate_penalty_grid(demo, key):
    bad = _set(copy.deepcopy(demo), f"{key}.alphas", {"log10_min": 8, "log10_max": 0, "n": 5})
    _check(bad, f"config key {key}.alphas: log10_min 8 > log10_max 0", "swap them")
    validate_config(_set(bad, f"{key}.alphas", {"log10_min": 0, "log10_max": 8, "n": 5}))
    flat = _set(copy.deepcopy(demo), f"{key}.alphas", {"log10_min": 3, "log10_max": 3, "n": 4})
    _check(flat, f"config key {key}.alphas: log10_min = log10_max = 3 with n 4", "n: 1")
    _check(_set(copy.deepcopy(demo), f"{key}.alphas.log10_max", 400), f"config key {key}.alphas.log10_max: 400")
    validate_config(_set(copy.deepcopy(demo), f"{key}.alphas", {"log10_min": 3, "log10_max": 3, "n": 1}))


@pytest.mark.parametrize("n", [22, 4])
def test_layers_given_both_ways(demo, n):
    # n 22 is the default, which hid the conflict: the names silently won.
    bad = _set(copy.deepcopy(demo), "models.efficientnet_lite0.layers", {"n": n, "names": ["layer1", "layer2"]})
    _check(bad, "config key models.efficientnet_lite0.layers: give either 'n'", "not both")


def test_layer_names_alone_get_no_count(demo):
    config = _set(copy.deepcopy(demo), "models.efficientnet_lite0.layers", {"names": ["layer1", "layer2"]})
    assert validate_config(config)["models"]["efficientnet_lite0"]["layers"] == {"names": ["layer1", "layer2"]}
    assert validate_config(copy.deepcopy(demo))["models"]["efficientnet_lite0"]["layers"] == {"n": 6}
    config = copy.deepcopy(demo)
    del config["models"]["efficientnet_lite0"]["layers"]
    assert validate_config(config)["models"]["efficientnet_lite0"]["layers"] == {"n": 22}
    bad = _set(copy.deepcopy(demo), "models.efficientnet_lite0.layers", {"names": ["layer1", "layer1"]})
    _check(bad, "models.efficientnet_lite0.layers.names", "non-unique")


def test_projection_that_would_enlarge(demo):
    bad = _set(copy.deepcopy(demo), "models.efficientnet_lite0.pooling.projection", {"dim": 20000, "above": 16384})
    _check(
        bad,
        "config key models.efficientnet_lite0.pooling.projection: dim 20000 > above 16384",
        "set dim to at most 16384",
    )
    validate_config(_set(bad, "models.efficientnet_lite0.pooling.projection.dim", 16384))


def test_plant_must_be_a_grid_that_the_latent_grid_divides(demo):
    bad = _set(copy.deepcopy(demo), "datasets.sim_backprop.simulation.plant_pooling", {"mode": "mean", "grid": 4})
    _check(bad, "config key datasets.sim_backprop.simulation.plant_pooling.mode: 'mean'", "expected 'grid'")
    bad = _set(copy.deepcopy(demo), "datasets.sim_backprop.simulation.latent_grid", 3)
    _check(bad, "config key datasets.sim_backprop.simulation.latent_grid: 3 does not divide", "[1, 2, 4]")
    validate_config(_set(bad, "datasets.sim_backprop.simulation.latent_grid", 4))


def test_simulated_roi_names(demo):
    bad = _set(copy.deepcopy(demo), "datasets.sim_backprop.roi_levels.high", ["FFA", "FFAA"])
    _check(bad, "config key datasets.sim_backprop.roi_levels.high: ['FFAA'] not simulated ROIs", "'PPA'")
    bad = _set(copy.deepcopy(demo), "datasets.sim_backprop.reference_roi", "V0")
    _check(bad, "config key datasets.sim_backprop.reference_roi: 'V0' is not a simulated ROI")


def test_simulated_meg_windows_lie_in_the_epoch(demo):
    bad = _set(copy.deepcopy(demo), "datasets.sim_backprop.meg_windows.late", [1.0, 1.2])
    _check(bad, "config key datasets.sim_backprop.meg_windows.late: [1.0, 1.2] holds no sample", "-0.1 to 0.875 s")
    bad = _set(copy.deepcopy(demo), "datasets.sim_backprop.simulation.meg.backward_window", [0.5, 1.5])
    _check(bad, "config key datasets.sim_backprop.simulation.meg.backward_window: [0.5, 1.5] must lie within")


def test_calibration_needs_a_simulated_dataset(demo):
    bad = _set(copy.deepcopy(demo), "calibration.enabled", True)
    bad["datasets"] = {"n": {"kind": "nsd", "root": "/x", "imageset": "nsd", "subjects": ["subj01"]}}
    bad["stimuli"]["nsd"] = {"kind": "dataset", "dataset": "n"}
    _check(bad, "config key calibration.enabled: true, but no dataset is of kind simulated")
