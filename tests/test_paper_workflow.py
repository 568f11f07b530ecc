"""Real Snakemake on fixture roots: both paper presets and the THINGS-EEG2 config, end to end, in one run.

The run's config is built from config/paper_nsd.yaml, config/paper_things_meg.yaml and
config/things_eeg2.yaml: their dataset entries, encoding, hierarchy and stats blocks as written,
with these test overrides only: one tiny random ResNet-18 (3 layers) instead of the model set,
fewer subjects and NSD sessions (the fixtures have one NSD subject with 2 sessions and one
THINGS-MEG participant), the fixture roots, THINGS-MEG's raw recordings as FIF (a CTF .ds folder
cannot be synthesised), fewer permutations and bootstrap resamples, no joint models, PNG only.
The presets' own choices are what runs (a test checks the merged config against the files).
"""

import copy
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fixtures.datasets import (
    EEG2_TEST_CONCEPTS,
    EEG2_TRAIN_CONCEPTS,
    HCP_OTHER,
    HCP_ROIS,
    write_nsd,
    write_things_eeg2,
    write_things_meg_bids,
)
from fixtures.planting import demo_images, planted_responses, save_pngs

from brainprop.contract import validate_results
from brainprop.hierarchy.files import load_target_depths

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
pytestmark = pytest.mark.workflow
PRESETS = ("paper_nsd.yaml", "paper_things_meg.yaml", "things_eeg2.yaml")
MODEL = {
    "timm_name": "resnet18", "weights": "random", "timm_kwargs": {"zero_init_last": False}, "input_size": 64,
    "layers": {"n": 3}, "signals": ["act", "grad"], "batch_size": 16, "controls": [],
}  # fmt: skip
# HCP_MMP1 areas of the fixture, posterior to anterior: the first 7 driven by layer 0, the rest by layer 2.
PLANTED_LAYER = {number: (0 if k < 7 else 2) for k, number in enumerate(HCP_ROIS.values())}


def _presets() -> dict[str, dict]:
    return {name: yaml.safe_load((ROOT / "config" / name).read_text()) for name in PRESETS}


def _merged(blocks: list[dict]) -> dict:
    """One block from several, refusing a key two of them set differently."""
    out: dict = {}
    for block in blocks:
        for key, value in block.items():
            assert out.get(key, value) == value, f"the presets disagree on {key}: {out[key]} vs {value}"
            out[key] = value
    return out


def paper_config(workdir: Path) -> dict:
    """The run's config: the three configs' datasets and analysis blocks with the test overrides above."""
    presets = _presets()
    config = {
        "run": "paper",
        "seed": 0,
        "device": "cpu",
        "stimuli": _merged([p["stimuli"] for p in presets.values()]),
        "models": {"resnet18": MODEL},
        "datasets": _merged([p["datasets"] for p in presets.values()]),
        "encoding": _merged([p.get("encoding", {}) for p in presets.values()]),
        "hierarchy": _merged([p.get("hierarchy", {}) for p in presets.values()]),
        "stats": _merged([p.get("stats", {}) for p in presets.values()]) | {"n_permutations": 100, "n_boot": 100},
        "joint": {"enabled": False},
        "figures": {"formats": ["png"]},
    }
    ds = config["datasets"]
    ds["nsd"] |= {"root": str(workdir / "nsd_root"), "subjects": ["subj01"]}
    ds["nsd"]["nsd"] = ds["nsd"]["nsd"] | {"sessions": [1, 2]}
    ds["things_meg"] |= {"root": str(workdir / "meg_root"), "subjects": ["P1"]}
    meg = ds["things_meg"]["things_meg"]
    ds["things_meg"]["things_meg"] = meg | {"images": "object_images", "bids": meg["bids"] | {"extension": ".fif"}}
    ds["things_eeg2"] |= {"root": str(workdir / "eeg2_root"), "subjects": ["sub-01", "sub-02"]}
    return config


def _planted_signal(workdir: Path):
    def signal(brick: np.ndarray, labels: np.ndarray) -> np.ndarray:
        both = np.concatenate([labels, labels])
        columns: dict[int, list[int]] = {}
        for number, layer in PLANTED_LAYER.items():
            columns.setdefault(layer, []).extend(np.flatnonzero(both == number).tolist())
        paths = save_pngs(brick, workdir / "plant" / "images")
        return planted_responses(paths, workdir / "plant", {k: np.array(v) for k, v in columns.items()}, len(both))

    return signal


