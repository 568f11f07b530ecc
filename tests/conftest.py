"""Fixtures shared by several test modules."""

import pytest


@pytest.fixture(scope="session")
def demo_manifest(tmp_path_factory):
    """A 12-image demo manifest of 32 px images: (manifest path, manifest table)."""
    from brainprop.stimuli import make_demo_images, write_manifest

    root = tmp_path_factory.mktemp("stimuli")
    manifest = make_demo_images(root, n_images=12, size=32)
    write_manifest(root / "manifest.parquet", manifest)
    return root / "manifest.parquet", manifest
