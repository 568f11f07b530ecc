"""Command line: `brainprop validate-results` and `brainprop validate-config`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _validate_results(args: argparse.Namespace) -> int:
    from .contract import validate_results

    tables = Path(args.path)
    if (tables / "tables").is_dir():
        tables = tables / "tables"
    problems = validate_results(tables)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{tables}: all tables follow the results contract")
    return 1 if problems else 0


def _validate_config(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config

    try:
        load_config(args.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"{args.config}: valid")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the brainprop command line."""
    parser = argparse.ArgumentParser(prog="brainprop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate-results", help="check a run's tables against the results contract")
    p.add_argument("path", help="results/{run} or its tables/ folder")
    p.set_defaults(func=_validate_results)
    p = sub.add_parser("validate-config", help="check a config file against the schema")
    p.add_argument("config", help="path to a config YAML file")
    p.set_defaults(func=_validate_config)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
