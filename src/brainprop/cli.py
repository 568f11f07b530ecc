"""Command line: `brainprop summary`, `validate-results`, `validate-config`, `check` and `plan`."""

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


def _summary(args: argparse.Namespace) -> int:
    import pandas as pd

    from .io import read_provenance
    from .stats.files import load_run_table
    from .stats.summary import format_summary

    tables = Path(args.path)
    if (tables / "tables").is_dir():
        tables = tables / "tables"
    path = tables / "tests.parquet"
    if not path.is_file():
        print(
            f"{path}: no tests table; expected results/<run> of a finished run (snakemake writes tables/tests.parquet)",
            file=sys.stderr,
        )
        return 1
    meta = read_provenance(path)
    alpha = args.alpha if args.alpha is not None else float(meta.get("alpha", 0.05))
    deviations = pd.DataFrame(meta["deviations"]) if "deviations" in meta else None
    print(format_summary(load_run_table(path, "tests"), alpha, deviations), end="")
    return 0


def _validate_config(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config

    try:
        load_config(args.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"{args.config}: valid")
    return 0


def _check(args: argparse.Namespace) -> int:
    from .brain.datasets import check_dataset, format_report
    from .config import ConfigError, load_config

    try:
        config = load_config(args.config, check_models=False)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    real = {name: ds for name, ds in config["datasets"].items() if ds["kind"] != "simulated"}
    if args.dataset:
        if args.dataset not in real:
            print(
                f"{args.dataset!r} is not a real dataset of {args.config}; real datasets: {sorted(real)}",
                file=sys.stderr,
            )
            return 1
        real = {args.dataset: real[args.dataset]}
    n_problems = 0
    for name, ds in real.items():
        report = check_dataset(ds)
        n_problems += int((report["status"] != "found").sum())
        print(f"== {name} ({ds['kind']}) at {ds['root']}\n{format_report(report)}")
    print(f"{n_problems} problems" if n_problems else "every file found as expected")
    return 1 if n_problems else 0


def _plan(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config
    from .plan import check_disk, format_plan, plan_run

    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    plan = plan_run(config)
    print(format_plan(plan))
    results = Path(args.results) / config["run"]
    ok, free = check_disk(plan.total_feature_bytes, results)
    needed_gb, free_gb = plan.total_feature_bytes / 1e9, free / 1e9
    if not ok:
        print(
            f"refusing to start: the features need {needed_gb:.2f} GB but the filesystem of {results} "
            f"has {free_gb:.2f} GB free; free space, point results/ at a larger disk, or reduce "
            "models, layers, pooling or n_images",
            file=sys.stderr,
        )
        return 2
    print(f"disk: {needed_gb:.2f} GB of features, {free_gb:.2f} GB free under {results}: ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the brainprop command line."""
    parser = argparse.ArgumentParser(prog="brainprop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "summary", help="each test's finding and the verdict per dataset × model × signal (README, 'The verdict line')"
    )
    p.add_argument("path", help="results/{run} or its tables/ folder")
    p.add_argument("--alpha", type=float, help="level of the verdict rules (default: the run's stats.alpha)")
    p.set_defaults(func=_summary)
    p = sub.add_parser("validate-results", help="check a run's tables against the results contract")
    p.add_argument("path", help="results/{run} or its tables/ folder")
    p.set_defaults(func=_validate_results)
    p = sub.add_parser("validate-config", help="check a config file against the schema")
    p.add_argument("config", help="path to a config YAML file")
    p.set_defaults(func=_validate_config)
    p = sub.add_parser("check", help="inspect the roots of a config's real datasets before running anything")
    p.add_argument("--config", required=True, help="path to a config YAML file")
    p.add_argument("--dataset", help="only this dataset (default: every real dataset)")
    p.set_defaults(func=_check)
    p = sub.add_parser("plan", help="jobs per rule and feature disk of a config; refuses when the disk is too small")
    p.add_argument("--config", required=True, help="path to a config YAML file")
    p.add_argument("--results", default="results", help="the results folder the run writes to (default: results)")
    p.set_defaults(func=_plan)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
