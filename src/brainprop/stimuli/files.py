"""The stimuli stage's file: the manifest that orders every image (and the images it names).

Paths are templates relative to the run folder `results/{run}` (`brainprop.run.Run.path`).
A manifest is a Parquet table, one row per image in image order, columns `MANIFEST_COLUMNS`;
`path` is relative to the manifest's folder (or absolute for a dataset's own image files).
Every other stage reads it through the functions here; a stage that reads the images themselves
takes the manifest from `load_verified_manifest`, which hashes every image file and refuses one
that differs from the manifest's `sha256` (the image changed after the manifest was written).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from PIL import Image

from ..io import CorruptFileError, read_table, write_table

__all__ = [
    "MANIFEST",
    "MANIFEST_COLUMNS",
    "count_images",
    "image_sha256",
    "load_images",
    "load_manifest",
    "load_verified_manifest",
    "verify_manifest",
    "write_manifest",
]

MANIFEST = "stimuli/{imageset}/manifest.parquet"
MANIFEST_COLUMNS = ("image_id", "path", "sha256", "group", "source", "width", "height")


def write_manifest(path: str | os.PathLike, manifest: pd.DataFrame, metadata: dict | None = None) -> None:
    """Write a manifest (columns `MANIFEST_COLUMNS`, in image order) to Parquet atomically."""
    missing = [column for column in MANIFEST_COLUMNS if column not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}; expected {list(MANIFEST_COLUMNS)}")
    if manifest["image_id"].duplicated().any():
        duplicated = manifest.loc[manifest["image_id"].duplicated(), "image_id"].tolist()
        raise ValueError(f"manifest has duplicated image_id values {duplicated[:5]}; expected unique ids")
    write_table(path, manifest, metadata=metadata)


def load_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest written by `write_manifest`, in image order."""
    manifest = read_table(path)
    missing = [column for column in MANIFEST_COLUMNS if column not in manifest.columns]
    if missing:
        raise ValueError(f"{path}: manifest lacks columns {missing}; expected {list(MANIFEST_COLUMNS)}")
    return manifest


def count_images(path: str | os.PathLike) -> int:
    """The number of images of a manifest (reads its image ids only)."""
    try:
        return len(pd.read_parquet(path, columns=["image_id"]))
    except (OSError, ValueError, KeyError) as err:
        raise CorruptFileError(f"{path}: cannot read this manifest's image ids ({err})", path) from err


def _sha256(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image_sha256(paths: list[Path], threads: int | None = None) -> list[str | None]:
    """SHA-256 of each image file (None for a missing one), hashed on a few threads (hashlib frees the GIL)."""

    def one(path: Path) -> str | None:
        return _sha256(path) if path.is_file() else None

    with ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, paths))


def _image_problems(path: str | os.PathLike, manifest: pd.DataFrame) -> tuple[list[str], list[str | None]]:
    """Problems of a manifest's image files (missing, hash mismatch) and each file's actual SHA-256."""
    root = Path(path).parent
    files = [root / relative for relative in manifest["path"]]
    actual = image_sha256(files)
    problems = []
    for image_path, image_id, expected, digest in zip(files, manifest["image_id"], manifest["sha256"], actual):
        if digest is None:
            problems.append(f"{image_path}: missing image file (image_id {image_id})")
        elif digest != expected:
            problems.append(
                f"{image_path}: sha256 {digest} does not match the manifest's {expected} "
                f"(image_id {image_id}); the file was modified after the manifest was written"
            )
    return problems, actual


def verify_manifest(path: str | os.PathLike) -> list[str]:
    """Return the problems of a manifest's images (missing file, hash mismatch); empty when all is well."""
    return _image_problems(path, load_manifest(path))[0]


def load_verified_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """The manifest, after checking every image file's SHA-256 against it (CorruptFileError naming each problem).

    Its `sha256` column then holds the hashes of the files' bytes as they are now, so whatever is
    keyed on it (the feature cache) follows the images themselves.
    """
    manifest = load_manifest(path)
    problems, actual = _image_problems(path, manifest)
    if problems:
        listed = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise CorruptFileError(
            f"{path}: {len(problems)} of its {len(manifest)} image files differ from the manifest (expected the "
            f"bytes it hashed when the stimuli rule wrote it):\n  {listed}\nNothing was extracted from them. "
            "To take the image files as they are now (a dataset's images) or to rebuild them (a generated "
            "image set), rerun the stimuli rule",
            path,
        )
    return manifest.assign(sha256=actual)


def load_images(
    manifest_path: str | os.PathLike, ids: Iterable[str] | None = None
) -> Iterator[tuple[str, Image.Image]]:
    """Yield (image_id, RGB PIL image) lazily in manifest order, optionally only for `ids`.

    The manifest and `ids` are checked at the call; files are opened one at a time while iterating.
    """
    manifest = load_manifest(manifest_path)
    if ids is not None:
        wanted = set(ids)
        unknown = sorted(wanted - set(manifest["image_id"]))
        if unknown:
            raise ValueError(
                f"image ids {unknown[:5]} are not in {manifest_path}; "
                f"expected ids such as {manifest['image_id'].iloc[0]!r}"
            )
        manifest = manifest[manifest["image_id"].isin(wanted)]
    return _iter_images(Path(manifest_path).parent, manifest)


def _iter_images(root: Path, manifest: pd.DataFrame) -> Iterator[tuple[str, Image.Image]]:
    """Open the manifest's images one by one, converted to RGB."""
    for image_id, relative in zip(manifest["image_id"], manifest["path"]):
        with Image.open(root / relative) as image:
            yield image_id, image.convert("RGB")
