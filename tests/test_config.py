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
    assert config["models"]["resnet18"]["weights"] == "random"
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
    assert list(plain["models"]["resnet18"]["pooling"]) == ["grid", "mode", "projection"]


def test_tiny_test_config_is_valid():
    load_config(ROOT / "tests" / "configs" / "tiny.yaml")


def test_unknown_top_level_key_is_named_with_a_suggestion(demo):
    bad = copy.deepcopy(demo)
    bad["encodnig"] = {}
    _check(bad, "unknown key(s) ['encodnig']", "did you mean 'encoding'")


def test_unknown_nested_key_is_named_with_its_path(demo):
    bad = copy.deepcopy(demo)
    bad["models"]["resnet18"]["poolng"] = {"mode": "grid"}
    _check(bad, "models.resnet18", "['poolng']", "did you mean 'pooling'")


def test_bad_enum_value_lists_allowed_values(demo):
    bad = copy.deepcopy(demo)
    bad["models"]["resnet18"]["pooling"]["mode"] = "gird"
    _check(bad, "models.resnet18.pooling.mode", "'gird' is not allowed", "cls_mean")


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
    bad["models"]["resnet18"]["weights"] = str(tmp_path / "nope.pth")
    _check(bad, "models.resnet18.weights", "nope.pth", "checkpoint")


def test_unknown_timm_name_suggests_nearest(demo):
    bad = copy.deepcopy(demo)
    bad["models"]["resnet18"]["timm_name"] = "resnet_18"
    _check(bad, "models.resnet18.timm_name", "'resnet_18' is not a timm model", "resnet18")


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
