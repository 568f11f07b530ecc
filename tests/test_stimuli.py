"""Tests of the demo image set, its manifest and the `stimuli` entry point."""

from __future__ import annotations

import hashlib
import shutil
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainprop.stimuli import demo as demo_images
from brainprop.stimuli.demo import MIN_MEAN_ABS_DIFF, make_demo_images
from brainprop.stimuli.files import MANIFEST_COLUMNS, load_images, load_manifest, verify_manifest, write_manifest
from brainprop.stimuli.rules import build_imageset

SPEC = {"kind": "demo", "n_images": 240, "size": 112}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The default demo set built once, with outbound connections refused (it must be offline)."""
    out_dir = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as patch:

        def refuse(*args, **kwargs):
            raise OSError("network disabled in tests")

        patch.setattr(socket.socket, "connect", refuse)
        return build_imageset(out_dir, SPEC, seed=0)


@pytest.fixture(scope="module")
def pixels(demo) -> np.ndarray:
    """All images as uint8, shape (n_images, size, size, 3), read back from the PNG files."""
    manifest = load_manifest(demo)
    return np.stack([np.asarray(Image.open(demo.parent / p)) for p in manifest["path"]])


def test_manifest_columns_order_and_paths(demo):
    manifest = load_manifest(demo)
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert len(manifest) == 240
    assert manifest["image_id"].tolist() == [f"img{i:04d}" for i in range(240)]
    assert manifest["path"].tolist() == [f"images/{i}.png" for i in manifest["image_id"]]
    assert all(pd.api.types.is_integer_dtype(manifest[c]) for c in ("width", "height"))
    assert demo == demo.parent / "manifest.parquet"


def test_hashes_match_file_bytes_and_are_distinct(demo):
    manifest = load_manifest(demo)
    actual = [hashlib.sha256((demo.parent / p).read_bytes()).hexdigest() for p in manifest["path"]]
    assert actual == manifest["sha256"].tolist()
    assert manifest["sha256"].nunique() == len(manifest)


def test_images_are_rgb_of_the_requested_size(demo):
    manifest = load_manifest(demo)
    for relative in manifest["path"]:
        with Image.open(demo.parent / relative) as image:
            assert image.mode == "RGB" and image.size == (112, 112)
    assert (manifest["width"] == 112).all() and (manifest["height"] == 112).all()


def test_no_near_duplicates_at_full_resolution(pixels):
    flat = pixels.reshape(len(pixels), -1).astype(np.float32)
    closest = min(np.abs(flat[i] - flat[i + 1 :]).mean(axis=1).min() for i in range(len(flat) - 1))
    assert closest > MIN_MEAN_ABS_DIFF


def test_groups_are_many_and_crops_share_their_photograph(demo):
    manifest = load_manifest(demo)
    counts = manifest["group"].value_counts()
    assert len(counts) >= 20 and counts.min() >= 5  # grouped 5-fold CV needs both
    # all bundled photographs loaded offline (none skipped) and all texture families present
    assert set(counts.index) == set(demo_images._PHOTOS) | set(demo_images._TEXTURES)
    assert all(src.startswith(f"{grp} ") for grp, src in zip(manifest["group"], manifest["source"]))


def test_grey_photographs_become_grey_rgb_and_colour_ones_stay_colour(demo, pixels):
    groups = load_manifest(demo)["group"].to_numpy()
    camera = pixels[groups == "camera"].astype(int)
    assert (camera[..., 0] == camera[..., 1]).all() and (camera[..., 1] == camera[..., 2]).all()
    astronaut = pixels[groups == "astronaut"].astype(int)
    assert np.abs(astronaut[..., 0] - astronaut[..., 2]).mean() > 10


def test_low_level_statistics_vary(pixels):
    brightness = pixels.mean(axis=(1, 2, 3))
    edges = np.abs(np.diff(pixels.astype(float).mean(axis=3), axis=2)).mean(axis=(1, 2))
    assert brightness.std() > 15  # dark sky to white page
    assert edges.max() / edges.min() > 10  # blurry blobs to gravel


def test_same_arguments_give_identical_bytes(demo, tmp_path):
    again = load_manifest(build_imageset(tmp_path, SPEC, seed=0))
    first = load_manifest(demo)
    pd.testing.assert_frame_equal(again, first)


def test_other_seed_gives_other_images(tmp_path):
    a = make_demo_images(tmp_path / "a", n_images=30, seed=0)
    b = make_demo_images(tmp_path / "b", n_images=30, seed=1)
    assert not set(a["sha256"]) & set(b["sha256"])


def test_smaller_set_is_a_prefix_of_the_larger(demo, tmp_path):
    small = make_demo_images(tmp_path, n_images=30, size=112, seed=0)
    pd.testing.assert_frame_equal(small, load_manifest(demo).iloc[:30])


def test_verify_manifest_finds_modified_and_missing_files(demo, tmp_path):
    copy = tmp_path / "set"
    shutil.copytree(demo.parent, copy)
    manifest_path = copy / "manifest.parquet"
    assert verify_manifest(manifest_path) == []
    modified, missing = copy / "images" / "img0003.png", copy / "images" / "img0007.png"
    image = np.asarray(Image.open(modified)).copy()
    image[0, 0] ^= 1
    Image.fromarray(image).save(modified)
    missing.unlink()
    problems = verify_manifest(manifest_path)
    assert len(problems) == 2
    assert str(modified) in problems[0] and "sha256" in problems[0]
    assert str(missing) in problems[1] and "missing" in problems[1]


def test_load_images_is_ordered_and_rgb(demo):
    ids = [image_id for image_id, _ in load_images(demo)]
    assert ids == load_manifest(demo)["image_id"].tolist()
    subset = list(load_images(demo, ids=["img0005", "img0002"]))
    assert [i for i, _ in subset] == ["img0002", "img0005"]
    assert all(image.mode == "RGB" and image.size == (112, 112) for _, image in subset)


def test_load_images_rejects_unknown_ids(demo):
    with pytest.raises(ValueError, match="img9999"):
        load_images(demo, ids=["img0001", "img9999"])  # checked at the call, not lazily


def test_manifest_round_trip_and_duplicate_ids(tmp_path):
    manifest = make_demo_images(tmp_path, n_images=4, size=32)
    write_manifest(tmp_path / "manifest.parquet", manifest)
    pd.testing.assert_frame_equal(load_manifest(tmp_path / "manifest.parquet"), manifest)
    with pytest.raises(ValueError, match="img0000"):
        write_manifest(tmp_path / "bad.parquet", pd.concat([manifest, manifest.iloc[:1]]))


def test_manifest_is_written_after_the_images(demo):
    images = max(p.stat().st_mtime_ns for p in (demo.parent / "images").glob("*.png"))
    assert demo.stat().st_mtime_ns >= images


def test_unknown_kind_lists_valid_kinds(tmp_path):
    with pytest.raises(ValueError, match=r"'nsd_images'.*\['dataset', 'demo'\]"):
        build_imageset(tmp_path, {"kind": "nsd_images"}, seed=0)
    assert not (tmp_path / "manifest.parquet").exists()


def test_unknown_spec_key_is_named(tmp_path):
    with pytest.raises(ValueError, match="n_imgs"):
        build_imageset(tmp_path, {"kind": "demo", "n_imgs": 10}, seed=0)


@pytest.mark.parametrize("kwargs, bad", [({"n_images": 0}, "n_images=0"), ({"size": 8}, "size=8")])
def test_bad_arguments_are_named(tmp_path, kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        make_demo_images(tmp_path, **kwargs)
