"""Partial reruns and resilience on a finished local run (real Snakemake, tiny_two_models.yaml).

Each test copies the finished run (outputs, file times and Snakemake metadata) and changes one
thing: a config key, a killed job, a feature file changed in place, an overwritten checkpoint, a
truncated layer table. Dry runs then show what Snakemake
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

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, SNAKEMAKE, copy_run, planned_jobs, snakemake

pytestmark = pytest.mark.workflow

CONFIG = ROOT / "tests" / "configs" / "tiny_two_models.yaml"
OUT = "results/tiny2"
UPSTREAM = {"stimuli", "layers", "extract", "cka", "plant", "brain", "truth", "folds"}


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


def _advised(text: str) -> str:
    """The path a message advises to force (`--forcerun PATH`)."""
    found = re.search(r"with `--forcerun (\S+)` added", text)
    assert found, text[-3000:]
    return found.group(1)


def test_a_changed_feature_file_stops_its_reader_and_the_advised_command_recovers(two_model_run, tmp_path):
    """The issue's silent case (a feature file changed in place, same size) and its truncated-file advice."""
    run = copy_run(two_model_run, tmp_path / "run")
    folder = f"{OUT}/features/regnet/demo/extract"
    features = run / folder / "act" / "01.npy"
    original = features.read_bytes()
    array = np.load(features, mmap_mode="r+")
    array[7, 1] += 0.5  # a readable .npy of the same size with other numbers
    array.flush()
    del array
    target = f"{OUT}/encoding/sim_backprop/regnet/act/01/sub-01.summary.parquet"
    done = snakemake(run, CONFIG, "--forcerun", target, "--retries", "0", "--", target)
    assert done.returncode != 0
    log = (run / f"{OUT}/logs/encode/sim_backprop/regnet/act/01/sub-01.log").read_text()
    assert f"{folder}/act/01.npy: sha256 " in log and "cannot be trusted" in log
    assert not (run / target).exists()  # nothing left behind for a later run to trust
    # Follow the advice literally: the same command with `--forcerun <what the message names>` added.
    advised = _advised(log)
    assert advised == folder
    done = snakemake(run, CONFIG, "--forcerun", advised, "--retries", "0", "--", target)
    assert done.returncode == 0, done.stderr[-3000:]
    assert features.read_bytes() == original  # re-extracted: the same numbers as the first run
    pd.testing.assert_frame_equal(pd.read_parquet(run / target), pd.read_parquet(two_model_run / target))


def test_an_overwritten_checkpoint_reruns_exactly_what_depends_on_it(two_model_run, tmp_path):
    """A checkpoint replaced at the same path is an updated input: its model's jobs rerun, nothing else."""
    import torch

    from brainprop.features.models import create_model

    run = copy_run(two_model_run, tmp_path / "run")
    checkpoint = run / "regnet.pth"
    torch.save(create_model("regnetx_002", "random", 0, 64, {"zero_init_last": False}).state_dict(), checkpoint)
    config = changed_config(tmp_path, lambda c: c["models"]["regnet"].update(weights="./regnet.pth"))
    # A finished run with that checkpoint: mark every output up to date for the new config.
    assert snakemake(run, config, "--touch").returncode == 0
    assert dry_run(run, config) == []
    time.sleep(0.01)
    state = torch.load(checkpoint, weights_only=True)
    torch.save({k: v * 1.01 if v.is_floating_point() else v for k, v in state.items()}, checkpoint)
    jobs = dry_run(run, config)
    rules = Counter(rule for rule, _ in jobs)
    assert {wc["model"] for _, wc in jobs if "model" in wc} == {"regnet"}
    assert rules == Counter(
        {
            "extract": 1,
            "cka": 1,
            "encode": 2 * 3 * 2,  # signals x layers x subjects
            "joint": 3 * 2,
            "hierarchy": 2,
            "group": 1,
            "brain_map": 1,
            "meg_topomaps": 1,
            "sensitivity": 1,
            "compare": 1,
            "tables": 1,
            "figures": 1,
            "all": 1,
        }
    ), rules


def test_a_truncated_layer_table_while_the_dag_is_built_names_it_and_deleting_it_recovers(two_model_run, tmp_path):
    run = copy_run(two_model_run, tmp_path / "run")
    layers = run / f"{OUT}/features/regnet/layers.parquet"
    layers.write_bytes(layers.read_bytes()[:200])
    done = snakemake(run, CONFIG, "--dry-run")
    assert done.returncode != 0
    text = " ".join((done.stdout + done.stderr).split())
    assert f"{OUT}/features/regnet/layers.parquet: cannot read this table" in text
    assert "delete it and run the same snakemake command again" in text and "model 'regnet'" in text
    layers.unlink()  # the advice, literally
    assert dry_run(run) == []  # the DAG builds; the layers checkpoint rewrites the table when a job needs it
