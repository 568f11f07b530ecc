"""Shared fixtures: a small demo manifest, Snakemake runs on the tiny configs, the `cluster` skip rule."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def snakemake(workdir: Path, configfile: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the project's Snakefile in `workdir` (local profile) on `configfile`."""
    cmd = [
        SNAKEMAKE,
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        "--configfile",
        str(configfile),
        *args,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.fixture(scope="session")
def two_model_run(tmp_path_factory) -> Path:
    """A finished local run of tests/configs/tiny_two_models.yaml (copy it before changing it)."""
    workdir = tmp_path_factory.mktemp("tiny2")
    done = snakemake(workdir, ROOT / "tests" / "configs" / "tiny_two_models.yaml")
    assert done.returncode == 0, done.stderr[-5000:]
    return workdir


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


def copy_run(run: Path, dest: Path) -> Path:
    """Copy a finished run with its Snakemake metadata and file times (a rerun sees it as done)."""
    shutil.copytree(run, dest, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    return dest


def slurm_is_up() -> bool:
    """Whether a SLURM controller answers and has a usable node."""
    if shutil.which("sinfo") is None:
        return False
    try:
        done = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and any(
        s.strip("*~#") in {"idle", "mixed", "allocated", "completing"} for s in done.stdout.split()
    )


def pytest_collection_modifyitems(config, items):
    """Skip `cluster` tests unless selected with `-m cluster` and a SLURM is up."""
    cluster_items = [item for item in items if item.get_closest_marker("cluster")]
    if not cluster_items:
        return
    selected = "cluster" in (config.getoption("-m") or "") and "not cluster" not in (config.getoption("-m") or "")
    if not selected:
        reason = "SLURM tests run with `pytest -m cluster` (after `bash tests/cluster/start_slurm.sh`)"
    elif not slurm_is_up():
        reason = "no SLURM answers `sinfo` (start one with `bash tests/cluster/start_slurm.sh`)"
    else:
        return
    for item in cluster_items:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def demo_manifest(tmp_path_factory):
    """A 12-image demo manifest of 32 px images: (manifest path, manifest table)."""
    from brainprop.stimuli.demo import make_demo_images
    from brainprop.stimuli.files import write_manifest

    root = tmp_path_factory.mktemp("stimuli")
    manifest = make_demo_images(root, n_images=12, size=32)
    write_manifest(root / "manifest.parquet", manifest)
    return root / "manifest.parquet", manifest


@pytest.fixture(scope="session")
def trained_weights() -> dict:
    """The trained weight files `make install` put in the weights folder, checked by sha256.

    A missing or corrupt file fails the test with the message that names it and the command that
    restores it (never a skip: CI runs `make test`, which installs them).
    """
    from brainprop.features.weights import WEIGHT_FILES, resolve_checkpoint, verify_checkpoint

    return {name: verify_checkpoint(resolve_checkpoint(name)) for name in WEIGHT_FILES}


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: tiny models gain nothing from threads, and OpenMP spin-waits
    on a busy 2-core machine cost 20x."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
