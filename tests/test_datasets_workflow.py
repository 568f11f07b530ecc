"""Real Snakemake on fixture roots of NSD (fsaverage) and THINGS-MEG in their published formats."""

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures.datasets import write_nsd, write_things_meg
from fixtures.planting import demo_images, planted_responses, save_pngs

from brainprop.config import alphas, load_config
from brainprop.contract import validate_results
from brainprop.encoding.encode import encode
from brainprop.encoding.files import load_target_scores
from brainprop.encoding.folds import folds_from_table, subject_rows
from brainprop.features.files import load_features, load_samples
from brainprop.plan import plan_run

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
pytestmark = pytest.mark.workflow


# Kastner2015 label of the fixture -> planted layer (its ROI names: 1 V1v, 2 V1d, 3 hV4, 4 FFA-1)
PLANTED = {1: 0, 2: 0, 3: 2, 4: 2}
PLANTED_ROIS = {"V1v": 0, "V1d": 0, "hV4": 2, "FFA-1": 2}


def _planted_signal(workdir: Path):
    """signal(brick, labels): each ROI's response is a latent of one layer of the run's model (METHOD.md §7 plant)."""

    def signal(brick: np.ndarray, labels: np.ndarray) -> np.ndarray:
        both = np.concatenate([labels, labels])
        columns = {}
        for label, layer in PLANTED.items():
            columns.setdefault(layer, []).extend(np.flatnonzero(both == label).tolist())
        paths = save_pngs(brick, workdir / "plant" / "images")
        return planted_responses(paths, workdir / "plant", {k: np.array(v) for k, v in columns.items()}, len(both))

    return signal


