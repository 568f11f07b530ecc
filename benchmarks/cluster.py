"""Benchmark: many small encode jobs on SLURM, one SLURM job each vs grouped vs job arrays.

Needs a SLURM (`bash tests/cluster/start_slurm.sh`). Runs the stages before encoding of
tests/configs/tiny.yaml once through profiles/slurm, then, for each submission mode, reruns
every encode job of one subject's hierarchy (8 fits, `--forcerun encode`, plus its one
hierarchy job) and records the wall time and the number of `sbatch` submissions:
  single: one SLURM job per encode job (encode taken out of the profile's group),
  grouped: the profile's default (`group-components: encode=25`, one SLURM job here),
  array: `--slurm-array-jobs encode` without grouping.
Writes results/benchmarks/cluster.json and prints it.
Usage: python benchmarks/cluster.py [--modes single,grouped,array]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
TARGET = "results/tiny/hierarchy/sim_backprop/resnet18/sub-01/hierarchy.parquet"
BASE = [
    "--workflow-profile",
    str(ROOT / "profiles" / "slurm"),
    "--profile",
    str(ROOT / "tests" / "cluster" / "profile"),
    "--default-resources",
    "slurm_partition=debug",
    "--cores",
    "2",
]
# `--groups` replaces the profile's list: naming a rule outside the target leaves encode ungrouped.
UNGROUPED = ["--groups", "truth=ungrouped"]
MODES = {
    "single": UNGROUPED,
    "grouped": [],
    "array": [*UNGROUPED, "--slurm-array-jobs", "encode"],
}


def run(workdir: Path, *args: str) -> tuple[float, str]:
    """Wall time and output of one Snakemake run through the SLURM profile."""
    cmd = [
        SNAKEMAKE,
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(TINY),
        *BASE,
        *args,
        "--",
        TARGET,
    ]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed, done.stdout + done.stderr


def main() -> None:
    """Time each submission mode on the same encode jobs and write results/benchmarks/cluster.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of single,grouped,array")
    args = parser.parse_args()
    result: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        run(workdir, "--omit-from", "encode")
        for mode in args.modes.split(","):
            elapsed, out = run(workdir, "--forcerun", "encode", *MODES[mode])
            fits = len(re.findall(r"Finished jobid: \d+ \(Rule: encode\)", out))
            result[mode] = {
                "wall_s": elapsed,
                "encode_jobs": fits,
                "sbatch_submissions": len(re.findall(r"submitted with SLURM jobid", out)),
            }
    if "single" in result:
        for stats in result.values():
            stats["wall_ratio_to_single"] = stats["wall_s"] / result["single"]["wall_s"]
    out = ROOT / "results" / "benchmarks" / "cluster.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
