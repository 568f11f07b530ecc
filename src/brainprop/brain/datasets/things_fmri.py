"""THINGS-fMRI (Hebart et al. 2023), the single-trial table format "betas_csv" (DATASETS.md §B.3).

`sub-XX_ResponseData.h5` is a pandas (PyTables, fixed format) frame with one row per voxel and
columns `voxel_id` plus trials 0..n-1 in the row order of `sub-XX_StimulusMetadata.csv`.
`sub-XX_VoxelMetadata.csv` carries the voxel coordinates and 0/1 ROI columns (two column
names contain a newline). The frame is read in voxel chunks straight from its HDF5 block
(`ResponseData/block0_values`, (n_voxels, n_trials)); its column labels are read with
PyTables as pandas does (they are stored pickled by pandas, the format's own choice).
Each voxel is z-scored within session, the 12 repetitions of a test image are averaged,
and the noise ceiling is kknc's ncsnr from the test repetitions with the mixed-repetition formula.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ._common import (
    IMAGE_SUFFIXES,
    DatasetError,
    Finding,
    Probe,
    files_under,
    kknc_ncsnr,
    nc_from_ncsnr,
    require_file,
    resolve,
    zscore_columns,
)
from .geometry import table_coordinates

__all__ = ["check", "concept_of", "images", "read_subject", "response_layout"]

log = logging.getLogger("brainprop.datasets")

MODALITY = "fmri"
_CHUNK = 2000  # voxels read at once
_STIM_COLUMNS = ["trial_type", "session", "stimulus", "concept"]


def _opts(ds: dict) -> dict:
    return ds["things_fmri"]


def _table(root: Path, ds: dict, subject: str, name: str) -> Path:
    return resolve(root, _opts(ds)["betas_dir"]) / f"{subject}_{name}"


def _brainmask(root: Path, ds: dict, subject: str) -> Path:
    return resolve(root, _opts(ds)["brainmask_dir"]) / f"{subject}_space-T1w_brainmask.nii.gz"


def concept_of(stem: str) -> str:
    """THINGS concept of an image file stem: everything before the last underscore."""
    return "_".join(stem.split("_")[:-1])


def response_layout(path: Path) -> tuple[str, int, list, int]:
    """(frame key, trial block number, its column labels, voxel_id block number) of a ResponseData frame."""
    import tables

    try:
        with tables.open_file(str(path), "r") as h5:
            groups = [g for g in h5.root._v_groups.values() if "pandas_type" in g._v_attrs]
            if len(groups) != 1:
                raise DatasetError(f"{path}: {len(groups)} pandas frames; expected one (key ResponseData)")
            group = groups[0]
            if group._v_attrs.pandas_type not in ("frame", b"frame"):
                raise DatasetError(f"{path}: pandas_type {group._v_attrs.pandas_type!r}; expected a fixed-format frame")
            blocks = [_items(group[f"block{b}_items"].read()) for b in range(int(group._v_attrs.nblocks))]
            name = group._v_name
    except (OSError, tables.exceptions.HDF5ExtError) as err:
        raise DatasetError(f"{path}: not a readable pandas HDF5 file ({err})") from err
    trial_blocks = [b for b, items in enumerate(blocks) if "voxel_id" not in [_text(i) for i in items]]
    id_blocks = [b for b, items in enumerate(blocks) if "voxel_id" in [_text(i) for i in items]]
    if len(trial_blocks) != 1 or len(id_blocks) != 1:
        raise DatasetError(f"{path}: blocks {blocks!r:.200}; expected one block of trial columns and voxel_id")
    return name, trial_blocks[0], blocks[trial_blocks[0]], id_blocks[0]


def _items(value) -> list:
    """Column labels as PyTables returns them: an array, or a one-element list holding the unpickled array."""
    if isinstance(value, list) and len(value) == 1 and np.ndim(value[0]) == 1:
        value = value[0]
    return list(value)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _voxel_ids(path: Path, name: str, block: int) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        values = np.asarray(f[name][f"block{block}_values"])
    return values[:, 0] if values.ndim == 2 else values


def _stimuli(path: Path) -> pd.DataFrame:
    table = pd.read_csv(require_file(path, "StimulusMetadata.csv (one row per trial)"))
    missing = [c for c in _STIM_COLUMNS if c not in table.columns]
    if missing:
        raise DatasetError(f"{path}: columns {missing} missing; expected {_STIM_COLUMNS}")
    return table


def _roi_columns(voxels: pd.DataFrame, rois: list[str], path: Path) -> list[tuple[str, str, str | None]]:
    """(column, ROI name, hemi or None for bilateral) for each requested ROI."""
    out = []
    for roi in rois:
        if roi in voxels.columns:
            out.append((roi, roi.replace(" (prf)", ""), None))
        elif f"l{roi}" in voxels.columns and f"r{roi}" in voxels.columns:
            out += [(f"l{roi}", roi, "lh"), (f"r{roi}", roi, "rh")]
        else:
            raise DatasetError(
                f"{path}: no ROI column {roi!r} (nor l{roi}/r{roi}); columns include "
                f"{[c for c in voxels.columns if not c.startswith('glasser')][13:40]}"
            )
    return out


def files(root: Path, ds: dict, subject: str) -> list[Path]:
    """The files `read_subject` reads for one subject (its three tables and its brain mask)."""
    tables = ("StimulusMetadata.csv", "VoxelMetadata.csv", "ResponseData.h5")
    return [*(_table(root, ds, subject, name) for name in tables), _brainmask(root, ds, subject)]


def image_files(root: Path, ds: dict) -> list[Path]:
    """The files `images` builds the image set from (the subjects' stimulus tables, the THINGS images)."""
    tables = [_table(root, ds, subject, "StimulusMetadata.csv") for subject in ds["subjects"]]
    return tables + files_under(resolve(root, _opts(ds)["images"]), IMAGE_SUFFIXES)


def check(root: Path, ds: dict, subject: str) -> list[Finding]:
    """What is present for one subject, what is missing and what does not match the format."""
    probe = Probe(subject)
    found = probe.found

    stim_path = _table(root, ds, subject, "StimulusMetadata.csv")
    vox_path = _table(root, ds, subject, "VoxelMetadata.csv")
    resp_path = _table(root, ds, subject, "ResponseData.h5")
    stimuli = probe("stimulus metadata", stim_path, lambda _: _stimuli(stim_path))
    layout = probe("responses", resp_path, lambda _: response_layout(resp_path))
    voxels = probe("voxel metadata", vox_path, lambda _: pd.read_csv(vox_path, nrows=0))
    if voxels is not None:
        probe("roi columns", vox_path, lambda _: len(_roi_columns(voxels, _opts(ds)["rois"], vox_path)))
    if layout is not None and stimuli is not None and len(layout[2]) != len(stimuli):
        found.append(
            Finding(
                subject,
                "responses",
                str(resp_path),
                "mismatch",
                f"{len(layout[2])} trial columns but {len(stimuli)} rows in {stim_path.name}",
            )
        )
    probe(
        "brainmask",
        _brainmask(root, ds, subject),
        lambda _: __import__("nibabel").load(_brainmask(root, ds, subject)).shape,
    )
    if stimuli is not None:
        folder = resolve(root, _opts(ds)["images"])
        missing = [s for s, c in zip(stimuli["stimulus"], stimuli["concept"]) if not (folder / c / s).is_file()]
        status = "mismatch" if missing else "found"
        detail = (
            f"{len(set(missing))} image ids without an image, e.g. {sorted(set(missing))[:5]}"
            if missing
            else f"{stimuli['stimulus'].nunique()} images"
        )
        found.append(Finding(subject, "images", str(folder), status if folder.is_dir() else "missing", detail))
    return found


def images(root: Path, ds: dict, out_dir: Path) -> pd.DataFrame:
    """Every image the subjects saw (absolute paths into the THINGS image folder), by file name."""
    from PIL import Image

    folder = resolve(root, _opts(ds)["images"])
    rows = {}
    for subject in ds["subjects"]:
        stim = _stimuli(_table(root, ds, subject, "StimulusMetadata.csv"))
        for name, concept in zip(stim["stimulus"], stim["concept"]):
            rows.setdefault(Path(name).stem, (folder / concept / name, concept))
    table = []
    for image_id in sorted(rows):
        path, concept = rows[image_id]
        require_file(path, f"the THINGS image of {image_id}")
        with Image.open(path) as img:
            width, height = img.size
        table.append((image_id, str(path.resolve()), concept, f"THINGS {concept}/{path.name}", width, height))
    return pd.DataFrame(table, columns=["image_id", "path", "group", "source", "width", "height"])


def _targets(root: Path, ds: dict, subject: str, voxels: pd.DataFrame, vox_path: Path) -> pd.DataFrame:
    import nibabel as nib

    mask = nib.load(require_file(_brainmask(root, ds, subject), "the T1w brain mask (for hemispheres)"))
    inside = np.argwhere(np.asarray(mask.dataobj) > 0)
    midline = float((np.c_[inside, np.ones(len(inside))] @ mask.affine.T)[:, 0].mean())
    ijk = voxels[["voxel_x", "voxel_y", "voxel_z"]].to_numpy(dtype=np.float64)
    world_x = (np.c_[ijk, np.ones(len(ijk))] @ mask.affine.T)[:, 0] - midline
    parts = []
    for column, roi, hemi in _roi_columns(voxels, _opts(ds)["rois"], vox_path):
        rows = np.flatnonzero(voxels[column].to_numpy() == 1)
        side = np.full(len(rows), hemi) if hemi else np.where(world_x[rows] < 0, "lh", "rh")
        part = pd.DataFrame({"row": rows, "roi": roi, "hemi": side})
        part[["x", "y", "z"]] = np.array([table_coordinates(roi, h) for h in side]).reshape(-1, 3)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def read_subject(
    root: Path, ds: dict, subject: str, image_ids: list[str]
) -> tuple[list[str], np.ndarray, pd.DataFrame, np.ndarray]:
    """The subject's images among `image_ids`, session-z-scored repetition means, ROI targets, trial counts."""
    import h5py

    resp_path = require_file(_table(root, ds, subject, "ResponseData.h5"), "the pandas ResponseData frame")
    vox_path = require_file(_table(root, ds, subject, "VoxelMetadata.csv"), "VoxelMetadata.csv")
    stim = _stimuli(_table(root, ds, subject, "StimulusMetadata.csv"))
    name, block, items, id_block = response_layout(resp_path)
    labels = [int(_text(i)) for i in items]
    if sorted(labels) != list(range(len(stim))):
        raise DatasetError(
            f"{resp_path}: trial columns {labels[:5]}…; expected 0..{len(stim) - 1} as StimulusMetadata rows"
        )
    order = np.argsort(labels)  # block column holding trial k
    voxels = pd.read_csv(vox_path)
    ids = _voxel_ids(resp_path, name, id_block)
    if len(ids) != len(voxels) or not np.array_equal(ids, voxels["voxel_id"].to_numpy()):
        raise DatasetError(
            f"{resp_path}: voxel_id column differs from {vox_path.name}'s; expected the same voxels in order"
        )
    targets = _targets(root, ds, subject, voxels, vox_path)
    trial_ids = stim["stimulus"].map(lambda s: Path(s).stem).to_numpy()
    wanted = np.isin(trial_ids, image_ids)
    seen = [i for i in image_ids if i in set(trial_ids)]
    row_of = {i: k for k, i in enumerate(seen)}
    trial_rows = np.array([row_of.get(i, -1) for i in trial_ids])
    counts = np.bincount(trial_rows[wanted], minlength=len(seen))
    sessions = stim["session"].to_numpy()
    test = (stim["trial_type"].to_numpy() == "test") & wanted
    reps = _repetition_index(trial_ids, test)
    Y = np.empty((len(seen), len(targets)), dtype=np.float32)
    ncsnr = np.full(len(targets), np.nan)
    unique_rows, inverse = np.unique(targets["row"].to_numpy(), return_inverse=True)
    with h5py.File(resp_path, "r") as f:
        values = f[name][f"block{block}_values"]
        if values.shape != (len(voxels), len(stim)):
            raise DatasetError(f"{resp_path}: block {values.shape}; expected ({len(voxels)}, {len(stim)})")
        for start in range(0, len(unique_rows), _CHUNK):
            rows = unique_rows[start : start + _CHUNK]
            try:
                data = np.asarray(values[rows, :], dtype=np.float32)[:, order].T  # (trials, voxels)
            except OSError as err:
                raise DatasetError(f"{resp_path}: truncated or unreadable ({err})") from err
            if _opts(ds)["zscore"]:
                for session in np.unique(sessions):
                    data[sessions == session] = zscore_columns(data[sessions == session])
            sums = np.zeros((len(seen), len(rows)))
            np.add.at(sums, trial_rows[wanted], data[wanted])
            cols = np.flatnonzero((inverse >= start) & (inverse < start + len(rows)))
            Y[:, cols] = (sums / counts[:, None])[:, inverse[cols] - start]
            if reps is not None:
                ncsnr[cols] = kknc_ncsnr(reps(data).transpose(2, 0, 1))[inverse[cols] - start]
    targets = targets.drop(columns="row")
    targets["noise_ceiling"] = nc_from_ncsnr(ncsnr, counts) if reps is not None else np.nan
    log.info("%s: %d trials, %d images, %d ROI voxel targets", subject, int(wanted.sum()), len(seen), len(targets))
    return seen, Y, targets, counts


def _repetition_index(trial_ids: np.ndarray, test: np.ndarray):
    """A function (trials, voxels) -> (reps, test images, voxels) over the test trials, or None without any."""
    ids = trial_ids[test]
    if not len(ids):
        log.warning("no test trials: noise ceiling NaN")
        return None
    names, counts = np.unique(ids, return_counts=True)
    n_reps = int(counts.min())
    if counts.max() != n_reps:
        log.warning(
            "test images have %d to %d repetitions; the noise ceiling uses the first %d of each",
            n_reps,
            counts.max(),
            n_reps,
        )
    positions = np.flatnonzero(test)
    index = np.stack([positions[ids == name][:n_reps] for name in names], axis=1)  # (reps, images)
    return lambda data: data[index]


def published_image_count(n_subjects: int) -> int:
    """Images every subject saw by the published design: 8,640 training plus 100 test images."""
    return 8_740


def shares_image_order(ds: dict) -> bool:
    """Whether every selected subject's rows are the same images in the same order: not assumed."""
    return False
