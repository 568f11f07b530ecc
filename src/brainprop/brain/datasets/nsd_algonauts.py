"""The Algonauts 2023 Challenge repackaging of NSD (DATASETS.md §A.11).

Per subject: `training_split/training_fmri/{lh,rh}_training_fmri.npy` float32 (N_train, V_hemi),
already z-scored within session and averaged over repetitions by the challenge's preparation;
`training_split/training_images/train-{i:04d}_nsd-{nsdId:05d}.png` (row i-1 of the fMRI);
`roi_masks/{lh,rh}.all-vertices_fsaverage_space.npy` (which fsaverage vertices the challenge
columns are, in ascending order), `{lh,rh}.<family>_challenge_space.npy` (label per column)
and `mapping_<family>.npy` (a pickled dict label → name, the format's own choice).
The package has no per-vertex noise ceiling for the training images: noise_ceiling is NaN.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ._common import IMAGE_SUFFIXES, DatasetError, Finding, Probe, files_under, require_file
from .geometry import fsaverage_coordinates

__all__ = ["check", "images", "read_mapping", "read_subject"]

log = logging.getLogger("brainprop.datasets")

MODALITY = "fmri"
_HEMIS = ("lh", "rh")
_IMAGE_NAME = re.compile(r"train-(\d{4})_nsd-(\d{5})\.png")


def _opts(ds: dict) -> dict:
    return ds["nsd_algonauts"]


def _fmri_path(root: Path, subject: str, hemi: str) -> Path:
    return root / subject / "training_split" / "training_fmri" / f"{hemi}_training_fmri.npy"


def _image_dir(root: Path, subject: str) -> Path:
    return root / subject / "training_split" / "training_images"


def _masks(root: Path, subject: str) -> Path:
    return root / subject / "roi_masks"


def read_mapping(path: Path) -> dict[int, str]:
    """Label → ROI name from `mapping_<family>.npy` (np.save of a dict: a 0-d object array)."""
    require_file(path, "np.save of a dict {label: name}")
    try:
        obj = np.load(path, allow_pickle=True)  # the published format is a pickled dict
    except Exception as err:
        raise DatasetError(f"{path}: not a NumPy file ({err}); expected np.save of a dict") from err
    mapping = obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
    if not isinstance(mapping, dict):
        raise DatasetError(f"{path}: holds {type(mapping).__name__}; expected a dict label -> name")
    return {int(k): str(v) for k, v in mapping.items()}


def _image_files(root: Path, subject: str) -> list[tuple[int, str, Path]]:
    """(row, image_id, path) of the training images sorted by name, with names checked."""
    folder = _image_dir(root, subject)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: missing; expected train-NNNN_nsd-NNNNN.png images")
    files = sorted(folder.glob("*.png"))
    out = []
    for row, path in enumerate(files):
        match = _IMAGE_NAME.fullmatch(path.name)
        if not match or int(match.group(1)) != row + 1:
            raise DatasetError(
                f"{path}: expected the name train-{row + 1:04d}_nsd-NNNNN.png (row {row} sorted by name)"
            )
        out.append((row, f"nsd{int(match.group(2)):05d}", path))
    return out


def _n_columns(path: Path) -> tuple[int, int]:
    arr = np.load(require_file(path, "float32 (N_train, V_hemi) .npy"), mmap_mode="r")
    if arr.ndim != 2 or arr.dtype != np.float32:
        raise DatasetError(f"{path}: {arr.dtype} {arr.shape}; expected float32 (N_train, V_hemi)")
    return arr.shape


def _vertices(root: Path, subject: str, hemi: str) -> np.ndarray:
    path = _masks(root, subject) / f"{hemi}.all-vertices_fsaverage_space.npy"
    mask = np.load(require_file(path, "int (163842,) challenge vertex mask"))
    if mask.ndim != 1:
        raise DatasetError(f"{path}: shape {mask.shape}; expected (n_fsaverage_vertices,)")
    return np.flatnonzero(mask == 1)


def _labels(root: Path, subject: str, hemi: str, family: str, n: int) -> np.ndarray:
    path = _masks(root, subject) / f"{hemi}.{family}_challenge_space.npy"
    labels = np.load(require_file(path, f"int ({n},) labels of the challenge vertices"))
    if labels.shape != (n,):
        raise DatasetError(f"{path}: shape {labels.shape}; expected ({n},) like {hemi}_training_fmri.npy's columns")
    return labels.astype(np.int64)


def files(root: Path, ds: dict, subject: str) -> list[Path]:
    """The files `read_subject` reads for one subject (training fMRI, ROI masks, training image names)."""
    images = files_under(_image_dir(root, subject), IMAGE_SUFFIXES)
    return [*(_fmri_path(root, subject, h) for h in _HEMIS), *files_under(_masks(root, subject)), *images]


def image_files(root: Path, ds: dict) -> list[Path]:
    """The files `images` builds the image set from (every subject's training images)."""
    return [p for subject in ds["subjects"] for p in files_under(_image_dir(root, subject), IMAGE_SUFFIXES)]


def check(root: Path, ds: dict, subject: str) -> list[Finding]:
    """What is present for one subject, what is missing and what does not match the format."""
    probe = Probe(subject)
    found = probe.found

    files = probe("training images", _image_dir(root, subject), lambda p: len(_image_files(root, subject)))
    for hemi in _HEMIS:
        fmri = _fmri_path(root, subject, hemi)
        shape = probe(f"{hemi} fmri", fmri, _n_columns)
        if shape is not None and files is not None and shape[0] != files:
            found.append(
                Finding(subject, f"{hemi} fmri", str(fmri), "mismatch", f"{shape[0]} rows but {files} training images")
            )
        mask_path = _masks(root, subject) / f"{hemi}.all-vertices_fsaverage_space.npy"
        verts = probe(f"{hemi} vertex mask", mask_path, lambda p, h=hemi: len(_vertices(root, subject, h)))
        if verts is not None and shape is not None and verts != shape[1]:
            found.append(
                Finding(
                    subject,
                    f"{hemi} vertex mask",
                    str(mask_path),
                    "mismatch",
                    f"{verts} challenge vertices but {shape[1]} fmri columns",
                )
            )
        n_columns = shape[1] if shape else verts
        for family in _opts(ds)["rois"]:
            path = _masks(root, subject) / f"{hemi}.{family}_challenge_space.npy"
            probe(f"roi {family}", path, lambda p, h=hemi, f=family, n=n_columns: _labels(root, subject, h, f, n).shape)
    for family in _opts(ds)["rois"]:
        probe(f"roi names {family}", _masks(root, subject) / f"mapping_{family}.npy", lambda p: len(read_mapping(p)))
    return found


def images(root: Path, ds: dict, out_dir: Path) -> pd.DataFrame:
    """The union of the subjects' training images (absolute paths), ordered by NSD id."""
    from PIL import Image

    rows = {}
    for subject in ds["subjects"]:
        for _, image_id, path in _image_files(root, subject):
            rows.setdefault(image_id, path.resolve())
    table = []
    for image_id in sorted(rows):
        with Image.open(rows[image_id]) as img:
            width, height = img.size
        table.append((image_id, str(rows[image_id]), image_id, f"algonauts {rows[image_id].name}", width, height))
    return pd.DataFrame(table, columns=["image_id", "path", "group", "source", "width", "height"])


def read_subject(
    root: Path, ds: dict, subject: str, image_ids: list[str]
) -> tuple[list[str], np.ndarray, pd.DataFrame, np.ndarray]:
    """The subject's images among `image_ids` in that order, responses, ROI targets, trial counts (0: unknown)."""
    files = _image_files(root, subject)
    row_of = {image_id: row for row, image_id, _ in files}
    seen = [i for i in image_ids if i in row_of]
    rows = np.array([row_of[i] for i in seen], dtype=np.int64)
    blocks, tables = [], []
    for hemi in _HEMIS:
        path = _fmri_path(root, subject, hemi)
        n_rows, n_cols = _n_columns(path)
        if n_rows != len(files):
            raise DatasetError(f"{path}: {n_rows} rows; expected one per training image ({len(files)})")
        vertices = _vertices(root, subject, hemi)
        if len(vertices) != n_cols:
            raise DatasetError(f"{path}: {n_cols} columns; expected {len(vertices)} (challenge vertices of the mask)")
        columns = []
        for family in _opts(ds)["rois"]:
            names = read_mapping(_masks(root, subject) / f"mapping_{family}.npy")
            labels = _labels(root, subject, hemi, family, n_cols)
            for number in sorted(set(np.unique(labels[labels > 0]).tolist())):
                if number not in names:
                    raise DatasetError(f"{_masks(root, subject)}/mapping_{family}.npy: label {number} has no name")
                cols = np.flatnonzero(labels == number)
                part = pd.DataFrame({"hemi": hemi, "roi": names[number], "column": cols})
                part[["x", "y", "z"]] = fsaverage_coordinates(hemi, vertices[cols])
                columns.append(part)
        table = pd.concat(columns, ignore_index=True)
        data = np.load(path, mmap_mode="r")
        blocks.append(np.asarray(data[rows][:, table["column"].to_numpy()], dtype=np.float32))
        tables.append(table)
    targets = pd.concat(tables, ignore_index=True).drop(columns="column")
    targets["noise_ceiling"] = np.nan
    return seen, np.concatenate(blocks, axis=1), targets, np.zeros(len(seen), dtype=np.int64)


def published_image_count(n_subjects: int) -> int:
    """Images the selected subjects saw (NSD's design): 1,000 shared plus 9,000 each (73,000 at most)."""
    return min(1_000 + 9_000 * n_subjects, 73_000)


def shares_image_order(ds: dict) -> bool:
    """Whether every selected subject's rows are the same images in the same order: no (each saw its own)."""
    return False