def _snakemake(workdir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2"]
    return subprocess.run([*cmd, "--configfile", str(config), *args], capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("paper")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        brick = demo_images(workdir / "brick", 80)
        write_nsd(
            workdir / "nsd_root", n_images=60, brick=brick, signal=_planted_signal(workdir), signal_atlas="HCP_MMP1"
        )
        write_things_meg_bids(workdir / "meg_root", n_exp=15)
        write_things_eeg2(workdir / "eeg2_root", subjects=("sub-01", "sub-02"), storage=("npsave", "pickle"))
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(paper_config(workdir), sort_keys=False))
    done = _snakemake(workdir, config)
    assert done.returncode == 0, done.stderr[-5000:]
    return workdir


def test_the_run_keeps_the_presets_choices(tmp_path):
    config, presets = paper_config(tmp_path), _presets()
    nsd, meg = presets["paper_nsd.yaml"], presets["paper_things_meg.yaml"]
    assert config["encoding"] == nsd["encoding"] == meg["encoding"]
    assert config["hierarchy"]["spatial_unit"] == "target" and config["stats"]["map_fdr"] == nsd["stats"]["map_fdr"]
    kept = {k: v for k, v in config["datasets"]["nsd"].items() if k not in ("root", "subjects", "nsd")}
    assert kept == {k: v for k, v in nsd["datasets"]["nsd"].items() if k not in ("root", "subjects", "nsd")}
    assert {k: v for k, v in config["datasets"]["nsd"]["nsd"].items() if k != "sessions"} == {
        k: v for k, v in nsd["datasets"]["nsd"]["nsd"].items() if k != "sessions"
    }
    ours, theirs = (copy.deepcopy(d["datasets"]["things_meg"]["things_meg"]) for d in (config, meg))
    for opts in (ours, theirs):
        opts.pop("images"), opts["bids"].pop("extension")
    assert (
        ours == theirs
        and config["datasets"]["things_meg"]["meg_windows"] == meg["datasets"]["things_meg"]["meg_windows"]
    )


def test_paper_presets_run_through_every_stage(paper_run):
    out = paper_run / "results" / "paper"
    assert validate_results(out / "tables") == []
    enc = pd.read_parquet(out / "tables" / "encoding.parquet")
    assert set(zip(enc["dataset"], enc["modality"])) == {("nsd", "fmri"), ("things_meg", "meg"), ("things_eeg2", "meg")}
    fmri = enc[enc["modality"] == "fmri"]
    assert set(fmri["roi"]) == set(HCP_ROIS) and not set(fmri["roi"]) & set(HCP_OTHER)  # nsd.labels
    meg = enc[enc["dataset"] == "things_meg"]
    times = np.sort(meg["time"].unique())
    assert times[0] == pytest.approx(-0.5) and times[-1] == pytest.approx(3.0, abs=1 / 30)  # the raw route's window
    np.testing.assert_allclose(np.diff(times), 1 / 30, atol=1e-9)  # 30 Hz
    assert set(meg["roi"]) == {"", "occipital"}  # the fixture's MLO channels
    assert set(enc.loc[enc["dataset"] == "things_eeg2", "roi"]) == {"", "occipital", "parietal"}
    tests = pd.read_parquet(out / "tables" / "tests.parquet")
    assert {"E"} <= set(tests.loc[tests["dataset"] == "things_meg", "test"])
    levels = set(tests.loc[(tests["dataset"] == "things_meg") & (tests["test"] == "E"), "level"])
    assert levels == {"80_130ms", "130_180ms", "500_550ms"}
    assert set(tests.loc[(tests["dataset"] == "nsd") & (tests["test"] == "E"), "level"]) == {
        "early", "intermediate", "high", "prefrontal"
    }  # fmt: skip


def test_the_vertex_level_spatial_score_recomputes_from_the_tables(paper_run):
    out = paper_run / "results" / "paper"
    hier = pd.read_parquet(out / "tables" / "hierarchy.parquet")
    spatial = hier[(hier["dataset"] == "nsd") & (hier["score"] == "spatial")].set_index(["signal", "unit"])
    depths = load_target_depths(out / "hierarchy" / "nsd" / "resnet18" / "subj01" / "target_depths.parquet")
    for signal, part in depths.groupby("signal"):
        used = part[part["passes"] & ~part["excluded"] & np.isfinite(part["roi_distance_mm"])]
        expected = np.corrcoef(used["best_depth"], used["roi_distance_mm"])[0, 1]
        row = spatial.loc[(signal, "target")]
        # NaN where the passing targets share one best depth (a constant variable) or too few pass
        assert row["value"] == pytest.approx(expected, abs=1e-12, nan_ok=True) and row["n_used"] == len(used)
    print("spatial scores:", spatial["value"].round(3).to_dict())
    # The planted order is recovered over ROIs. Over vertices, the encoding null passes the targets of
    # the ROIs planted at the first layer (r about 0.7) and none of those planted at the third (r
    # about 0.2 over 60 images: median p 0.13-0.31), so the passing targets share one depth.
    assert spatial.loc[("act", "roi"), "value"] > 0.3
    act = depths[(depths["signal"] == "act") & depths["passes"]]
    first = [roi for roi, number in HCP_ROIS.items() if PLANTED_LAYER[number] == 0]
    assert len(act) > 50 and set(act["roi"]) <= set(first) and (act["best_depth"] == 0).all()
    tests = pd.read_parquet(out / "tables" / "tests.parquet")
    s1a = tests[(tests["dataset"] == "nsd") & (tests["test"] == "S1a") & (tests["signal"] == "act")].iloc[0]
    target = spatial.loc[("act", "target"), "value"]
    assert s1a["effect"] == pytest.approx(target, nan_ok=True)  # S1a follows spatial_unit


def test_summary_and_report_open_with_the_findings_and_deviations(paper_run):
    out = paper_run / "results" / "paper"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "brainprop"), "summary", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    for dataset in ("nsd", "things_meg", "things_eeg2"):
        assert f"{dataset} / resnet18 / grad" in done.stdout
    assert done.stdout.count("backprop signature: ") == 3
    assert "hierarchy.tmax_window: [0.0, null] (paper: [null, null])" in done.stdout
    summary = (out / "report" / "summary.rst").read_text()
    assert summary.startswith("Findings") and "Deviations from the reference study" in summary
    report = paper_run / "report.html"
    made = _snakemake(paper_run, paper_run / "config.yaml", "--report", str(report))
    assert made.returncode == 0, made.stderr[-3000:]
    html = report.read_text()
    first = html.find("The backprop signature per dataset")
    assert 0 < first < html.find("Deviations from the reference study") < html.find("The question and the workflow")


