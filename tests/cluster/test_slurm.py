"""The tiny workflow on a real SLURM through profiles/slurm (snakemake-executor-plugin-slurm).

Run with `bash tests/cluster/start_slurm.sh && pytest -m cluster tests/cluster`. To stay within
minutes on two cores (every SLURM job starts its own Snakemake), the run targets one subject's
hierarchy of tests/configs/tiny.yaml: every stage up to it, 15 jobs. One run is submitted. Its
extract job asks for less memory than it needs, so SLURM kills it for exceeding its memory
request (a real out-of-memory failure the retry must absorb, with half the batch and more
memory), and the whole run (Snakemake and its SLURM jobs) is killed while the encode jobs run.
A second run resumes it. The results must equal a local run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from base64 import urlsafe_b64encode
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SNAKEMAKE, snakemake
from test_recovery import planned_jobs

pytestmark = pytest.mark.cluster

TINY = ROOT / "tests" / "configs" / "tiny.yaml"
# One encode job per subject and fit (the file says why it is a file).
SEPARATE_FITS = ROOT / "tests" / "cluster" / "separate_fits.yaml"
OUT = "results/tiny"
# The user profile as the README gives it, plus what only this account-less test cluster needs.
SLURM_ARGS = [
    "--workflow-profile",
    str(ROOT / "profiles" / "slurm"),
    "--profile",
    str(ROOT / "tests" / "cluster" / "profile"),
    "--default-resources",
    "slurm_partition=debug",
    "--cores",
    "2",
    "--slurm-keep-successful-logs",
]
# The extract job peaks at 1.05 to 1.5 GB under SLURM (torch, the model, one batch and the job's
# own Snakemake; measured in two runs). Asking 500 MB × attempt² gets attempt 1 killed by SLURM
# for exceeding its request (torch alone needs more) and gives attempt 2, with batch 15, 2,000 MB.
EXTRACT_MEM_MB = 500
OOM_ARGS = ["--set-resources", f"extract:mem_mb={EXTRACT_MEM_MB}*attempt**2"]


HIERARCHY = f"{OUT}/hierarchy/sim_backprop/resnet18/sub-01"
TARGETS = [f"{HIERARCHY}/{name}.parquet" for name in ("encoding", "best_layers", "tmax", "hierarchy")]
JOBS = Counter(
    {"stimuli": 1, "layers": 1, "extract": 1, "plant": 1, "brain": 1, "folds": 1, "encode": 8, "hierarchy": 1}
)


def _slurm_cmd(workdir: Path, *args: str) -> list[str]:
    return [
        SNAKEMAKE,
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(TINY),
        str(SEPARATE_FITS),
        *SLURM_ARGS,
        *OOM_ARGS,
        *args,
        "--",
        *TARGETS,
    ]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def _squeue(run_id: str) -> list[tuple[str, str, str]]:
    """(SLURM job id, state, comment) of this run's jobs."""
    done = subprocess.run(
        ["squeue", "-h", "--states=all", "--name", run_id, "-o", "%i|%T|%k"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return [tuple(line.split("|", 2)) for line in done.stdout.split()]


def _run_id(log: Path, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"SLURM run ID: (\S+)", log.read_text(errors="replace") if log.exists() else "")
        if found:
            return found.group(1)
        time.sleep(0.5)
    raise AssertionError(f"no SLURM run ID in {log}")


class Interrupted:
    """Run A: kill everything once encode results appear."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.log = workdir / "run_a.log"
        self.killed = False

    def run(self, timeout: float = 900) -> None:
        with open(self.log, "w") as fh:
            proc = subprocess.Popen(
                _slurm_cmd(self.workdir), stdout=fh, stderr=subprocess.STDOUT, env=_env(), start_new_session=True
            )
        run_id = _run_id(self.log)
        encodings = self.workdir / OUT / "encoding" / "sim_backprop" / "resnet18"
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if len(list(encodings.rglob("*.summary.parquet"))) >= 2:
                # A node failure or a killed login session: Snakemake and every job of the run die.
                os.killpg(proc.pid, signal.SIGKILL)
                subprocess.run(["scancel", "--name", run_id], check=False)
                self.killed = True
                break
            time.sleep(0.5)
        if not self.killed:  # the deadline passed: leave nothing running behind
            os.killpg(proc.pid, signal.SIGKILL)
            subprocess.run(["scancel", "--name", run_id], check=False)
        proc.wait(timeout=60)
        while any(state in {"RUNNING", "PENDING", "COMPLETING"} for _, state, _ in _squeue(run_id)):
            time.sleep(0.5)


def _complete_encodes(workdir: Path) -> int:
    """Encode jobs whose outputs exist and that Snakemake has not marked incomplete.

    Inside a grouped SLURM job each finished component is recorded as done by the job itself,
    so fits finished before the kill count as done even though the killed head never said so.
    """
    n = 0
    for path in (workdir / OUT / "encoding").rglob("*.summary.parquet"):
        marker = urlsafe_b64encode(str(path.relative_to(workdir)).encode()).decode()
        n += not (workdir / ".snakemake" / "incomplete" / marker).exists()
    return n


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("slurm")
    first = Interrupted(workdir)
    first.run()
    assert first.killed, first.log.read_text()[-3000:]
    finished = Counter(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", first.log.read_text()))
    # A killed Snakemake leaves its lock behind; the README's recovery step removes it.
    unlock = subprocess.run(
        _slurm_cmd(workdir, "--unlock"), capture_output=True, text=True, env=_env(), timeout=300, check=False
    )
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    complete_encodes = _complete_encodes(workdir)
    plan = subprocess.run(
        _slurm_cmd(workdir, "--dry-run"), capture_output=True, text=True, env=_env(), timeout=300, check=False
    )
    assert plan.returncode == 0, plan.stderr[-3000:]
    resumed = subprocess.run(_slurm_cmd(workdir), capture_output=True, text=True, env=_env(), timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return {
        "workdir": workdir,
        "finished_first": finished,
        "complete_encodes": complete_encodes,
        "planned": planned_jobs(plan.stdout),
        "first_log": first.log.read_text(),
        "resumed_log": resumed.stdout + resumed.stderr,
    }


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("local")
    done = snakemake(workdir, TINY, "--", *TARGETS)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


def test_every_job_ran_as_a_slurm_job(slurm_run):
    logs = slurm_run["workdir"] / "results" / "slurm-logs"
    rules = {p.name.removeprefix("rule_").removeprefix("group_") for p in logs.iterdir()}
    assert rules == set(JOBS) - {"encode"} | {"encode_encode"}
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", slurm_run["first_log"] + slurm_run["resumed_log"])
    assert len(submitted) == len(set(submitted)) == len(list(logs.rglob("*.log")))
    # Encode jobs went in groups: fewer SLURM jobs than encode jobs.
    assert 1 <= len(list((logs / "group_encode_encode").rglob("*.log"))) < JOBS["encode"]


def test_extract_out_of_memory_retried_with_half_the_batch_and_more_memory(slurm_run):
    extract_logs = sorted(
        (slurm_run["workdir"] / "results" / "slurm-logs" / "rule_extract").rglob("*.log"), key=lambda p: int(p.stem)
    )
    assert len(extract_logs) == 2  # the attempt SLURM killed and the retry
    first, retry = (p.read_text(errors="replace") for p in extract_logs)
    assert "Exceeded job memory limit" in first, first[-3000:]
    assert "memory limit" not in retry, retry[-3000:]
    log = (slurm_run["workdir"] / OUT / "logs" / "extract" / "resnet18" / "demo.log").read_text()
    # tiny.yaml configures batch 30: the retry halved it and asked for more memory.
    assert f"batch size 15, mem_mb {4 * EXTRACT_MEM_MB}" in log, log[-2000:]
    assert "Error in rule extract" in slurm_run["first_log"]


def test_resumed_run_ran_only_unfinished_jobs(slurm_run):
    planned = Counter(rule for rule, _ in slurm_run["planned"])
    assert slurm_run["finished_first"]["extract"] == 1
    unfinished = JOBS - slurm_run["finished_first"]
    unfinished["encode"] = JOBS["encode"] - slurm_run["complete_encodes"]
    assert 0 < unfinished["encode"] < JOBS["encode"]  # the kill came while encode jobs ran
    assert planned == unfinished, (planned, slurm_run["finished_first"], slurm_run["complete_encodes"])
    assert "extract" not in planned and "layers" not in planned


# The SLURM run's extract was retried at half the batch (15 images, after its out-of-memory kill);
# the local run used 30. That moves gradients by rounding (docs/features.md, "What changes the
# numbers": cross-validated r by up to 2e-4 per target), so r is compared at that tolerance.
R_TOLERANCE = 2e-4


def test_results_equal_a_local_run(slurm_run, local_run):
    for target in TARGETS:
        slurm = pd.read_parquet(slurm_run["workdir"] / target)
        local = pd.read_parquet(local_run / target)
        assert slurm.shape == local.shape and len(local) > 0, target
        assert list(slurm.columns) == list(local.columns)
        numbers = local.select_dtypes("number").columns
        others = [c for c in local.columns if c not in numbers]
        pd.testing.assert_frame_equal(slurm[others], local[others])
        np.testing.assert_allclose(
            slurm[numbers].to_numpy(float),
            local[numbers].to_numpy(float),
            atol=R_TOLERANCE,
            rtol=0,
            equal_nan=True,
            err_msg=target,
        )
