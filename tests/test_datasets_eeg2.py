"""THINGS-EEG2 reader against a miniature root in the published format (tests/fixtures/datasets.py)."""

import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from fixtures.datasets import (
    EEG2_CHANNELS,
    EEG2_TEST_CONCEPTS,
    EEG2_TRAIN_CONCEPTS,
    dataset_entry,
    write_things_eeg2,
)

from brainprop.brain import datasets as D
from brainprop.brain.datasets import things_eeg2
from brainprop.brain.datasets._common import kknc_ncsnr, split_half_ncsnr
from brainprop.brain.rules import run_check
from brainprop.config import validate_config
from brainprop.encoding.folds import folds_table

ROOT = Path(__file__).resolve().parents[1]
TRAIN_REPS, TEST_REPS = 4, 6


def read(ds: dict, subject: str, out: Path):
    manifest = D.build_manifest(out, ds, "d")
    seen, Y, targets, counts = D.reader("things_eeg2").read_subject(
        Path(ds["root"]), ds, subject, manifest["image_id"].tolist()
    )
    return manifest, seen, Y, targets, counts


def hand_kknc_nc(test_trials: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """NC by hand: z-score each repetition over images, noise SD from the variance over repetitions, mixed formula.

    test_trials: (images, reps, targets). NC = ncsnr² / (ncsnr² + mean_i 1/n_i), ncsnr = √(1 − noise²) / noise.
    """
    x = test_trials.astype(np.float64)
    z = (x - x.mean(axis=0, keepdims=True)) / x.std(axis=0, keepdims=True)
    noise = np.sqrt(z.var(axis=1, ddof=1).mean(axis=0))
    ncsnr = np.sqrt(np.clip(1 - noise**2, 0, None)) / noise
    return ncsnr**2 / (ncsnr**2 + np.mean(1.0 / counts))


@pytest.fixture(scope="module")
def eeg_root(tmp_path_factory):
    """sub-01 saved with np.save (float64), sub-02 with pickle.dump (float32), sub-03 one of each."""
    root = tmp_path_factory.mktemp("eeg2")
    planted = {}
    for seed, (subject, storage) in enumerate(
        (("sub-01", "npsave"), ("sub-02", "pickle"), ("sub-03", ("pickle", "npsave")))
    ):
        written = write_things_eeg2(
            root, seed=seed, subjects=(subject,), train_reps=TRAIN_REPS, test_reps=TEST_REPS, storage=storage
        )
        planted |= written
    return root, planted


@pytest.mark.parametrize("subject", ["sub-01", "sub-02", "sub-03"])  # np.save, pickle.dump, one of each
def test_things_eeg2_repetition_means_zscored_over_trials(eeg_root, tmp_path, subject):
    root, planted = eeg_root
    ds = dataset_entry("things_eeg2", root, [subject])
    manifest, seen, Y, targets, counts = read(ds, subject, tmp_path)
    train, test = planted[subject]["training"], planted[subject]["test"]
    assert (train.dtype, test.dtype) == {
        "sub-01": (np.float64, np.float64),
        "sub-02": (np.float32, np.float32),
        "sub-03": (np.float32, np.float64),
    }[subject]
    meta = planted["metadata"]
    assert seen == manifest["image_id"].tolist() == [f[:-4] for f in meta["train_img_files"] + meta["test_img_files"]]
    # plain NumPy: every trial flattened channel-major, z-scored with the mean and SD over all trials
    trials = np.concatenate([train.reshape(len(train) * TRAIN_REPS, -1), test.reshape(len(test) * TEST_REPS, -1)])
    centre, sd = trials.astype(np.float64).mean(0), trials.astype(np.float64).std(0)
    means = np.concatenate([train.mean(axis=1), test.mean(axis=1)]).reshape(len(seen), -1)
    np.testing.assert_allclose(Y, (means - centre) / sd, rtol=1e-4, atol=1e-5)
    assert counts.tolist() == [TRAIN_REPS] * len(train) + [TEST_REPS] * len(test)
    assert targets["sensor"].tolist() == list(np.repeat(EEG2_CHANNELS, 100))
    np.testing.assert_allclose(targets["time"].to_numpy()[:100], -0.2 + np.arange(100) / 100, atol=1e-9)
    expected_nc = hand_kknc_nc(test.reshape(len(test), TEST_REPS, -1), counts)
    np.testing.assert_allclose(targets["noise_ceiling"], expected_nc, rtol=1e-5, atol=1e-7)


def test_things_eeg2_manifest_groups_are_concepts_and_folds_keep_them_whole(eeg_root, tmp_path):
    root, _ = eeg_root
    manifest = D.build_manifest(tmp_path, dataset_entry("things_eeg2", root, ["sub-01"]), "d")
    assert manifest["group"].tolist() == [c for c in EEG2_TRAIN_CONCEPTS for _ in range(3)] + list(EEG2_TEST_CONCEPTS)
    assert manifest["source"].iloc[0] == "THINGS-EEG2 training_images/00001_aardvark/aardvark_01s.jpg"
    assert all(Path(p).is_file() for p in manifest["path"]) and manifest["width"].eq(24).all()
    folds = folds_table(manifest, 3, 0, grouped=True)
    assert folds.groupby("group")["fold"].nunique().eq(1).all() and folds["fold"].nunique() == 3


def test_things_eeg2_without_zscore_keeps_microvolt_means(eeg_root, tmp_path):
    root, planted = eeg_root
    _, _, Y, _, _ = read(dataset_entry("things_eeg2", root, ["sub-01"], zscore=False), "sub-01", tmp_path)
    train, test = planted["sub-01"]["training"], planted["sub-01"]["test"]
    np.testing.assert_allclose(Y[: len(train)], train.mean(axis=1).reshape(len(train), -1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(Y[len(train) :], test.mean(axis=1).reshape(len(test), -1), rtol=1e-5, atol=1e-6)


def test_things_eeg2_split_half_noise_ceiling_by_hand(eeg_root, tmp_path):
    """The official procedure written out: seeded random halves, r over images per target, then Spearman–Brown."""
    root, planted = eeg_root
    opts = {"method": "split_half", "iterations": 7, "seed": 3}
    ds = dataset_entry("things_eeg2", root, ["sub-01"], noise_ceiling=opts)
    _, _, _, targets, counts = read(ds, "sub-01", tmp_path)
    test = planted["sub-01"]["test"].reshape(4, TEST_REPS, -1)  # (images, reps, targets)
    rng = np.random.default_rng(3)
    r = np.zeros(test.shape[2])
    for _ in range(7):
        order = rng.permutation(TEST_REPS)
        a, b = test[:, order[:3]].mean(1), test[:, order[3:6]].mean(1)
        r += [np.corrcoef(a[:, t], b[:, t])[0, 1] for t in range(test.shape[2])]
    rho_half = np.clip(r / 7, 0, 1)
    rho_one = rho_half / (3 - 2 * rho_half)  # Spearman–Brown from a 3-trial mean to one trial
    snr2 = rho_one / (1 - rho_one)
    expected = snr2 / (snr2 + np.mean(1.0 / counts))
    np.testing.assert_allclose(targets["noise_ceiling"], expected, rtol=1e-4, atol=1e-7)  # float32 trials


def test_noise_ceiling_estimators_recover_a_planted_snr():
    """Both estimators of ncsnr against the closed form s/σ (signal SD over trial noise SD)."""
    rng = np.random.default_rng(0)
    s = np.array([0.3, 0.6, 1.2])
    signal = rng.standard_normal((3, 1, 3000)) * s[:, None, None]
    data = signal + rng.standard_normal((3, 20, 3000))  # (targets, reps, images), σ = 1
    np.testing.assert_allclose(split_half_ncsnr(data, iterations=20, seed=0), s, rtol=0.06)
    np.testing.assert_allclose(kknc_ncsnr(data), s, rtol=0.06)
    assert split_half_ncsnr(rng.standard_normal((2, 8, 500)), 10, 0).max() < 0.15  # no signal
    with pytest.raises(ValueError, match="at least 2 repetitions"):
        split_half_ncsnr(np.zeros((1, 1, 5)))


def test_things_eeg2_check_reports_broken_files_with_paths(tmp_path):
    root = tmp_path / "root"
    write_things_eeg2(root, subjects=("sub-01", "sub-02", "sub-04"))
    eeg = root / "preprocessed_data"
    data = (eeg / "sub-01" / "preprocessed_eeg_test.npy").read_bytes()
    (eeg / "sub-01" / "preprocessed_eeg_test.npy").write_bytes(data[: len(data) // 2])  # truncated
    (root / "image_set" / "training_images" / "00002_bee" / "bee_02n.jpg").unlink()
    (eeg / "sub-02" / "preprocessed_eeg_training.npy").unlink()
    short = np.load(eeg / "sub-04" / "preprocessed_eeg_training.npy", allow_pickle=True).item()
    short["preprocessed_eeg_data"] = short["preprocessed_eeg_data"][:-1]
    np.save(eeg / "sub-04" / "preprocessed_eeg_training.npy", short)
    with open(eeg / "sub-04" / "preprocessed_eeg_test.npy", "wb") as f:
        pickle.dump({"preprocessed_eeg_data": np.zeros((4, 6, 17, 100)), "ch_names": EEG2_CHANNELS}, f)
    ds = dataset_entry("things_eeg2", root, ["sub-01", "sub-02", "sub-04", "sub-11"])
    report = D.check_dataset(ds)
    status = {(r.subject, r.item): (r.status, r.path, r.detail) for r in report.itertuples()}
    assert status[("sub-01", "training eeg")][0] == "found"
    assert status[("sub-01", "test eeg")][:2] == ("mismatch", str(eeg / "sub-01" / "preprocessed_eeg_test.npy"))
    assert "np.load" in status[("sub-01", "test eeg")][2]
    images = status[("sub-01", "training images")]
    assert images[0] == "mismatch" and "00002_bee/bee_02n.jpg" in images[2] and images[1].endswith("training_images")
    assert status[("sub-01", "test images")][0] == "found"
    assert status[("sub-02", "training eeg")][:2] == ("missing", str(eeg / "sub-02" / "preprocessed_eeg_training.npy"))
    rows = [r for r in report.itertuples() if r.subject == "sub-04" and r.item == "training eeg"]
    assert [r.status for r in rows] == ["found", "mismatch"] and "11 images but 12 training images" in rows[1].detail
    assert (
        status[("sub-04", "test eeg")][0] == "mismatch"
        and "keys ['times'] missing" in status[("sub-04", "test eeg")][2]
    )
    assert status[("sub-11", "subject")][0] == "mismatch" and "sub-01 … sub-10" in status[("sub-11", "subject")][2]
    with pytest.raises(D.DatasetError, match="preprocessed_eeg_training.npy"):
        outputs = SimpleNamespace(report=str(tmp_path / "check.parquet"))
        run_check(inputs=SimpleNamespace(), outputs=outputs, params=SimpleNamespace(entry=ds, dataset="d"))
    assert not (tmp_path / "check.parquet").exists()


def test_things_eeg2_reader_refuses_rows_that_do_not_match_the_metadata(tmp_path):
    root = tmp_path / "root"
    write_things_eeg2(root)
    path = root / "preprocessed_data" / "sub-01" / "preprocessed_eeg_test.npy"
    content = np.load(path, allow_pickle=True).item()
    content["preprocessed_eeg_data"] = content["preprocessed_eeg_data"][:3]
    np.save(path, content)
    ds = dataset_entry("things_eeg2", root, ["sub-01"])
    with pytest.raises(D.DatasetError, match=r"preprocessed_eeg_test.npy: 3 images; expected one per test image"):
        read(ds, "sub-01", tmp_path / "out")
    np.save(path, np.arange(3))
    with pytest.raises(D.DatasetError, match="holds ndarray; expected a dict"):
        things_eeg2.load_pickled_dict(path, ("times",), "a dict")


def test_things_eeg2_is_registered_with_its_published_facts():
    assert D.modality("things_eeg2") == "meg"
    assert D.shares_image_order({"kind": "things_eeg2"})
    assert D.published_image_count("things_eeg2", 10) == 16_540 + 200
    ds = dataset_entry("things_eeg2", Path("/x"), ["sub-01"])
    assert ds["atlas"] == "" and ds["things_eeg2"] == {
        "eeg_dir": "preprocessed_data",
        "images": "image_set",
        "lowpass": None,
        "sfreq": None,
        "zscore": True,
        "noise_ceiling": {"method": "ncsnr", "iterations": 100, "seed": 0},
    }


def test_things_eeg2_config_validates_and_plans():
    from brainprop.plan import plan_run

    config = validate_config(yaml.safe_load((ROOT / "config" / "things_eeg2.yaml").read_text()), check_models=False)
    ds = config["datasets"]["things_eeg2"]
    assert ds["kind"] == "things_eeg2" and ds["subjects"] == [f"sub-{k:02d}" for k in range(1, 11)]
    plan = plan_run(config)
    assert plan.jobs["brain"] == 10 and plan.jobs["check"] == 1


def test_schema_kind_enum_equals_the_reader_registry():
    from brainprop.config import REAL_KIND_ATLAS

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    dataset = schema["properties"]["datasets"]["additionalProperties"]["properties"]
    assert set(dataset["kind"]["enum"]) == {"simulated", *D.DATASET_KINDS} == {"simulated", *REAL_KIND_ATLAS}
    assert {k for k in D.DATASET_KINDS if k in dataset} == set(D.DATASET_KINDS)  # each kind has its option block
