"""`brainprop plan`: job counts against Snakemake's own dry run, feature bytes against the files
a run wrote, the disk refusal, and the attempt-scaled resources of extract jobs."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, copy_run, snakemake

from brainprop.config import load_config
from brainprop.plan import batch_for_attempt, check_disk, extract_mem_mb, extract_runtime_min, plan_run

BRAINPROP = str(Path(sys.executable).parent / "brainprop")
TWO_MODELS = ROOT / "tests" / "configs" / "tiny_two_models.yaml"


def test_batch_halves_and_memory_doubles_per_attempt():
    assert [batch_for_attempt(30, a) for a in (1, 2, 3, 4, 5, 6)] == [30, 15, 7, 3, 1, 1]
    first, second = extract_mem_mb(100.0, 32, 224, 1), extract_mem_mb(100.0, 32, 224, 2)
    assert second >= 2 * first - 2 * (32 * 224**2 * 2 / 1024) / 2 - 1  # doubled, less the halved batch
    assert second > first and extract_mem_mb(100.0, 32, 224, 3) > second
    assert extract_runtime_min(1000, 2, False, 2) == 2 * extract_runtime_min(1000, 2, False, 1) or (
        extract_runtime_min(1000, 2, False, 2) > extract_runtime_min(1000, 2, False, 1)
    )
    assert extract_runtime_min(10000, 2, True, 1) < extract_runtime_min(10000, 2, False, 1)


def _dry_run_counts(output: str) -> Counter:
    stats = output[output.index("Job stats:") :]
    return Counter(
        {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", stats, flags=re.MULTILINE) if rule != "total"}
    )


@pytest.mark.workflow
def test_plan_matches_snakemake_and_the_written_features(two_model_run, tmp_path):
    config = load_config(TWO_MODELS)
    plan = plan_run(config)
    for (model, imageset), size in plan.feature_bytes.items():
        folder = two_model_run / "results" / "tiny2" / "features" / model / imageset / "extract"
        written = sum(np.load(p, mmap_mode="r").nbytes for p in folder.rglob("*.npy"))
        assert size == written > 0, (model, size, written)
    # Keep only the `layers` checkpoint outputs: the dry run then lists every other job.
    run = copy_run(two_model_run, tmp_path / "run")
    for path in sorted((run / "results").rglob("*"), reverse=True):
        if path.name != "layers.parquet" and path.is_file():
            path.unlink()
    done = snakemake(run, TWO_MODELS, "--dry-run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert Counter(plan.jobs) == _dry_run_counts(done.stdout) + Counter({"layers": len(plan.layers)})


def test_plan_command_prints_jobs_and_disk(tmp_path):
    done = subprocess.run(
        [BRAINPROP, "plan", "--config", str(ROOT / "tests" / "configs" / "tiny.yaml"), "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # The three simulated subjects saw the same images in one order: one shared fit per signal x layer.
    assert re.search(r"^\s+encode_shared_sim_backprop\s+8$", done.stdout, flags=re.MULTILINE)
    assert re.search(r"^\s+joint_shared_sim_backprop\s+4$", done.stdout, flags=re.MULTILINE)
    # 23 of the spine (one hierarchy job for the three subjects) + 4 joint fits + brain_map,
    # meg_topomaps, sensitivity and compare.
    assert re.search(r"^\s+hierarchy_shared_sim_backprop\s+1$", done.stdout, flags=re.MULTILINE)
    assert re.search(r"^\s+total\s+31$", done.stdout, flags=re.MULTILINE)
    assert "resnet18/demo" in done.stdout and ": ok" in done.stdout


def test_plan_command_refuses_when_the_disk_cannot_hold_the_features(tmp_path):
    config = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
    # Within the config's bounds, 12 TB of features: more than any test disk.
    config["stimuli"]["demo"]["n_images"] = 100_000
    model = config["models"]["resnet18"] | {"input_size": 2048, "layers": {"n": 100}}
    model |= {"pooling": {"mode": "grid", "grid": 16, "projection": {"dim": None}}}
    model |= {"signals": ["act", "grad", "fa", "sign", "dfa"]}
    config["models"] = {f"resnet18_{i}": model for i in range(12)}
    config["datasets"]["sim_backprop"]["simulation"]["source_model"] = "resnet18_0"
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [BRAINPROP, "plan", "--config", str(path), "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2
    assert "refusing to start" in done.stderr and "GB free" in done.stderr
    ok, free = check_disk(copy.deepcopy(10**18), tmp_path / "not" / "yet")
    assert not ok and free > 0


def test_real_image_sets_are_planned_from_the_published_design_until_their_manifest_exists(tmp_path, monkeypatch):
    import pandas as pd

    from brainprop.config import validate_config

    text = (ROOT / "tests" / "configs" / "real_tiny.yaml").read_text()
    for root in ("NSD_ROOT", "MEG_ROOT"):
        (tmp_path / root).mkdir()
        text = text.replace(root, str(tmp_path / root))
    config = validate_config(yaml.safe_load(text), check_models=False)
    layers = {"resnet18": pd.DataFrame({"layer_index": [0, 1, 2], "dim": [10, 20, 30]})}
    monkeypatch.chdir(tmp_path)
    plan = plan_run(config, layers)
    n_nsd = 1_000 + 9_000 * len(config["datasets"]["nsd"]["subjects"])
    # 60 dims x 2 signals, and the model output (resnet18's 1,000 logits, resolved on the meta device)
    width = 60 * 2 + 1000
    assert plan.feature_bytes[("resnet18", "meg_images")] == width * 22_448 * 4  # THINGS-MEG: 22,248 + 200
    assert plan.feature_bytes[("resnet18", "nsd_images")] == width * n_nsd * 4
    manifest = tmp_path / "results" / config["run"] / "stimuli" / "meg_images" / "manifest.parquet"
    manifest.parent.mkdir(parents=True)
    pd.DataFrame({"image_id": [f"i{k}" for k in range(15)]}).to_parquet(manifest)
    assert plan_run(config, layers).feature_bytes[("resnet18", "meg_images")] == width * 15 * 4
