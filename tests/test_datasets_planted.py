"""Planted layers per ROI are recovered from fixture roots read by the real-dataset readers.

Each fixture ROI is driven by one layer of a seeded random ResNet-18 (tests/fixtures/planting.py);
the reader's Y and targets go through brainprop's encoding, and the best layer per ROI must be
the planted one. (NSD runs the same check through Snakemake in test_datasets_workflow.py.)
"""

from pathlib import Path

import numpy as np
from fixtures.datasets import dataset_entry as entry
from fixtures.datasets import write_algonauts, write_things_fmri
from fixtures.planting import best_layers, demo_images, planted_responses

from brainprop.brain import datasets as D


def _targets(ds: dict, targets) -> "object":
    return D._finish_targets(ds, targets, "fmri")


def test_algonauts_planted_layers(tmp_path):
    planted = {"V1v": 0, "V1d": 0, "hV4": 2}
    label_layer = {1: 0, 2: 0, 7: 2}
    pixels = demo_images(tmp_path / "demo", 60)

    def signal(paths: list[Path], labels: dict) -> dict:
        n_lh = len(labels["lh"])
        both = np.concatenate([labels["lh"], labels["rh"]])
        columns = {}
        for label, layer in label_layer.items():
            columns.setdefault(layer, []).extend(np.flatnonzero(both == label).tolist())
        out = planted_responses(paths, tmp_path / "plant", {k: np.array(v) for k, v in columns.items()}, len(both))
        return {"lh": out[:, :n_lh], "rh": out[:, n_lh:]}

    write_algonauts(tmp_path / "root", n_images=60, images=pixels, signal=signal)
    ds = entry("nsd_algonauts", tmp_path / "root", ["subj01"], rois=["prf-visualrois"])
    manifest = D.build_manifest(tmp_path / "out", ds, "d")
    seen, Y, targets, _ = D.reader("nsd_algonauts").read_subject(
        tmp_path / "root", ds, "subj01", manifest["image_id"].tolist()
    )
    files = [Path(p) for p in manifest.set_index("image_id").loc[seen, "path"]]
    assert best_layers(Y, _targets(ds, targets), files, tmp_path / "analysis") == planted


def test_things_fmri_planted_layers(tmp_path):
    planted = {"V1": 0, "hV4": 0, "FFA": 2, "IT": 2}
    pixels = demo_images(tmp_path / "demo", 123)

    def signal(paths: list[Path], voxels) -> np.ndarray:
        columns = {
            0: np.flatnonzero((voxels["V1"] + voxels["hV4"]) > 0),
            2: np.flatnonzero((voxels["lFFA"] + voxels["rFFA"] + voxels["IT"]) > 0),
        }
        return planted_responses(paths, tmp_path / "plant", columns, len(voxels))

    write_things_fmri(tmp_path / "root", extra_train=108, images=pixels, signal=signal)
    ds = entry("things_fmri", tmp_path / "root", ["sub-01"], rois=["V1", "hV4", "FFA", "IT"])
    manifest = D.build_manifest(tmp_path / "out", ds, "d")
    seen, Y, targets, _ = D.reader("things_fmri").read_subject(
        tmp_path / "root", ds, "sub-01", manifest["image_id"].tolist()
    )
    files = [Path(p) for p in manifest.set_index("image_id").loc[seen, "path"]]
    assert best_layers(Y, _targets(ds, targets), files, tmp_path / "analysis") == planted
