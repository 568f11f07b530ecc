"""Benchmark: how fast Snakemake plans brainprop at full scale, against a trivial Snakefile.

1. dry_run_full_s: `snakemake -n` of the full study: the 18-model zoo (config/models.yaml,
   22 layers, act and grad) on an NSD-sized fMRI dataset (8 subjects) and a THINGS-MEG-sized
   dataset (4 subjects). The real loaders are another stage's work, so both datasets are
   *simulated* datasets of the same sizes (subjects, image counts); the DAG has the same
   encode fan-out (dataset x model x signal x layer x subject). The `layers` checkpoint outputs
   are written first (on the meta device, as the rule does) so the dry run sees every job.
   Baseline: a trivial Snakefile (one rule, `touch`) with the same number of jobs, timed in
   the same run; the goal is a ratio <= 2 and an absolute time under 60 s on 2 cores.
2. noop_rerun_demo_s: a no-change rerun of the demo (config/config.yaml) deciding "Nothing to
   be done". The demo's outputs are placeholders: `layers` runs for real, every other output is
   created empty and then recorded as done by `snakemake --touch` (metadata included), which is
   all a no-change rerun reads. Goal: under 20 s.
Writes results/benchmarks/workflow.json and prints it.
Usage: python benchmarks/workflow.py [--quick] (--quick: 4 models instead of 18)
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

import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
# Subjects and image counts of the real datasets (docs: NSD shared + per-subject images; THINGS-MEG).
NSD = {"subjects": 8, "n_images": 10000}
THINGS_MEG = {"subjects": 4, "n_images": 22448}


def full_config(n_models: int | None = None) -> dict:
    """The full study's config: the model zoo on NSD- and THINGS-MEG-sized simulated datasets."""
    zoo = yaml.safe_load((ROOT / "config" / "models.yaml").read_text())["models"]
    models = dict(list(zoo.items())[:n_models]) if n_models else zoo
    source = next(a for a, m in models.items() if m.get("loss", "cross_entropy") == "cross_entropy")

    def dataset(imageset: str, n_subjects: int) -> dict:
        return {
            "kind": "simulated", "imageset": imageset,
            "subjects": [f"sub-{i:02d}" for i in range(1, n_subjects + 1)],
            "roi_levels": {"early": ["V1", "V2", "V3"], "high": ["FFA", "PPA"]},
            "meg_windows": {"forward": [0.0, 0.45], "late": [0.45, 0.9]},
            "simulation": {"scenario": "backprop", "source_model": source},
        }

    return {
        "run": "full", "seed": 0, "device": "cpu",
        "stimuli": {"nsd": {"kind": "demo", "n_images": NSD["n_images"]},
                    "things": {"kind": "demo", "n_images": THINGS_MEG["n_images"]}},
        "models": models,
        "datasets": {"nsd": dataset("nsd", NSD["subjects"]), "things_meg": dataset("things", THINGS_MEG["subjects"])},
        "figures": {"formats": ["png"]},
    }


def write_layers(config: dict, workdir: Path) -> None:
    """The `layers` outputs of every model and its control variants, as workflow/scripts/layers.py writes them."""
    from brainprop.config import validate_config
    from brainprop.features.extract import resolve_layers
    from brainprop.io import write_table
    from brainprop.variants import model_variants

    config = validate_config(json.loads(json.dumps(config)), check_models=False)
    for alias, m in model_variants(config["models"], config["sensitivity"]).items():
        layers = resolve_layers(m["timm_name"], m["layers"], m["pooling"], m["input_size"], m["timm_kwargs"])
        write_table(workdir / f"results/{config['run']}/features/{alias}/layers.parquet", layers,
                    {"timm_name": m["timm_name"]})


def timed(cmd: list[str], cwd: Path | None = None) -> tuple[float, str]:
    """Wall time (s) and output of a command that must succeed."""
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed, done.stdout + done.stderr


def job_total(output: str) -> int:
    """The `total` line of a dry run's job stats."""
    return int(re.search(r"^total\s+(\d+)", output, flags=re.MULTILINE).group(1))


TRIVIAL = """\
N = {n}
rule all:
    input: expand("out/{{i}}.txt", i=range(N - 1))
rule job:
    output: "out/{{i}}.txt"
    shell: "touch {{output}}"
"""


def dry_run_full(n_models: int | None) -> dict:
    """Dry run of the full study against a trivial Snakefile with as many jobs."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = full_config(n_models)
        (tmp / "full.yaml").write_text(yaml.safe_dump(config))
        write_layers(config, tmp)
        base = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp), "--configfile",
                str(tmp / "full.yaml"), "--cores", "2", "--dry-run", "--quiet", "rules"]
        full_s, out = timed(base)
        n_jobs = job_total(out)
        trivial = tmp / "trivial"
        trivial.mkdir()
        (trivial / "Snakefile").write_text(TRIVIAL.format(n=n_jobs))
        trivial_s, out = timed([SNAKEMAKE, "-s", str(trivial / "Snakefile"), "--directory", str(trivial), "--cores",
                                "2", "--dry-run", "--quiet", "rules"])
        assert job_total(out) == n_jobs
    return {"dry_run_full_s": full_s, "dry_run_trivial_s": trivial_s, "dry_run_ratio": full_s / trivial_s,
            "n_jobs_full": n_jobs, "n_models": len(config["models"])}


def noop_rerun_demo() -> dict:
    """A no-change rerun of the demo (placeholder outputs recorded as done by --touch)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp), "--cores", "2",
                "--configfile", str(ROOT / "config" / "config.yaml")]
        timed([*base, "--until", "layers"])
        _, summary = timed([*base, "--summary"])
        for line in summary.splitlines()[1:]:
            fields = line.split("\t")
            if len(fields) < 3 or not fields[0].startswith("results/"):
                continue
            path = tmp / fields[0]
            if fields[2] in {"extract", "plant"}:  # directory() outputs
                path.mkdir(parents=True, exist_ok=True)
            elif not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
        timed([*base, "--touch"])
        noop_s, out = timed(base)
        if "Nothing to be done" not in out:
            raise RuntimeError(f"the demo rerun was not a no-op:\n{out[-3000:]}")
    from brainprop.config import load_config
    from brainprop.plan import plan_run

    return {"noop_rerun_demo_s": noop_s, "n_jobs_demo": plan_run(load_config(ROOT / "config" / "config.yaml")).total_jobs}


def scontrol_wait_s() -> float | None:
    """Seconds `scontrol show config` takes here (None without SLURM's tools).

    The SLURM executor plugin runs it at every Snakemake start, with a 10 s timeout: where the
    tools are installed but no controller answers, every timing above includes that wait.
    """
    import shutil

    if shutil.which("scontrol") is None:
        return None
    start = time.perf_counter()
    subprocess.run(["scontrol", "show", "config"], capture_output=True, timeout=30, check=False)
    return time.perf_counter() - start


def main() -> None:
    """Run both measurements and write results/benchmarks/workflow.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 models instead of the 18-model zoo")
    args = parser.parse_args()
    full = dry_run_full(4 if args.quick else None)
    print(json.dumps(full), flush=True)
    result = {**full, **noop_rerun_demo(), "scontrol_wait_s": scontrol_wait_s(), "cpu_count": os.cpu_count(),
              "load_average_1min": os.getloadavg()[0],
              "datasets": "simulated, NSD-sized (8 subjects) and THINGS-MEG-sized (4)"}
    out = ROOT / "results" / "benchmarks" / "workflow.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
