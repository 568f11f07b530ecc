"""Partial reruns and resilience on a finished local run (real Snakemake, tiny_two_models.yaml).

Each test copies the finished run (outputs, file times and Snakemake metadata) and changes one
thing: a config key, a killed job, a truncated feature file. Dry runs then show what Snakemake
would rerun under the workflow's default `--rerun-triggers` and the local profile.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SNAKEMAKE, copy_run, snakemake

pytestmark = pytest.mark.workflow

CONFIG = ROOT / "tests" / "configs" / "tiny_two_models.yaml"
OUT = "results/tiny2"
UPSTREAM = {"stimuli", "layers", "extract", "cka", "plant", "brain", "truth", "folds"}


def planned_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job a dry run lists."""
    jobs = []
    for block in re.split(r"\n(?=\s*(?:local)?(?:rule|checkpoint) \w+:)", output):
        head = re.match(r"\s*(?:local)?(?:rule|checkpoint) (\w+):", block)
        if not head:
            continue
        found = re.search(r"^\s*wildcards: (.*)$", block, flags=re.MULTILINE)
        wildcards = dict(kv.split("=", 1) for kv in found.group(1).split(", ")) if found else {}
        jobs.append((head.group(1), wildcards))
    return jobs


def dry_run(workdir: Path, configfile: Path = CONFIG, *args: str) -> list[tuple[str, dict[str, str]]]:
    done = snakemake(workdir, configfile, "--dry-run", *args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return planned_jobs(done.stdout)


def changed_config(tmp_path: Path, edit) -> Path:
    config = yaml.safe_load(CONFIG.read_text())
    edit(config)
    path = tmp_path / "changed.yaml"
    # Key order is kept: Snakemake compares params as written, so a reordered mapping reruns.
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_finished_run_has_nothing_to_do(two_model_run, tmp_path):
    run = copy_run(two_model_run, tmp_path / "run")
    assert dry_run(run) == []


def test_penalty_grid_change_reruns_encoding_onward_not_extraction(two_model_run, tmp_path):
    run = copy_run(two_model_run, tmp_path / "run")
    config = changed_config(tmp_path, lambda c: c.setdefault("encoding", {}).update(alphas={"n": 5}))
    rules = Counter(rule for rule, _ in dry_run(run, config))
    assert rules["encode"] == 2 * (4 + 3) * 2  # subjects x layers of both models x signals
    assert {"hierarchy", "group", "tables", "figures"} <= set(rules)
    assert not UPSTREAM & set(rules), rules


def test_one_model_change_reruns_only_that_model(two_model_run, tmp_path):
    run = copy_run(two_model_run, tmp_path / "run")
    config = changed_config(tmp_path, lambda c: c["models"]["regnet"]["pooling"].update(grid=2))
    jobs = dry_run(run, config)
    rules = Counter(rule for rule, _ in jobs)
    assert rules["layers"] == 1 and rules["extract"] == 1
    # Every job with a model wildcard (layers, extract, encode, joint, hierarchy, group, the maps) is regnet's.
    assert {wc.get("model") for rule, wc in jobs if "model" in wc} == {"regnet"}
    assert rules["brain_map"] == rules["meg_topomaps"] == 1
    # The other model's features and fits, and the brain data, stay as they are.
    assert not {"stimuli", "plant", "brain", "truth", "folds"} & set(rules)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "timed out waiting for the job to start"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _other_models_map(name: str) -> bool:
    """A map figure of resnet18: its map jobs do not read regnet's fits, so a run in progress has them."""
    return name.startswith(("brain_map_", "glass_brain_", "meg_topomaps_")) and "resnet18" in name


def test_killed_job_is_not_trusted_and_rerun_incomplete_reruns_only_it(two_model_run, tmp_path):
    run = copy_run(two_model_run, tmp_path / "run")
    fit = f"{OUT}/encoding/sim_backprop/regnet/grad/02/sub-02"
    log = run / f"{OUT}/logs/encode/sim_backprop/regnet/grad/02/sub-02.log"
    # A run in progress: this fit and what reads it are still to come.
    for path in [
        run / f"{fit}.summary.parquet",
        run / f"{fit}.targets.parquet",
        *(run / f"{OUT}/hierarchy/sim_backprop/regnet/sub-02").iterdir(),
        run / f"{OUT}/group/sim_backprop/regnet/tests.parquet",
        *(run / f"{OUT}/tables").iterdir(),
        *(p for p in (run / f"{OUT}/figures").iterdir() if not _other_models_map(p.name)),
    ]:
        path.unlink()
    before = log.stat().st_mtime_ns
    cmd = [
        SNAKEMAKE,
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(run),
        "--cores",
        "1",
        "--configfile",
        str(CONFIG),
    ]
    # Kill the whole run (Snakemake and the job) once the fit has started writing its log.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    _kill_when(proc, lambda: log.exists() and log.stat().st_mtime_ns != before)
    assert snakemake(run, CONFIG, "--unlock").returncode == 0  # a killed Snakemake leaves its lock
    assert not (run / f"{fit}.summary.parquet").exists() or (run / ".snakemake" / "incomplete").iterdir()
    # Nothing a rerun would trust: without --rerun-incomplete the fit is rerun or refused.
    strict = snakemake(run, CONFIG, "--dry-run", "--workflow-profile", "none", "--cores", "1")
    text = strict.stdout + strict.stderr
    wildcards = {"dataset": "sim_backprop", "model": "regnet", "signal": "grad", "layer": "02", "subject": "sub-02"}
    assert ("encode", wildcards) in planned_jobs(strict.stdout) or (
        strict.returncode != 0 and "incomplete" in text.lower()
    ), text[-3000:]
    # With --rerun-incomplete (the local profile's default): that fit and what reads it, nothing else.
    jobs = dry_run(run, CONFIG, "--rerun-incomplete")
    rules = Counter(rule for rule, _ in jobs)
    # The fit and what reads it: its subject's hierarchy, the group tests, the comparison and
    # sensitivity tables, its model's per-target maps of the dataset, the tables, the figures;
    # nothing upstream, no other fit.
    assert rules == Counter(
        {
            "encode": 1,
            "hierarchy": 1,
            "group": 1,
            "sensitivity": 1,
            "compare": 1,
            "brain_map": 1,
            "meg_topomaps": 1,
            "tables": 1,
            "figures": 1,
            "all": 1,
        }
    ), rules
    assert ("encode", wildcards) in jobs


def test_truncated_feature_file_fails_its_reader_with_a_delete_message(two_model_run, tmp_path):
    run = copy_run(two_model_run, tmp_path / "run")
    features = run / f"{OUT}/features/regnet/demo/extract/act/01.npy"
    data = features.read_bytes()
    features.write_bytes(data[: len(data) // 2])
    target = f"{OUT}/encoding/sim_backprop/regnet/act/01/sub-01.summary.parquet"
    done = snakemake(run, CONFIG, "--forcerun", target, "--retries", "0", "--", target)
    assert done.returncode != 0
    log = (run / f"{OUT}/logs/encode/sim_backprop/regnet/act/01/sub-01.log").read_text()
    assert str(features.relative_to(run)) in log or features.name in log
    assert "Delete the file and rerun" in log
    # The failed job left no output behind for a later run to trust.
    assert not (run / target).exists()
