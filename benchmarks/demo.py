"""The whole demo from a clean results folder: wall time, jobs, and CPU seconds per rule.

Runs `snakemake --cores N --configfile config/config.yaml` in a fresh working directory (no
results, no feature cache), then reads every job's Snakemake benchmark file
(`results/demo/benchmarks/<rule>/…`) and writes `results/benchmarks/demo.json`:

- `wall_s`: the Snakemake run, start to end (the README's quick-start figure);
- `jobs`: jobs run, and per rule;
- `cpu_s` and `wall_s` per rule: sums of the benchmark files' `cpu_time` and `s` columns.

Usage: python benchmarks/demo.py [--cores 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def rule_costs(benchmarks: Path) -> dict[str, dict[str, float]]:
    """Jobs, CPU seconds and wall seconds per rule from a run's Snakemake benchmark files."""
    costs: dict[str, dict[str, float]] = defaultdict(lambda: {"jobs": 0, "cpu_s": 0.0, "wall_s": 0.0})
    for path in sorted(benchmarks.rglob("*.tsv")):
        rule = path.relative_to(benchmarks).parts[0]
        with open(path) as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if not rows:
            continue
        costs[rule]["jobs"] += 1
        costs[rule]["cpu_s"] += float(rows[-1].get("cpu_time") or 0.0)
        costs[rule]["wall_s"] += float(rows[-1]["s"])
    return {rule: {k: round(v, 2) for k, v in c.items()} for rule, c in sorted(costs.items())}


def run_demo(workdir: Path, cores: int) -> dict:
    """Run the demo in `workdir` and return the figures of `results/benchmarks/demo.json`."""
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", str(cores)]
    cmd += ["--configfile", str(ROOT / "config" / "config.yaml")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the demo failed (exit {done.returncode}):\n{done.stderr[-5000:]}")
    rules = rule_costs(workdir / "results" / "demo" / "benchmarks")
    return {
        "wall_s": round(wall, 1),
        "cores": cores,
        "jobs": int(sum(r["jobs"] for r in rules.values())),
        "cpu_s": round(sum(r["cpu_s"] for r in rules.values()), 1),
        "rules": rules,
        "loadavg_before": os.getloadavg()[0],
    }


def main() -> None:
    """Run the demo once from a clean folder and write results/benchmarks/demo.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary folder)")
    args = parser.parse_args()
    if args.keep:
        if args.keep.exists():
            raise SystemExit(f"{args.keep} exists; the demo must start from a clean folder")
        args.keep.mkdir(parents=True)
        record = run_demo(args.keep, args.cores)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="brainprop-demo-"))
        try:
            record = run_demo(tmp, args.cores)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    out = ROOT / "results" / "benchmarks" / "demo.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "rules"}))
    for rule, cost in record["rules"].items():
        print(f"  {rule:28s} {cost['jobs']:5d} jobs  {cost['cpu_s']:9.1f} CPU s  {cost['wall_s']:9.1f} s")


if __name__ == "__main__":
    main()
