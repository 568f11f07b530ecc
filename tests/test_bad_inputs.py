"""Bad inputs, in-process: every corrupt, replaced or stale file a job reads stops it with a message
that names the file (or config key), what was expected, and the one command that recovers.

The cases that need Snakemake itself (a recovery followed literally, a replaced checkpoint or
dataset file and the jobs a dry run then lists, a truncated layer table while the DAG is built) are in
tests/test_recovery.py and tests/test_datasets_workflow.py, on the finished tiny runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from fixtures.datasets import dataset_entry, write_nsd

from brainprop.contract import TABLES, validate_results
from brainprop.features.files import feature_path, load_features, save_samples
from brainprop.io import CorruptFileError, read_table, save_array, write_table

FORCERUN = "with `--forcerun {}` added"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file (independent of brainprop's own)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- feature files: checksums


def _extract_folder(root: Path, n_layers: int = 2, record: bool = True) -> Path:
    """An extract folder as the extract rule writes it: matrices, then samples.parquet with their SHA-256."""
    out = root / "extract"
    rng = np.random.default_rng(0)
    for k in range(n_layers):
        save_array(feature_path(out, "act", k), rng.standard_normal((10, 6)).astype(np.float32))
    sums = {f"act/{k:02d}.npy": file_sha256(feature_path(out, "act", k)) for k in range(n_layers)}
    samples = pd.DataFrame({"image_id": [f"img{i}" for i in range(10)], "group": [f"g{i}" for i in range(10)]})
    save_samples(out, samples, {"cache_key": "k"}, sha256=sums if record else None)
    return out


def _flip_one_value(path: Path) -> None:
    """Change one float of a .npy in place: same size, a valid file, other numbers (what a disk fault does)."""
    array = np.load(path, mmap_mode="r+")
    array[3, 2] += 1.0
    array.flush()
    del array


def test_a_feature_file_changed_in_place_is_refused_naming_the_folder_to_force(tmp_path):
    out = _extract_folder(tmp_path)
    reference = np.asarray(load_features(out, "act", 1)).copy()
    _flip_one_value(feature_path(out, "act", 1))
    assert np.load(feature_path(out, "act", 1)).shape == reference.shape  # still a readable array
    with pytest.raises(CorruptFileError) as err:
        load_features(out, "act", 1)
    message = str(err.value)
    assert str(feature_path(out, "act", 1)) in message and "differs from the" in message
    assert FORCERUN.format(out) in message  # the folder (the rule's output), not the file inside it
    np.testing.assert_array_equal(load_features(out, "act", 0), np.load(feature_path(out, "act", 0)))


def test_a_truncated_feature_file_names_the_same_recovery(tmp_path):
    out = _extract_folder(tmp_path)
    path = feature_path(out, "act", 0)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match=r"act/00\.npy: sha256 .* differs") as err:
        load_features(out, "act", 0)
    assert FORCERUN.format(out) in str(err.value)
    path.unlink()
    with pytest.raises(CorruptFileError, match=r"act/00\.npy: missing from the extract folder") as err:
        load_features(out, "act", 0)
    assert FORCERUN.format(out) in str(err.value)


def test_a_file_is_hashed_once_per_job_and_again_after_it_changes(tmp_path):
    out = _extract_folder(tmp_path)
    path = feature_path(out, "act", 0)
    load_features(out, "act", 0)
    load_features(out, "act", 0)  # verified: served from the per-process record
    before = path.stat().st_mtime_ns
    _flip_one_value(path)
    os.utime(path, ns=(before + 10**9, before + 10**9))  # a write always moves mtime on; make it visible
    with pytest.raises(CorruptFileError, match="differs"):
        load_features(out, "act", 0)


def test_a_folder_without_recorded_checksums_is_read_with_a_warning(tmp_path, caplog):
    out = _extract_folder(tmp_path, record=False)
    with caplog.at_level(logging.WARNING, logger="brainprop.io"):
        load_features(out, "act", 0)
    assert "no checksum recorded" in caplog.text and FORCERUN.format(out) in caplog.text


def test_y_changed_after_the_brain_rule_wrote_it_is_refused(tmp_path):
    from brainprop.brain.files import load_y, save_subject

    paths = SimpleNamespace(Y=tmp_path / "Y.npy", targets=tmp_path / "targets.parquet", samples=tmp_path / "s.parquet")
    samples = pd.DataFrame({"image_id": [f"img{i}" for i in range(5)], "group": ["a"] * 5})
    save_subject(paths, np.ones((5, 3), np.float32), pd.DataFrame({"target": np.arange(3)}), samples)
    np.testing.assert_array_equal(load_y(paths.Y, paths.samples), 1.0)
    Y = np.load(paths.Y, mmap_mode="r+")
    Y[2, :] = np.nan  # one image's row, as the hostile user did
    Y.flush()
    del Y
    with pytest.raises(CorruptFileError, match=r"Y\.npy: sha256 .* the brain rule recorded") as err:
        load_y(paths.Y, paths.samples)
    assert FORCERUN.format(paths.Y) in str(err.value)


# ---------------------------------------------------------------- tables: page checksums, metadata


def _flipped_reads(path: Path, positions: np.ndarray) -> list[str]:
    """For each byte position: flip it, read the table (brainprop's reader), say what happened, restore."""
    original, outcomes = path.read_bytes(), []
    for pos in positions:
        data = bytearray(original)
        data[pos] ^= 0xFF
        path.write_bytes(bytes(data))
        try:
            same = read_table(path).equals(pd.read_parquet(path.with_suffix(".orig")))
            outcomes.append("same" if same else "silently changed")
        except CorruptFileError as err:
            outcomes.append("crc" if "CRC" in str(err) else "error")
    path.write_bytes(original)
    return outcomes


def test_a_byte_changed_inside_a_table_is_an_error_not_a_silent_value(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pd.DataFrame({"r": np.linspace(0, 1, 2000), "roi": ["V1"] * 2000})
    ours, plain = tmp_path / "ours.parquet", tmp_path / "plain.parquet"
    write_table(ours, table)
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), plain)  # as tables were written before
    for path in (ours, plain):
        shutil.copy(path, path.with_suffix(".orig"))
    outcomes = {}
    for path in (ours, plain):
        chunk = pq.ParquetFile(path).metadata.row_group(0).column(0)  # the float column's pages
        start = (chunk.dictionary_page_offset or chunk.data_page_offset) + 40  # past the first page header
        end = start - 40 + chunk.total_compressed_size
        outcomes[path.name] = _flipped_reads(path, np.linspace(start, end - 1, 40).astype(int))
    assert "silently changed" in outcomes["plain.parquet"]  # what page checksums prevent
    assert set(outcomes["ours.parquet"]) <= {"crc", "error"} and "crc" in outcomes["ours.parquet"]
    data = bytearray(ours.read_bytes())
    chunk = pq.ParquetFile(ours).metadata.row_group(0).column(0)
    data[(chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size // 2] ^= 0xFF
    ours.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=r"ours\.parquet: cannot read this table ") as err:
        read_table(ours)
    assert FORCERUN.format(ours) in str(err.value)


def test_corrupted_parquet_metadata_names_the_file_and_the_rule_output(tmp_path):
    from brainprop.features.files import load_samples

    out = _extract_folder(tmp_path)
    path = out / "samples.parquet"
    data = path.read_bytes()
    path.write_bytes(data[:-12] + b"\x00" * 12)  # the footer: metadata length and magic bytes
    with pytest.raises(CorruptFileError, match=r"samples\.parquet: cannot read this table") as err:
        load_samples(out)
    assert FORCERUN.format(out) in str(err.value)
    with pytest.raises(CorruptFileError, match=r"samples\.parquet: cannot read this table's metadata") as err:
        load_features(out, "act", 0)
    assert FORCERUN.format(out) in str(err.value)


# ---------------------------------------------------------------- images: verified before extraction


def test_a_replaced_image_stops_extraction_before_anything_is_computed(demo_manifest, tmp_path):
    from brainprop.features.layers import resolve_layers
    from brainprop.features.rules import extract_to_folder
    from brainprop.stimuli.files import load_manifest, load_verified_manifest

    source, _ = demo_manifest
    root = tmp_path / "stimuli"
    shutil.copytree(source.parent, root)
    manifest = root / "manifest.parquet"
    table = load_manifest(manifest)
    assert (load_verified_manifest(manifest)["sha256"] == table["sha256"]).all()
    replaced = root / table["path"].iloc[4]
    shutil.copy(root / table["path"].iloc[5], replaced)  # another valid image under the same name
    layers = tmp_path / "layers.parquet"
    write_table(layers, resolve_layers("resnet18", {"n": 2}, {"mode": "mean"}, 32, {}))
    spec = {"timm_name": "resnet18", "weights": "random", "input_size": 32, "loss": "cross_entropy"}
    with pytest.raises(CorruptFileError) as err:
        extract_to_folder(manifest, layers, tmp_path / "out", spec, {"mode": "mean"}, seed=0, device="cpu")
    message = str(err.value)
    assert str(replaced) in message and "1 of its 12 image files differ" in message
    assert table["image_id"].iloc[4] in message and FORCERUN.format(manifest) in message
    assert not (tmp_path / "out").exists() and not (tmp_path / ".cache").exists()


# ---------------------------------------------------------------- checkpoints


def test_a_checkpoint_of_random_bytes_names_the_key_and_the_file(tmp_path):
    from brainprop.features.models import CheckpointError, load_model

    path = tmp_path / "model.pth"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    spec = {"timm_name": "resnet18", "weights": str(path), "input_size": 32}
    with pytest.raises(CheckpointError) as err:
        load_model(spec, 0, "models.mine.weights")
    message = str(err.value)
    assert message.startswith(f"models.mine.weights: {path} is not a checkpoint torch.load(weights_only=True)")
    assert "expected a PyTorch state dict file" in message and "run snakemake again" in message


def test_a_checkpoint_of_another_architecture_says_what_does_not_fit_and_the_right_file_loads(tmp_path):
    import torch

    from brainprop.features.models import CheckpointError, create_model, load_model

    path = tmp_path / "model.pth"
    torch.save(create_model("resnet18", "random", 0, 32).state_dict(), path)
    spec = {"timm_name": "regnetx_002", "weights": str(path), "input_size": 32}
    with pytest.raises(CheckpointError) as err:
        load_model(spec, 0, "models.mine.weights")
    message = str(err.value)
    assert f"models.mine.weights: checkpoint {path} does not fit timm model 'regnetx_002'" in message
    assert "of the model's" in message and "missing from the file (e.g. " in message
    assert "of the file's 122 tensors unknown to the model" in message
    # The advice followed: the right checkpoint at that path, and the same call succeeds.
    right = create_model("regnetx_002", "random", 1, 32)
    torch.save(right.state_dict(), path)
    loaded = load_model(spec, 0, "models.mine.weights")
    torch.testing.assert_close(loaded.state_dict(), right.state_dict())


# ---------------------------------------------------------------- brain data: a NaN in one image's row


def test_a_nan_row_in_the_targets_names_the_image_not_every_target(tmp_path):
    from brainprop.encoding.encode import encode
    from brainprop.encoding.folds import make_folds
    from brainprop.encoding.rules import _named_rows

    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((30, 5)), rng.standard_normal((30, 40))
    Y[17] = np.nan
    targets = pd.DataFrame(
        {"target": np.arange(40), "modality": "meg", "atlas": "", "roi": "", "hemi": "", "x": np.nan, "y": np.nan}
    ).assign(z=np.nan, roi_distance_mm=np.nan, sensor="MLC11", time=np.arange(40) / 100, noise_ceiling=np.nan)
    ids = np.array([f"img{i:03d}" for i in range(30)])
    with pytest.raises(ValueError) as err, _named_rows("results/r/brain/d/sub-01/Y.npy", ids):
        encode(X, Y, targets, make_folds(30, None, 3, 0), np.logspace(0, 2, 3))
    message = str(err.value)
    assert message.startswith("results/r/brain/d/sub-01/Y.npy: all 40 targets are unusable")
    assert "1 of the 30 image rows (rows [17]; 1 of the first 1 are non-finite in every target)" in message
    assert "image ids ['img017']" in message and FORCERUN.format("results/r/brain/d/sub-01/Y.npy") in message


def test_a_dataset_whose_image_has_no_finite_response_is_refused_by_the_brain_stage(tmp_path):
    import nibabel as nib

    from brainprop.brain.datasets import DatasetError, subject_data
    from brainprop.stimuli.files import load_manifest
    from brainprop.stimuli.rules import build_imageset

    root = tmp_path / "root"
    planted = write_nsd(root)
    ds = dataset_entry("nsd", root, ["subj01"], sessions=[1, 2], zscore=False)
    manifest = load_manifest(build_imageset(tmp_path / "img", {"kind": "dataset", "dataset": "d", "entry": ds}, 0))
    once = [t for t in range(12) if (planted["nsd_ids"] == planted["nsd_ids"][t]).sum() == 1][0]
    folder = root / "nsddata_betas" / "ppdata" / "subj01" / "fsaverage" / "betas_fithrf_GLMdenoise_RR"
    for hemi in ("lh", "rh"):  # that trial is NaN at every vertex
        path = folder / f"{hemi}.betas_session01.mgh"
        data = np.asarray(nib.load(path).dataobj).copy()
        data[..., once] = np.nan
        nib.save(nib.MGHImage(data, np.eye(4)), path)
    image_id = f"nsd{planted['nsd_ids'][once]:05d}"
    with pytest.raises(DatasetError) as err:
        subject_data(ds, "subj01", manifest)
    message = str(err.value)
    assert f"nsd subject subj01 at {root}: 1 image(s) ['{image_id}'] have no finite response" in message
    assert "(NaN or infinite in the files read: [" in message
    assert "Fix or replace those dataset files, then run snakemake again" in message


def test_a_misnamed_subject_folder_is_reported_with_the_name_found(tmp_path):
    from brainprop.brain.datasets import check_dataset

    root = tmp_path / "root"
    write_nsd(root)
    ppdata = root / "nsddata_betas" / "ppdata"
    (ppdata / "subj01").rename(ppdata / "subj1")
    report = check_dataset(dataset_entry("nsd", root, ["subj01"], sessions=[1, 2]))
    sessions = report[report["item"].str.startswith("session")]
    assert sessions["status"].eq("missing").all()
    assert sessions["detail"].str.contains(rf"{ppdata} has no 'subj01' but has \['subj1'\]").all()


def test_the_files_a_reader_reads_are_listed_from_the_config_alone(tmp_path):
    """What the workflow declares as inputs: a subject's betas, ROIs, ncsnr and the design; the image set's."""
    from brainprop.brain.datasets import dataset_files, image_set_files

    root = tmp_path / "root"
    write_nsd(root)
    ds = dataset_entry("nsd", root, ["subj01"], sessions=[1, 2])
    files = dataset_files(ds, "subj01")
    names = sorted(Path(f).name for f in files)
    assert names == sorted(
        [
            "nsd_expdesign.mat",
            *(f"{h}.betas_session0{s}.mgh" for h in ("lh", "rh") for s in (1, 2)),
            *(f"{h}.ncsnr.mgh" for h in ("lh", "rh")),
            *(f"{h}.Kastner2015.mgz" for h in ("lh", "rh")),
            "Kastner2015.mgz.ctab",
        ]
    )
    assert dataset_files(ds) == files  # every subject (one here)
    assert [Path(f).name for f in image_set_files(ds)] == ["nsd_expdesign.mat", "nsd_stimuli.hdf5"]
    (root / "nsddata_betas" / "ppdata" / "subj01").rename(root / "nsddata_betas" / "ppdata" / "subj1")
    assert [Path(f).name for f in dataset_files(ds, "subj01")] == [
        "nsd_expdesign.mat", "Kastner2015.mgz.ctab", "lh.Kastner2015.mgz", "rh.Kastner2015.mgz"
    ]  # fmt: skip  # the absent ones are the check rule's to report


def test_too_many_folds_for_the_groups_names_the_manifest_key_and_the_fix(tmp_path):
    from brainprop.encoding.rules import run_folds
    from brainprop.stimuli.files import write_manifest

    manifest = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(12)],
            "path": "x.png",
            "sha256": "0",
            "group": [f"photo{k % 3}" for k in range(12)],
            "source": "",
            "width": 1,
            "height": 1,
        }
    )
    write_manifest(tmp_path / "manifest.parquet", manifest)
    inputs = SimpleNamespace(manifest=str(tmp_path / "manifest.parquet"))
    with pytest.raises(ValueError) as err:
        run_folds(
            inputs=inputs,
            outputs=SimpleNamespace(folds=str(tmp_path / "folds.parquet")),
            params=SimpleNamespace(folds=5, seed=0, group_folds=True),
        )
    message = str(err.value)
    assert message.startswith(f"{inputs.manifest}: encoding.folds: 5 folds, but the images have 3 groups")
    assert "set encoding.folds to at most 3, or encoding.group_folds: false, then run snakemake again" in message


