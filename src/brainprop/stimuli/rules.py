"""Entry point of the stimuli rule: an image set of any kind (a registry of builders), written with its manifest."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from .demo import make_demo_images
from .files import write_manifest

__all__ = ["IMAGESET_KINDS", "build_imageset", "run_stimuli"]

log = logging.getLogger(__name__)


def _build_demo(out_dir: Path, seed: int, n_images: int = 240, size: int = 112) -> pd.DataFrame:
    """The offline demo set (`make_demo_images`)."""
    return make_demo_images(out_dir, n_images=n_images, size=size, seed=seed)


def _build_dataset(out_dir: Path, seed: int, dataset: str, entry: dict) -> pd.DataFrame:
    """The images a real dataset's selected subjects saw (`brainprop.brain.datasets.build_manifest`)."""
    from ..brain.datasets import build_manifest

    return build_manifest(out_dir, entry, dataset)


# image set kind -> builder(out_dir, seed, **spec without "kind") returning the manifest
IMAGESET_KINDS: dict[str, Callable[..., pd.DataFrame]] = {
    "demo": _build_demo,
    "dataset": _build_dataset,
}


def build_imageset(out_dir: str | os.PathLike, spec: dict, seed: int) -> Path:
    """Write an image set's images, then `out_dir/manifest.parquet`; return the manifest path.

    `spec` is the config entry of the image set, e.g. ``{"kind": "demo", "n_images": 240, "size": 112}``.
    """
    params = dict(spec)
    kind = params.pop("kind", None)
    if kind not in IMAGESET_KINDS:
        raise ValueError(f"image set kind {kind!r} is unknown; expected one of {sorted(IMAGESET_KINDS)}")
    builder = IMAGESET_KINDS[kind]
    allowed = set(inspect.signature(builder).parameters) - {"out_dir", "seed"}
    extra = sorted(set(params) - allowed)
    if extra:
        raise ValueError(f"image set kind {kind!r} does not take {extra}; expected keys among {sorted(allowed)}")
    out_dir = Path(out_dir)
    manifest = builder(out_dir, seed, **params)
    manifest_path = out_dir / "manifest.parquet"
    write_manifest(manifest_path, manifest, metadata={"imageset": {"kind": kind, **params}, "seed": seed})
    return manifest_path


def run_stimuli(*, inputs, outputs, params) -> None:
    """The stimuli rule: an image set's images and manifest; a real dataset's only after its data check."""
    check = getattr(inputs, "check", None)
    if check:
        from ..brain.files import load_check

        load_check(check)
    path = build_imageset(Path(outputs.manifest).parent, params.spec, params.seed)
    log.info("image set written: %s", path)
