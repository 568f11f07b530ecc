"""Real Snakemake on a tiny config in a temporary directory: every table follows the contract."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from brainprop.contract import validate_results

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
pytestmark = pytest.mark.workflow


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2",
           "--configfile", str(ROOT / "tests" / "configs" / "tiny.yaml"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("tiny")
    done = _snakemake(workdir)
    assert done.returncode == 0, done.stderr[-5000:]
    return workdir


def test_tables_follow_the_contract(tiny_run):
    assert validate_results(tiny_run / "results" / "tiny" / "tables") == []


def test_validate_results_command(tiny_run):
    done = subprocess.run([str(Path(sys.executable).parent / "brainprop"), "validate-results",
                           str(tiny_run / "results" / "tiny")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_tables_have_every_job(tiny_run):
    tables = tiny_run / "results" / "tiny" / "tables"
    enc = pd.read_parquet(tables / "encoding.parquet")
    assert set(enc["subject"]) == {"sub-01", "sub-02", "sub-03"}
    assert set(enc["signal"]) == {"act", "grad"}
    assert enc["layer_index"].nunique() == 4
    assert set(enc["modality"]) == {"fmri", "meg"}
    tests = pd.read_parquet(tables / "tests.parquet")
    assert {"T1", "T2", "S1a", "S1b", "E"} <= set(tests["test"])
    truth = pd.read_parquet(tiny_run / "results" / "tiny" / "truth" / "sim_backprop.parquet")
    assert list(truth.columns) == ["dataset", "subject", "source_model", "kind", "roi", "signal", "depth", "latency_s"]
    figures = sorted(p.name for p in (tiny_run / "results" / "tiny" / "figures").iterdir())
    assert figures == ["encoding_by_layer_sim_backprop.png", "spatial_hierarchy_sim_backprop.png",
                       "tmax_sim_backprop.png"]


def test_second_run_has_nothing_to_do(tiny_run):
    done = _snakemake(tiny_run, "--dry-run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Nothing to be done" in done.stdout + done.stderr


def test_bad_config_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "tests" / "configs" / "tiny.yaml").read_text().replace("mode: grid", "mode: gird"))
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--cores", "1",
           "--configfile", str(bad)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "models.resnet18.pooling.mode" in done.stderr + done.stdout
    assert not (tmp_path / "results").exists()


def test_lint_is_clean(tiny_run):
    done = _snakemake(tiny_run, "--lint")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Congratulations" in done.stdout + done.stderr


def test_report_builds_with_every_figure(tiny_run):
    report = tiny_run / "report.html"
    done = _snakemake(tiny_run, "--report", str(report))
    assert done.returncode == 0, done.stderr[-3000:]
    text = report.read_text(errors="replace")
    for name in ("encoding_by_layer_sim_backprop.png", "spatial_hierarchy_sim_backprop.png", "tmax_sim_backprop.png"):
        assert name in text


def test_joint_models_feed_e_and_the_stats_tables_exist(tiny_run):
    out = tiny_run / "results" / "tiny"
    tests = pd.read_parquet(out / "tables" / "tests.parquet")
    e = tests[tests["test"] == "E"]
    assert set(e["measure"]) == {"r_difference", "unique_variance"}
    assert e["effect"].notna().all() and set(e["family"]) == {"sim_backprop/resnet18/grad/E"}
    assert len(list((out / "joint").rglob("*.summary.parquet"))) == 4 * 3  # layers x subjects
    comparisons = pd.read_parquet(out / "tables" / "comparisons.parquet")
    assert "act_vs_grad" in set(comparisons["comparison"])
    sensitivity = pd.read_parquet(out / "tables" / "sensitivity.parquet")
    assert {"default", "tmax_threshold", "exclude"} <= set(sensitivity["choice"])


def test_controls_are_planned_as_models_of_their_own(tmp_path):
    config = tmp_path / "controls.yaml"
    config.write_text((ROOT / "tests" / "configs" / "tiny.yaml").read_text().replace("    controls: []\n", ""))
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--cores", "1",
           "--configfile", str(config), "--dry-run"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout + done.stderr
    assert "model=resnet18__shuffled_loss" in text
    # Random weights already: no random-init copy.
    assert "resnet18__random_init" not in text
