"""Real-dataset readers against miniature roots in the published formats (tests/fixtures/datasets.py)."""

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from fixtures.datasets import (
    REPEATS,
    TRIALS_PER_SESSION,
    dataset_entry,
    nsd_design,
    write_algonauts,
    write_nsd,
    write_things_fmri,
    write_things_meg,
)
from fixtures.timing import reference_resample

from brainprop.brain import datasets as D
from brainprop.brain.datasets import nsd as nsd_reader
from brainprop.brain.datasets._common import kknc_ncsnr, nc_from_ncsnr
from brainprop.brain.datasets.geometry import fsaverage_coordinates, roi_distances
from brainprop.brain.rules import run_brain, run_check
from brainprop.config import ConfigError, validate_config
from brainprop.stimuli.rules import build_imageset

entry = dataset_entry


def read(ds: dict, subject: str, out: Path):
    manifest = D.build_manifest(out, ds, "d")
    seen, Y, targets, counts = D.reader(ds["kind"]).read_subject(
        Path(ds["root"]), ds, subject, manifest["image_id"].tolist()
    )
    return manifest, seen, Y, targets, counts


def session_zscore_mean(trials: np.ndarray, sessions: np.ndarray, ids: np.ndarray, order: list) -> np.ndarray:
    """Independent reference: scipy z-score per session, then the mean of each image's trials."""
    z = np.empty_like(trials, dtype=np.float64)
    for s in np.unique(sessions):
        z[sessions == s] = scipy.stats.zscore(trials[sessions == s].astype(np.float64), axis=0)
    return np.stack([z[ids == i].mean(0) for i in order])


@pytest.fixture(scope="module")
def nsd_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("nsd")
    return root, write_nsd(root)


# ---------------------------------------------------------------- NSD


def test_expdesign_is_one_based(nsd_root):
    root, planted = nsd_root
    design = nsd_reader.expdesign(root)
    assert design["masterordering"].shape == (30000,)
    ids = nsd_reader.trial_images(design, 1, 2, TRIALS_PER_SESSION)
    raw = nsd_design()
    ten_k = raw["masterordering"][0, TRIALS_PER_SESSION : 2 * TRIALS_PER_SESSION]
    np.testing.assert_array_equal(ids, raw["subjectim"][0, ten_k - 1] - 1)
    np.testing.assert_array_equal(ids, planted["nsd_ids"][TRIALS_PER_SESSION:])


def test_nsd_fsaverage_zscored_within_session_and_averaged(nsd_root, tmp_path):
    root, planted = nsd_root
    ds = entry("nsd", root, ["subj01"], sessions=[1, 2])
    manifest, seen, Y, targets, _ = read(ds, "subj01", tmp_path)
    assert seen == manifest["image_id"].tolist() and len(seen) == len(REPEATS)
    ids = np.array([f"nsd{i:05d}" for i in planted["nsd_ids"]])
    sessions = np.repeat([1, 2], TRIALS_PER_SESSION)
    for hemi in ("lh", "rh"):
        sel = (targets["hemi"] == hemi).to_numpy()
        vertices = targets.loc[sel, "index"].to_numpy()
        expected = session_zscore_mean(planted["surface"][hemi][:, vertices], sessions, ids, seen)
        np.testing.assert_allclose(Y[:, sel], expected, rtol=1e-4, atol=1e-5)  # no ÷300 for float .mgh
        labels = planted["surface"][f"{hemi}_labels"]
        assert (labels[vertices] > 0).all()
    assert sorted(targets["roi"].unique()) == ["FFA-1", "V1d", "V1v", "hV4"]
    np.testing.assert_allclose(
        targets[["x", "y", "z"]].to_numpy()[:5], fsaverage_coordinates("lh", targets["index"].to_numpy()[:5])
    )