# ---------------------------------------------------------------- validate-results


def _table(name: str) -> pd.DataFrame:
    kinds = {"str": "", "int": 0, "float": 0.5}
    return pd.DataFrame({c: [kinds[k]] for c, k in TABLES[name].items()}).astype(
        {c: "int64" for c, k in TABLES[name].items() if k == "int"}
    )


def _tables(folder: Path, version: str = "1") -> Path:
    meta = {"contract_version": version, "config_hash": "h", "git_commit": "c", "packages": {}, "weights": {}}
    for name in TABLES:
        table = _table(name)
        if "modality" in table:
            table["modality"] = "fmri"
        for column, value in (("hemi", "both"), ("score", "spatial"), ("test", "T1"), ("alternative", "less")):
            if column in table:
                table[column] = value
        table = table.assign(comparison="models") if name == "comparisons" else table
        table = table.assign(choice="default") if name == "sensitivity" else table
        write_table(folder / f"{name}.parquet", table, {**meta, "seeds": {"seed": 0}})
    return folder


def test_validate_results_lists_an_unreadable_table_and_an_older_contract_instead_of_crashing(tmp_path):
    from brainprop.cli import main

    tables = _tables(tmp_path / "tables")
    assert validate_results(tables) == []
    (tables / "tmax.parquet").write_bytes(b"PAR1 not a table")
    write_table(tables / "cka.parquet", _table("cka"), {"contract_version": "0"})
    problems = validate_results(tables)
    assert any(p.startswith(f"{tables / 'tmax.parquet'}: unreadable (") for p in problems), problems
    assert f"{tables / 'cka.parquet'}: written under results contract version '0', this brainprop reads " in (
        "\n".join(problems)
    )
    assert all("`--forcerun tables`" in p for p in problems if "unreadable" in p or "contract version" in p)
    assert main(["validate-results", str(tmp_path)]) == 1  # a list on stderr, exit 1, no traceback
    nowhere = tmp_path / "nowhere"
    assert validate_results(nowhere) == [f"{nowhere}: not a folder; expected results/{{run}} or its tables/ folder"]