def _config(workdir: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        brick = demo_images(workdir / "brick", 80)
        write_nsd(workdir / "nsd_root", n_images=60, brick=brick, signal=_planted_signal(workdir))
        write_things_meg(workdir / "meg_root", subjects=("P1", "P2"))
    text = (ROOT / "tests" / "configs" / "real_tiny.yaml").read_text()
    path = workdir / "config.yaml"
    path.write_text(text.replace("NSD_ROOT", str(workdir / "nsd_root")).replace("MEG_ROOT", str(workdir / "meg_root")))
    return path


def _snakemake(workdir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        SNAKEMAKE,
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        "--configfile",
        str(config),
        *args,
    ]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("real")
    done = _snakemake(workdir, _config(workdir))
    assert done.returncode == 0, done.stderr[-5000:]
    return workdir


def test_real_datasets_run_through_every_stage(real_run):
    tables = real_run / "results" / "real" / "tables"
    assert validate_results(tables) == []
    enc = pd.read_parquet(tables / "encoding.parquet")
    assert set(zip(enc["dataset"], enc["modality"])) == {("nsd", "fmri"), ("things_meg", "meg")}
    fmri = enc[enc["modality"] == "fmri"]
    assert set(fmri["roi"]) == {"V1v", "V1d", "hV4", "FFA-1"} and fmri["noise_ceiling"].between(0, 1).all()
    assert pd.read_parquet(tables / "tmax.parquet")["dataset"].eq("things_meg").all()
    check = pd.read_parquet(real_run / "results" / "real" / "brain" / "nsd" / "check.parquet")
    assert check["status"].eq("found").all()
    manifest = pd.read_parquet(real_run / "results" / "real" / "stimuli" / "meg_images" / "manifest.parquet")
    assert len(manifest) == 15 and not manifest["image_id"].str.startswith("catch").any()


def test_subjects_with_one_image_order_share_one_fit_equal_to_separate_fits(real_run):
    """THINGS-MEG subjects are fitted by one encode_shared job per layer, with the numbers of `encode` per subject."""
    out = real_run / "results" / "real"
    log = (out / "logs" / "encode" / "things_meg" / "resnet18" / "grad" / "01" / "shared.log").read_text()
    assert "2 subjects share one decomposition per fold" in log
    shared_jobs = list((out / "logs" / "encode" / "things_meg").rglob("shared.log"))
    plan = plan_run(load_config(real_run / "config.yaml")).jobs
    assert plan["encode_shared_things_meg"] == len(shared_jobs) == 2 * 3  # act, grad × 3 layers; not per subject
    assert plan["encode"] == len(list((out / "logs" / "encode" / "nsd").rglob("*.log")))
    params = {"alphas": {"log10_min": 0, "log10_max": 4, "n": 3}}
    for subject in ("P1", "P2"):
        brain = out / "brain" / "things_meg" / subject
        samples = pd.read_parquet(brain / "samples.parquet")
        features = out / "features" / "resnet18" / "meg_images" / "extract"
        rows = subject_rows(load_samples(features)["image_id"].to_numpy(), samples["image_id"].to_numpy(), "", "")
        folds = folds_from_table(
            pd.read_parquet(out / "encoding" / "things_meg" / "folds.parquet"), samples["image_id"].to_numpy()
        )
        separate, _, _ = encode(
            np.asarray(load_features(features, "grad", 1))[rows],
            np.load(brain / "Y.npy"),
            pd.read_parquet(brain / "targets.parquet"),
            folds,
            alphas(params),
        )
        shared = load_target_scores(
            out / "encoding" / "things_meg" / "resnet18" / "grad" / "01" / f"{subject}.targets.parquet"
        )
        np.testing.assert_allclose(shared["r"], separate["r"], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(shared["alpha"], separate["alpha"])


def test_planted_best_layers_are_recovered(real_run):
    best = pd.read_parquet(real_run / "results" / "real" / "tables" / "best_layers.parquet")
    best = best[(best["dataset"] == "nsd") & (best["signal"] == "act") & (best["hemi"] == "both")]
    found = dict(zip(best["roi"], best["best_layer_index"]))
    print("best layers", found, "planted", PLANTED_ROIS)
    assert found == PLANTED_ROIS


def test_broken_root_fails_in_the_check_rule(tmp_path):
    config = _config(tmp_path)
    session = (
        tmp_path
        / "nsd_root"
        / "nsddata_betas"
        / "ppdata"
        / "subj01"
        / "fsaverage"
        / "betas_fithrf_GLMdenoise_RR"
        / "rh.betas_session02.mgh"
    )
    session.unlink()
    done = _snakemake(tmp_path, config)
    assert done.returncode != 0
    log = (tmp_path / "results" / "real" / "logs" / "check" / "nsd.log").read_text()
    assert "missing  session 02: " + str(session) in log
    out = tmp_path / "results" / "real"
    assert not list(out.glob("features/**/nsd_images*")) and not (out / "brain" / "nsd" / "subj01").exists()


def test_a_replaced_dataset_file_reruns_exactly_its_subject(real_run, tmp_path):
    """A real dataset's files are inputs of the jobs that read them: replacing one session's betas reruns
    that subject's brain job and what reads it, not the image set, the features or the other dataset."""
    import os
    import shutil

    from conftest import planned_jobs

    run = tmp_path / "run"
    shutil.copytree(real_run, run, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    session = next((real_run / "nsd_root" / "nsddata_betas" / "ppdata" / "subj01").rglob("lh.betas_session02.mgh"))
    original, stat = session.read_bytes(), session.stat()
    try:
        changed = bytearray(original)
        changed[len(changed) // 2] ^= 0xFF  # other betas (Snakemake compares small inputs' checksums)
        session.write_bytes(bytes(changed))  # the root is the fixture's: restored below
        done = _snakemake(run, run / "config.yaml", "--dry-run")
    finally:
        session.write_bytes(original)
        os.utime(session, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = planned_jobs(done.stdout)
    rules = {rule for rule, _ in jobs}
    assert ("brain", {"dataset": "nsd", "subject": "subj01"}) in jobs
    assert {"encode", "hierarchy", "group", "tables"} <= rules
    assert not {"stimuli", "check", "extract", "folds", "layers"} & rules, rules
    assert {wc["dataset"] for _, wc in jobs if "dataset" in wc} == {"nsd"}
