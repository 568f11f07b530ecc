"""Strict reading of config files: the same checks for brainprop's CLI and Snakemake's `--configfile`.

PyYAML accepts two things that silently change a config: a key written twice (the later entry
replaces the earlier, so a model or dataset disappears) and an unquoted key that YAML 1.1 reads
as a boolean, number, null or date (`on:` is the key True, `1:` the key 1). `read_config_file`
rejects both, naming the file, the line of each entry and the key path, and turns a missing or
unreadable file, invalid YAML and a top level that is not a mapping into one-line messages.

Snakemake reads `--configfile` with its own loader before the Snakefile runs; the workflow
passes the files it was given (`workflow.configfiles`) to `check_config_files`, so the same
mistakes stop `snakemake` with the same message.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml

from .config import ConfigError

__all__ = ["check_config_files", "read_config_file"]

# YAML tag of a key that is not a string -> how to name what YAML made of it ({} is the key as written)
_KEY_TYPES = {
    "tag:yaml.org,2002:bool": "the boolean {}",
    "tag:yaml.org,2002:int": "the integer {}",
    "tag:yaml.org,2002:float": "the number {}",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "the date {}",
    "tag:yaml.org,2002:binary": "binary data",
    "tag:yaml.org,2002:seq": "a list",
    "tag:yaml.org,2002:map": "a mapping",
    "tag:yaml.org,2002:set": "a set",
}
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_DATE = "tag:yaml.org,2002:timestamp"

# what the top level of a config file turned out to be, when it is not a mapping
_TOP_LEVEL = {list: "a list", str: "a single value", int: "a number", float: "a number", bool: "a boolean"}


def _line(node: yaml.Node) -> int:
    """1-based line of a node in its file."""
    return node.start_mark.line + 1


def _join(path: str, key: object) -> str:
    """The key path of `key` under `path` (dotted, as config messages write it)."""
    return f"{path}.{key}" if path else str(key)


def _key_problem(key: yaml.Node, path: str) -> str:
    """The message for a mapping key that YAML did not read as a string."""
    where = f"under {path}" if path else "at the top level"
    if not isinstance(key, yaml.ScalarNode):
        what = _KEY_TYPES.get(key.tag, key.tag).format("")
        return f"line {_line(key)}: a key {where} is {what}; config keys must be names (strings)"
    value = yaml.safe_load(key.value) if key.tag in _KEY_TYPES else key.value
    what = _KEY_TYPES.get(key.tag, "a " + key.tag + " value").format(value if key.tag != _DATE else key.value)
    return (
        f"line {_line(key)}: key {key.value!r} {where} is read by YAML as {what}, not as a name; "
        f"quote it ('{key.value}':) to use it as a name"
    )


def _node_problems(node: yaml.Node | None, path: str = "", seen: set[int] | None = None) -> Iterator[str]:
    """Duplicate keys and non-string keys of every mapping under `node`, with lines and key paths."""
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:  # an alias visits its anchor's node again (or loops)
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _node_problems(item, _join(path, i), seen)
    if not isinstance(node, yaml.MappingNode):
        return
    first: dict[str, yaml.Node] = {}
    for key, value in node.value:
        if key.tag == _MERGE:  # `<<: *defaults`: keys given beside it override the merged ones by design
            yield from _node_problems(value, path, seen)
            continue
        if key.tag != _STR or not isinstance(key, yaml.ScalarNode):
            yield _key_problem(key, path)
            continue
        name = _join(path, key.value)
        if key.value in first:
            yield (
                f"line {_line(key)}: duplicate key {name} (first on line {_line(first[key.value])}); "
                "YAML would keep only the later entry; remove or rename one of them"
            )
        else:
            first[key.value] = key
        yield from _node_problems(value, name, seen)


def _read_text(path: Path) -> str:
    """The file's text, or a ConfigError naming the path and why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (working directory {os.getcwd()}); check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file; give the path of a YAML file") from None
    except PermissionError:
        raise ConfigError(f"{path}: config file not readable (permission denied); check its permissions") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file (byte {err.start} is not UTF-8); give a YAML config file") from None
    except OSError as err:
        raise ConfigError(f"{path}: config file cannot be read ({err.strerror})") from None


def read_config_file(path: str | os.PathLike) -> dict:
    """Read one YAML (or JSON) config file strictly; a ConfigError names the file, line and key."""
    path = Path(path)
    loader = yaml.SafeLoader(_read_text(path))
    try:
        node = loader.get_single_node()
        problems = list(_node_problems(node))
        if problems:
            raise ConfigError(f"{path}: invalid config file:\n  " + "\n  ".join(problems))
        config = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = "; ".join(str(p) for p in (err.context, err.problem) if p)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    finally:
        loader.dispose()
    if not isinstance(config, dict):
        found = "an empty file" if config is None else _TOP_LEVEL.get(type(config), type(config).__name__)
        raise ConfigError(
            f"{path}: expected a mapping of config keys (run:, models:, ...) at the top level; found {found}"
        )
    return config


def check_config_files(paths: Iterable[str | os.PathLike]) -> None:
    """Read every config file strictly (Snakemake's `workflow.configfiles`); one ConfigError lists them all."""
    problems = []
    for path in dict.fromkeys(str(p) for p in paths):  # a file given twice is reported once
        try:
            read_config_file(path)
        except ConfigError as err:
            problems.append(str(err))
    if problems:
        raise ConfigError("\n".join(problems))