def test_nsd_noise_ceiling_mixed_repetitions(nsd_root, tmp_path):
    root, planted = nsd_root
    ds = entry("nsd", root, ["subj01"], sessions=[1, 2])
    _, _, _, targets, counts = read(ds, "subj01", tmp_path)
    assert sorted(counts.tolist()) == sorted(REPEATS.values())
    a, b, c = 4, 4, 4  # images seen once, twice, three times
    inverse_n = (a / 1 + b / 2 + c / 3) / (a + b + c)
    lh = targets[targets["hemi"] == "lh"]
    snr = planted["surface"]["lh_ncsnr"][lh["index"].to_numpy()].astype(np.float64)
    np.testing.assert_allclose(lh["noise_ceiling"], snr**2 / (snr**2 + inverse_n), rtol=1e-6)


def test_nsd_volume_hdf5_reversed_axes_and_int16_scaling(nsd_root, tmp_path):
    root, planted = nsd_root
    vol = planted["volume"]
    results = {}
    for fmt in ("hdf5", "nii.gz"):
        ds = entry(
            "nsd",
            root,
            ["subj01"],
            sessions=[1, 2],
            space="func1pt8mm",
            format=fmt,
            rois=["prf-visualrois"],
            zscore=False,
        )
        results[fmt] = read(ds, "subj01", tmp_path / fmt)
    _, seen, Y, targets, _ = results["hdf5"]
    np.testing.assert_array_equal(Y, results["nii.gz"][2])
    ijk = targets[["i", "j", "k"]].to_numpy()
    psc = vol["raw"][:, ijk[:, 0], ijk[:, 1], ijk[:, 2]] / 300.0  # (T, X, Y, Z) int16 ÷ 300
    ids = np.array([f"nsd{i:05d}" for i in planted["nsd_ids"]])
    expected = np.stack([psc[ids == i].mean(0) for i in seen])
    np.testing.assert_allclose(Y, expected, rtol=1e-5, atol=1e-6)
    assert set(targets.loc[targets["i"] < 2, "hemi"]) == {"lh"} and set(targets.loc[targets["i"] >= 2, "hemi"]) == {
        "rh"
    }
    assert (vol["roi"][ijk[:, 0], ijk[:, 1], ijk[:, 2]] > 0).all()
    assert set(targets["roi"]) == {"V1v", "V1d", "V2v", "hV4"}


def test_nsd_shared_images_only(nsd_root, tmp_path):
    root, planted = nsd_root
    ds = entry("nsd", root, ["subj01"], sessions=[1, 2], images="shared")
    manifest = D.build_manifest(tmp_path, ds, "d")
    shared = set(nsd_design()["sharedix"].ravel() - 1) & set(planted["nsd_ids"])
    assert set(manifest["image_id"]) == {f"nsd{i:05d}" for i in shared}
    from PIL import Image

    first = manifest.iloc[0]
    pixels = np.asarray(Image.open(tmp_path / first["path"]))
    np.testing.assert_array_equal(pixels, planted["brick"][int(first["image_id"][3:])])


def test_nsd_nan_vertex_is_excluded_and_counted(tmp_path, caplog):
    root = tmp_path / "root"
    write_nsd(root, nan_vertex=5)
    ds = entry("nsd", root, ["subj01"], sessions=[1, 2])
    build_imageset(tmp_path / "img", {"kind": "dataset", "dataset": "d", "entry": ds}, seed=0)
    names = {k: str(tmp_path / "s" / f) for k, f in (("Y", "Y.npy"), ("targets", "targets.parquet"))}
    outputs = SimpleNamespace(**names, samples=str(tmp_path / "s" / "samples.parquet"))
    inputs = SimpleNamespace(manifest=str(tmp_path / "img" / "manifest.parquet"), check=str(tmp_path / "check.parquet"))
    run_check(
        inputs=SimpleNamespace(),
        outputs=SimpleNamespace(report=inputs.check),
        params=SimpleNamespace(entry=ds, dataset="d"),
    )
    params = SimpleNamespace(spec={"entry": ds}, seed=0, dataset="d", subject="subj01")
    with caplog.at_level("WARNING"):
        run_brain(inputs=inputs, outputs=outputs, params=params)
    assert "1 of 340 targets excluded" in caplog.text
    Y = np.load(outputs.Y)
    assert Y.shape == (12, 339) and np.isfinite(Y).all()
    table = pd.read_parquet(outputs.targets)
    assert list(table.columns) == list(D.TARGET_COLUMNS) and table["atlas"].eq("nsd").all()
    assert table["roi_distance_mm"].notna().all() and table.groupby("roi")["roi_distance_mm"].nunique().eq(1).all()


