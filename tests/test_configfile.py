"""Strict config files: duplicate keys, keys YAML reads as non-strings, missing files, in the CLI and in Snakemake."""

import os
from pathlib import Path

import pytest
from conftest import snakemake

from brainprop.cli import main
from brainprop.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = (ROOT / "tests" / "configs" / "tiny.yaml").read_text()


def _file(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _fails(path: Path, *fragments: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path, check_models=False)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)
    return str(err.value)


def _line_of(text: str, fragment: str, start: int = 0) -> int:
    """1-based line of the first line containing `fragment`, after line `start`."""
    lines = text.splitlines()
    return next(i + 1 for i in range(start, len(lines)) if fragment in lines[i])


def test_tiny_config_reads_as_before(tmp_path):
    assert load_config(_file(tmp_path, TINY), check_models=False)["models"]["resnet18"]["layers"] == {"n": 4}


def test_duplicate_top_level_key_names_both_lines(tmp_path):
    text = TINY.replace("seed: 0\n", "seed: 0\nseed: 1\n")
    first = _line_of(text, "seed: 0")
    _fails(_file(tmp_path, text), "c.yaml", f"line {first + 1}: duplicate key seed (first on line {first})")


def test_duplicate_model_alias_names_its_path(tmp_path):
    # A second `resnet18:` entry silently replaced the first: the model's settings changed unseen.
    second = "  resnet18:\n    timm_name: resnet18\n    layers: {n: 2}\n"
    text = TINY.replace("datasets:\n", second + "datasets:\n")
    first = _line_of(text, "  resnet18:")
    again = _line_of(text, "  resnet18:", first)
    _fails(_file(tmp_path, text), f"line {again}: duplicate key models.resnet18 (first on line {first})", "remove")


def test_duplicate_keys_deep_in_a_list_are_found(tmp_path):
    text = TINY.replace("    subjects: [sub-01, sub-02, sub-03]\n", "    subjects: [sub-01]\n    subjects: [sub-02]\n")
    _fails(_file(tmp_path, text), "duplicate key datasets.sim_backprop.subjects")


NON_STRING_KEYS = [
    ("on", "the boolean True"),
    ("yes", "the boolean True"),
    ("no", "the boolean False"),
    ("off", "the boolean False"),
    ("1", "the integer 1"),
    ("null", "null"),
]


@pytest.mark.parametrize("key, read_as", NON_STRING_KEYS)
def test_key_yaml_reads_as_a_non_string_is_refused_with_a_hint_to_quote(tmp_path, key, read_as):
    text = TINY.replace("  resnet18:\n", f"  {key}:\n").replace("source_model: resnet18", f"source_model: '{key}'")
    line = _line_of(text, f"  {key}:")
    _fails(_file(tmp_path, text), f"line {line}: key '{key}' under models is read by YAML as {read_as}", f"'{key}':")


def test_quoted_alias_is_a_name(tmp_path):
    text = TINY.replace("  resnet18:\n", "  'on':\n").replace("source_model: resnet18", "source_model: 'on'")
    assert list(load_config(_file(tmp_path, text), check_models=False)["models"]) == ["on"]


def test_merge_keys_override_without_counting_as_duplicates(tmp_path):
    # `<<: *anchor` copies an entry and the keys beside it override the copy: that is not a duplicate.
    text = TINY.replace("  resnet18:\n", "  resnet18: &base\n").replace(
        "datasets:\n", "  resnet18_small:\n    <<: *base\n    layers: {n: 2}\ndatasets:\n"
    )
    models = load_config(_file(tmp_path, text), check_models=False)["models"]
    assert models["resnet18_small"]["layers"] == {"n": 2} and models["resnet18_small"]["input_size"] == 64


def test_missing_config_file_names_the_path(tmp_path):
    _fails(tmp_path / "nope.yaml", "nope.yaml: config file not found")


def test_folder_and_binary_file_are_named(tmp_path):
    _fails(tmp_path, "is a folder, not a config file")
    _fails(_file(tmp_path, "", "b.yaml"), "b.yaml: expected a mapping of config keys", "found an empty file")
    (tmp_path / "x.yaml").write_bytes(b"run: \xff\xfe\n")
    _fails(tmp_path / "x.yaml", "x.yaml: not a text file")


def test_invalid_yaml_names_line_and_column(tmp_path):
    _fails(_file(tmp_path, "run: demo\nmodels: [a\nseed: 0\n"), "c.yaml: not valid YAML at line 3, column 5")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_config_file_is_named(tmp_path):
    path = _file(tmp_path, TINY)
    path.chmod(0)
    _fails(path, "c.yaml: config file not readable (permission denied)")


@pytest.mark.parametrize(
    "argv", [["validate-config", "{}"], ["check", "--config", "{}"], ["plan", "--config", "{}"]], ids=lambda a: a[0]
)
def test_cli_reads_strictly_and_names_a_missing_file(tmp_path, capsys, argv):
    bad = _file(tmp_path, TINY.replace("seed: 0\n", "seed: 0\nseed: 1\n"))
    assert main([a.format(bad) for a in argv]) == 1
    assert "duplicate key seed" in capsys.readouterr().err
    assert main([a.format(tmp_path / "nope.yaml") for a in argv]) == 1
    err = capsys.readouterr().err
    assert "nope.yaml: config file not found" in err and "Traceback" not in err


def test_snakemake_stops_before_any_job_with_the_strict_message(tmp_path):
    # Snakemake reads --configfile with its own YAML loader, which keeps the later duplicate and
    # reads `on:` as True; the workflow re-reads the files it was given with brainprop's loader.
    dup = _file(tmp_path, TINY.replace("seed: 0\n", "seed: 0\nseed: 1\n"), "dup.yaml")
    alias = _file(tmp_path, "joint:\n  models: [resnet18]\n  on: 1\n", "alias.yaml")
    done = snakemake(tmp_path, dup, str(alias), "-n", timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-3000:]
    line = _line_of(dup.read_text(), "seed: 1")
    assert f"dup.yaml: invalid config file:\n  line {line}: duplicate key seed (first on line {line - 1})" in out
    assert "alias.yaml: invalid config file:\n  line 3: key 'on' under joint is read by YAML as the boolean True" in out
    assert "Traceback" not in out and not (tmp_path / "results").exists()