def test_things_eeg2_runs_through_every_stage(paper_run):
    out = paper_run / "results" / "paper"
    enc = pd.read_parquet(out / "tables" / "encoding.parquet")
    eeg = enc[enc["dataset"] == "things_eeg2"]
    assert set(eeg["subject"]) == {"sub-01", "sub-02"} and eeg["time"].nunique() == 100
    assert eeg["noise_ceiling"].dropna().between(0, 1).all()
    tm = pd.read_parquet(out / "tables" / "tmax.parquet")
    assert set(tm.loc[tm["dataset"] == "things_eeg2", "subject"]) == {"sub-01", "sub-02"}
    tests = pd.read_parquet(out / "tables" / "tests.parquet")
    assert {"T1", "T2"} <= set(tests.loc[tests["dataset"] == "things_eeg2", "test"])
    check = pd.read_parquet(out / "brain" / "things_eeg2" / "check.parquet")
    assert check["status"].eq("found").all() and len(check) == 2 * 5
    manifest = pd.read_parquet(out / "stimuli" / "things_eeg2_images" / "manifest.parquet")
    assert set(manifest["group"]) == set(EEG2_TRAIN_CONCEPTS) | set(EEG2_TEST_CONCEPTS) and len(manifest) == 16
    samples = pd.read_parquet(out / "brain" / "things_eeg2" / "sub-02" / "samples.parquet")
    assert samples["n_trials"].tolist() == [4] * 12 + [6] * 4
    shared = list((out / "logs" / "encode" / "things_eeg2").rglob("shared.log"))
    assert len(shared) == 2 * 3  # act, grad × 3 layers, not per subject
    assert "2 subjects share one decomposition per fold" in shared[0].read_text()