def test_nsd_check_reports_missing_session_and_truncated_file(tmp_path):
    root = tmp_path / "root"
    write_nsd(root)
    betas = root / "nsddata_betas" / "ppdata" / "subj01" / "func1pt8mm" / "betas_fithrf_GLMdenoise_RR"
    data = (betas / "betas_session02.hdf5").read_bytes()
    (betas / "betas_session02.hdf5").write_bytes(data[: len(data) // 3])
    ds = entry("nsd", root, ["subj01"], sessions=[1, 2, 3], space="func1pt8mm", rois=["prf-visualrois"])
    report = D.check_dataset(ds)
    status = dict(zip(report["item"], report["status"]))
    assert status["session 01"] == "found"
    assert status["session 02"] == "mismatch" and status["session 03"] == "missing"
    with pytest.raises(D.DatasetError, match="betas_session03.hdf5"):
        outputs = SimpleNamespace(report=str(tmp_path / "check.parquet"))
        run_check(inputs=SimpleNamespace(), outputs=outputs, params=SimpleNamespace(entry=ds, dataset="d"))
    assert not (tmp_path / "check.parquet").exists()


def test_nsd_check_image_id_without_image(tmp_path):
    import h5py

    root = tmp_path / "root"
    write_nsd(root)
    path = root / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"
    with h5py.File(path, "r+") as f:
        brick = f["imgBrick"][:5]
        del f["imgBrick"]
        f.create_dataset("imgBrick", data=brick)
    report = D.check_dataset(entry("nsd", root, ["subj01"], sessions=[1, 2]))
    bad = report[report["item"] == "images"]
    assert bad["status"].tolist() == ["mismatch"] and "without an image" in bad["detail"].iloc[0]


def test_noise_ceiling_formulas_against_closed_form():
    rng = np.random.default_rng(0)
    n_targets, reps, images = 3, 12, 4000
    signal_sd, noise_sd = np.array([1.0, 0.5, 0.2]), 1.0
    signal = rng.standard_normal((n_targets, 1, images)) * signal_sd[:, None, None]
    data = signal + noise_sd * rng.standard_normal((n_targets, reps, images))
    # after z-scoring, noise var = n²/(s²+n²): ncsnr = s/n
    np.testing.assert_allclose(kknc_ncsnr(data), signal_sd / noise_sd, rtol=0.05)
    counts = np.array([1] * 5 + [2] * 3 + [3] * 2)
    expected = 0.25 / (0.25 + (5 / 1 + 3 / 2 + 2 / 3) / 10)
    assert nc_from_ncsnr(np.array([0.5]), counts)[0] == pytest.approx(expected)


def test_reference_v1_is_v1v_union_v1d():
    targets = pd.DataFrame(
        {"roi": ["V1v", "V1d", "hV4"], "x": [-10.0, 10.0, 30.0], "y": [0.0, 2.0, 0.0], "z": [0.0, 0.0, 0.0]}
    )
    dist = roi_distances(targets, "V1")
    assert dist.tolist() == pytest.approx([1.0, 1.0, np.hypot(20.0, 1.0)])


# ---------------------------------------------------------------- Algonauts


def test_algonauts_rows_columns_and_names(tmp_path):
    planted = write_algonauts(tmp_path / "root")
    ds = entry("nsd_algonauts", tmp_path / "root", ["subj01"], rois=["prf-visualrois"])
    manifest, seen, Y, targets, _ = read(ds, "subj01", tmp_path / "out")
    assert seen == [f"nsd{i:05d}" for i in planted["nsd_ids"]] == manifest["image_id"].tolist()
    lh = (targets["hemi"] == "lh").to_numpy()
    labels = planted["lh"]["labels"]
    np.testing.assert_array_equal(
        Y[:, lh], planted["lh"]["data"][:, labels > 0][:, np.argsort(labels[labels > 0], kind="stable")]
    )
    assert targets.loc[lh, "roi"].value_counts().to_dict() == {"V1v": 10, "V1d": 10, "hV4": 5}
    first = planted["lh"]["vertices"][0]
    np.testing.assert_allclose(targets.loc[lh, ["x", "y", "z"]].to_numpy()[0], fsaverage_coordinates("lh", [first])[0])
    assert targets["noise_ceiling"].isna().all()


# ---------------------------------------------------------------- THINGS-fMRI


def test_things_fmri_table_format(tmp_path):
    planted = write_things_fmri(tmp_path / "root")
    ds = entry("things_fmri", tmp_path / "root", ["sub-01"], rois=["V1", "hV4", "FFA", "IT"])
    manifest, seen, Y, targets, counts = read(ds, "sub-01", tmp_path / "out")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = pd.read_hdf(tmp_path / "root" / "betas_csv" / "sub-01_ResponseData.h5")
    responses = frame.drop(columns="voxel_id").to_numpy().T  # (trials, voxels), pandas' own reading
    voxels = pd.read_csv(tmp_path / "root" / "betas_csv" / "sub-01_VoxelMetadata.csv")
    assert "glasser-p9-\n46v" in voxels.columns  # the newline column names survive
    stim = planted["stimuli"]
    ids = stim["stimulus"].str.replace(".jpg", "").to_numpy()
    rows = np.concatenate([np.flatnonzero(voxels[c] == 1) for c in ("V1", "hV4", "lFFA", "rFFA", "IT")])
    expected = session_zscore_mean(responses[:, rows], stim["session"].to_numpy(), ids, seen)
    np.testing.assert_allclose(Y, expected, rtol=1e-4, atol=1e-5)
    assert dict(zip(seen, counts))["kiwi_01b"] == 3 and dict(zip(seen, counts))["dog_01b"] == 1
    assert targets.loc[targets["roi"] == "FFA", "hemi"].tolist() == ["lh"] * 6 + ["rh"] * 6
    v1 = targets[targets["roi"] == "V1"]
    world_x = planted["affine"][0, 0] * voxels.loc[v1.index, "voxel_x"] + planted["affine"][0, 3]
    assert (v1["hemi"] == np.where(world_x < 0, "lh", "rh")).all()
    test = stim["trial_type"].eq("test").to_numpy()
    z = np.empty_like(responses, dtype=np.float64)
    for s in (1, 2, 3):
        z[stim["session"] == s] = scipy.stats.zscore(responses[stim["session"] == s], axis=0)
    names = sorted(set(ids[test]))
    cube = np.stack([z[test & (ids == n)][:, rows] for n in names], axis=1).transpose(2, 0, 1)  # (vox, reps, img)
    np.testing.assert_allclose(targets["noise_ceiling"], nc_from_ncsnr(kknc_ncsnr(cube), counts), rtol=1e-4)
    assert manifest["group"].tolist() == [i.rsplit("_", 1)[0] for i in manifest["image_id"]]


def test_things_fmri_check_image_without_file(tmp_path):
    write_things_fmri(tmp_path)
    (tmp_path / "object_images" / "kiwi" / "kiwi_01b.jpg").unlink()
    report = D.check_dataset(entry("things_fmri", tmp_path, ["sub-01"]))
    row = report[report["item"] == "images"].iloc[0]
    assert row["status"] == "mismatch" and "kiwi_01b.jpg" in row["detail"]


# ---------------------------------------------------------------- THINGS-MEG


@pytest.fixture(scope="module")
def meg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("meg")
    return root, write_things_meg(root)


def test_things_meg_split_epochs_catch_and_averaging(meg_root, tmp_path):
    import mne

    root, planted = meg_root
    parts = sorted(p.name for p in (root / "derivatives" / "preprocessed").iterdir())
    assert "preprocessed_P1-epo-1.fif" in parts  # the fixture is split like the real files
    ds = entry("things_meg", root, ["P1"])
    _, seen, Y, targets, counts = read(ds, "P1", tmp_path)
    att = planted["attributes"]
    assert not any(i.startswith("catch") for i in seen) and len(seen) == 15
    # independent route: MNE Epochs methods on the whole file
    epochs = mne.read_epochs(root / "derivatives" / "preprocessed" / "preprocessed_P1-epo.fif", verbose="error")
    epochs = epochs[(att["trial_type"] != "catch").to_numpy()].load_data()
    epochs.filter(None, 20.0, phase="zero", fir_design="firwin", pad="edge", verbose="error")
    data = reference_resample(epochs.get_data(), 200.0, 30.0)  # scipy on the exact grid (docs/datasets.md, Timing)
    assert targets["time"].nunique() == data.shape[2] == 42
    flat = data.reshape(len(data), -1)
    z = (flat - flat.mean(0)) / flat.std(0)
    ids = att.loc[att["trial_type"] != "catch", "image_path"].str.split("/").str[-1].str.replace(".jpg", "").to_numpy()
    expected = np.stack([z[ids == i].mean(0) for i in seen])
    np.testing.assert_allclose(Y, expected, rtol=1e-3, atol=1e-4)
    assert dict(zip(seen, counts))["kiwi_01b"] == 3
    assert targets["sensor"].iloc[0] == epochs.ch_names[0] and targets["time"].iloc[0] == pytest.approx(-0.1)


def test_things_meg_missing_split_part_is_reported(meg_root, tmp_path):
    import shutil

    root, _ = meg_root
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    (copy / "derivatives" / "preprocessed" / "preprocessed_P1-epo-1.fif").unlink()
    report = D.check_dataset(entry("things_meg", copy, ["P1"]))
    row = report[report["item"] == "epochs"].iloc[0]
    assert row["status"] == "mismatch" and "split" in row["detail"]


# ---------------------------------------------------------------- config


def test_config_real_dataset_needs_root_and_its_image_set():
    config = {
        "run": "t",
        "stimuli": {"demo": {"kind": "demo"}},
        "models": {"m": {"timm_name": "resnet18"}},
        "datasets": {"d": {"kind": "nsd", "imageset": "demo", "subjects": ["subj01"]}},
    }
    with pytest.raises(ConfigError) as err:
        validate_config(config, check_models=False)
    assert "datasets.d.root" in str(err.value) and "datasets.d.imageset" in str(err.value)


def test_config_fills_kind_defaults():
    ds = entry("things_meg", Path("/x"), ["P1"])
    assert ds["things_meg"] == {
        "images": "object_images",
        "lowpass": 20.0,
        "sfreq": 30.0,
        "zscore": True,
        "route": "epochs",
        "bids": {"task": "main", "extension": ".ds", "sessions": None, "highpass": 0.1, "tmin": -0.5, "tmax": 3.0},
    }
    assert ds["atlas"] == ""
    assert entry("nsd", Path("/x"), ["subj01"])["nsd"]["space"] == "fsaverage"


def test_cli_check_reports_per_subject(tmp_path, capsys):
    import yaml

    from brainprop.cli import main

    write_things_fmri(tmp_path / "root")
    (tmp_path / "root" / "betas_csv" / "sub-01_VoxelMetadata.csv").unlink()
    config = {
        "run": "t",
        "stimuli": {"img": {"kind": "dataset", "dataset": "things"}},
        "models": {"m": {"timm_name": "resnet18"}},
        "datasets": {
            "things": {
                "kind": "things_fmri",
                "root": str(tmp_path / "root"),
                "imageset": "img",
                "subjects": ["sub-01", "sub-02"],
            }
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["check", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "sub-01: 4 found, 1 missing" in out and "sub-01_VoxelMetadata.csv" in out
    assert "sub-02: 0 found, 4 missing" in out


def test_things_meg_raw_bids_route(tmp_path):
    """The raw BIDS route (FIF written by mne_bids) against MNE alone: band-pass, epochs −0.5…3 s, 30 Hz."""
    import mne
    from fixtures.datasets import write_things_meg_bids

    planted = write_things_meg_bids(tmp_path / "root")
    ds = entry("things_meg", tmp_path / "root", ["P1"], route="bids", bids={"extension": ".fif"})
    assert D.check_dataset(ds)["status"].eq("found").all()
    _, seen, Y, targets, counts = read(ds, "P1", tmp_path / "out")
    assert targets["time"].min() == pytest.approx(-0.5) and targets["time"].max() == pytest.approx(3.0 - 1 / 30)
    assert dict(zip(seen, counts)) == {**{i: 1 for i in seen[:6]}, "kiwi_01b": 3, "owl_03n": 3}
    blocks, ids = [], []
    for session in (1, 2, 3):
        fif = (
            tmp_path
            / "root"
            / "sub-BIGMEG1"
            / f"ses-{session:02d}"
            / "meg"
            / f"sub-BIGMEG1_ses-{session:02d}_task-main_run-01_meg.fif"
        )
        raw = mne.io.read_raw_fif(fif, preload=True, verbose="error").filter(0.1, 20.0, verbose="error")
        trials = [(n, o) for s, k, n, o in planted["planted"] if s == session and k != "catch"]
        events = np.c_[
            [raw.first_samp + round(o * raw.info["sfreq"]) for _, o in trials],
            [0] * len(trials),
            np.arange(len(trials)) + 1,
        ]
        epochs = mne.Epochs(raw, events, tmin=-0.5, tmax=3.0, baseline=None, preload=True, verbose="error")
        blocks.append(reference_resample(epochs.get_data(), raw.info["sfreq"], 30.0).reshape(len(trials), -1))
        ids += [n.replace(".jpg", "") for n, _ in trials]
    flat, ids = np.concatenate(blocks), np.array(ids)
    z = (flat - flat.mean(0)) / flat.std(0)
    np.testing.assert_allclose(Y, np.stack([z[ids == i].mean(0) for i in seen]), rtol=1e-3, atol=1e-4)


def test_nsd_volume_hemispheres_without_lh_rh_files_use_the_midline(tmp_path, caplog):
    root = tmp_path / "root"
    write_nsd(root)
    roi_dir = root / "nsddata" / "ppdata" / "subj01" / "func1pt8mm" / "roi"
    for hemi in ("lh", "rh"):
        (roi_dir / f"{hemi}.prf-visualrois.nii.gz").unlink()
    ds = entry("nsd", root, ["subj01"], sessions=[1, 2], space="func1pt8mm", rois=["prf-visualrois"])
    with caplog.at_level("WARNING"):
        _, _, _, targets, _ = read(ds, "subj01", tmp_path / "out")
    assert "side of the midline" in caplog.text
    assert (targets["hemi"] == np.where(targets["i"] < 2, "lh", "rh")).all()


def test_division_by_300_only_for_int16():
    raw = np.array([[300, -600]], dtype=np.int16)
    np.testing.assert_array_equal(nsd_reader._scaled(raw), [[1.0, -2.0]])
    floats = np.array([[300.0, -1.5]], dtype=">f4")  # fsaverage .mgh: big-endian float32 % signal change
    np.testing.assert_array_equal(nsd_reader._scaled(floats), [[300.0, -1.5]])
    with pytest.raises(D.DatasetError, match="uint8"):
        nsd_reader._scaled(np.zeros((1, 1), np.uint8))


def test_noise_ceiling_of_infinite_and_missing_ncsnr():
    nc = nc_from_ncsnr(np.array([np.inf, np.nan, 0.0]), np.array([1, 3]))
    assert nc[0] == 1.0 and np.isnan(nc[1]) and nc[2] == 0.0
