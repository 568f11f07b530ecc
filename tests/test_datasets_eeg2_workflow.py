"""Real Snakemake through every stage on a THINGS-EEG2 fixture root in its published format."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from fixtures.datasets import EEG2_TEST_CONCEPTS, EEG2_TRAIN_CONCEPTS, write_things_eeg2

from brainprop.contract import validate_results

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def eeg2_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("eeg2")
    write_things_eeg2(workdir / "eeg2_root", subjects=("sub-01", "sub-02"), storage=("npsave", "pickle"))
    text = (ROOT / "tests" / "configs" / "real_tiny_eeg2.yaml").read_text()
    config = workdir / "config.yaml"
    config.write_text(text.replace("EEG2_ROOT", str(workdir / "eeg2_root")))
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2"]
    done = subprocess.run([*cmd, "--configfile", str(config)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-5000:]
    return workdir / "results" / "eeg2"


def test_things_eeg2_runs_through_every_stage(eeg2_run):
    tables = eeg2_run / "tables"
    assert validate_results(tables) == []
    enc = pd.read_parquet(tables / "encoding.parquet")
    assert set(zip(enc["dataset"], enc["modality"])) == {("things_eeg2", "meg")}
    assert set(enc["subject"]) == {"sub-01", "sub-02"} and enc["time"].nunique() == 100
    assert enc["noise_ceiling"].between(0, 1).all()
    assert set(pd.read_parquet(tables / "tmax.parquet")["subject"]) == {"sub-01", "sub-02"}
    assert {"T1", "T2"} <= set(pd.read_parquet(tables / "tests.parquet")["test"])
    check = pd.read_parquet(eeg2_run / "brain" / "things_eeg2" / "check.parquet")
    assert check["status"].eq("found").all() and len(check) == 2 * 5
    manifest = pd.read_parquet(eeg2_run / "stimuli" / "eeg2_images" / "manifest.parquet")
    assert set(manifest["group"]) == set(EEG2_TRAIN_CONCEPTS) | set(EEG2_TEST_CONCEPTS) and len(manifest) == 16
    folds = pd.read_parquet(eeg2_run / "encoding" / "things_eeg2" / "folds.parquet")
    assert folds.groupby("group")["fold"].nunique().eq(1).all()  # no concept straddles train and test
    samples = pd.read_parquet(eeg2_run / "brain" / "things_eeg2" / "sub-02" / "samples.parquet")
    assert samples["n_trials"].tolist() == [4] * 12 + [6] * 4


def test_things_eeg2_subjects_share_one_fit(eeg2_run):
    shared = list((eeg2_run / "logs" / "encode" / "things_eeg2").rglob("shared.log"))
    assert len(shared) == 2 * 3  # act, grad × 3 layers, not per subject
    assert "2 subjects share one decomposition per fold" in shared[0].read_text()
