"""Natural Scenes Dataset (Allen et al. 2022) as published on s3://natural-scenes-dataset (DATASETS.md §A).

Surface (`fsaverage`): `{lh,rh}.betas_sessionNN.mgh`, float32 % signal change, shape
(V, 1, 1, T). Volume (`func1pt8mm`, `func1mm`): `betas_sessionNN.hdf5` (h5py axes reversed:
(T, Z, Y, X)) or `.nii.gz` (X, Y, Z, T), int16 = % signal change × 300. Trials map to images
through `nsd_expdesign.mat` (1-based). Betas are z-scored per target within each session and
repetitions of an image averaged; the noise ceiling comes from `ncsnr` with the
mixed-repetition formula. Sessions are read one at a time, volumes in slabs of Z planes.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ._common import DatasetError, Finding, Probe, RepetitionMean, nc_from_ncsnr, require_file, zscore_columns
from .geometry import fsaverage_coordinates, table_coordinates

__all__ = [
    "NSD_SESSIONS",
    "check",
    "expdesign",
    "images",
    "read_ctab",
    "read_subject",
    "subject_number",
    "trial_images",
]

log = logging.getLogger("brainprop.datasets")

MODALITY = "fmri"
# Core NSD sessions per subject (Technical notes); the default when `sessions` is not given.
NSD_SESSIONS = {1: 40, 2: 40, 3: 32, 4: 30, 5: 40, 6: 32, 7: 40, 8: 30}
_SURFACE = "fsaverage"
_HEMIS = ("lh", "rh")
_SLAB = 8  # Z planes read at once from a volume session
_DEFAULT_ROIS = {"fsaverage": ["Kastner2015"], "volume": ["prf-visualrois", "floc-faces", "floc-places", "floc-bodies"]}


def subject_number(subject: str) -> int:
    """1..8 from an NSD subject name `subjAA`."""
    match = re.fullmatch(r"subj0?([1-8])", subject)
    if not match:
        raise DatasetError(f"subject {subject!r}: expected an NSD subject name subj01 … subj08")
    return int(match.group(1))


def _expdesign_path(root: Path) -> Path:
    return root / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat"


def _stimuli_path(root: Path) -> Path:
    return root / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"


def expdesign(root: Path) -> dict[str, np.ndarray]:
    """`masterordering` (n_trials,), `subjectim` (8, 10000) and `sharedix` (n,) as 1-based integer arrays."""
    import scipy.io

    path = require_file(_expdesign_path(root), "nsd_expdesign.mat (MATLAB < v7.3)")
    try:
        mat = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises several types for a truncated or foreign file
        raise DatasetError(f"{path}: not readable by scipy.io.loadmat ({err}); expected nsd_expdesign.mat") from err
    out = {}
    for key in ("masterordering", "subjectim", "sharedix"):
        if key not in mat:
            raise DatasetError(f"{path}: key {key!r} missing; expected masterordering, subjectim, sharedix")
        value = np.asarray(mat[key])
        if not np.issubdtype(value.dtype, np.number) or not np.all(value == np.round(value)):
            raise DatasetError(f"{path}: {key} has dtype {value.dtype}; expected integers")
        out[key] = value.astype(np.int64)
    out["masterordering"] = out["masterordering"].ravel()
    out["sharedix"] = out["sharedix"].ravel()
    if out["subjectim"].ndim != 2 or out["subjectim"].shape[0] != 8:
        raise DatasetError(f"{path}: subjectim has shape {out['subjectim'].shape}; expected (8, 10000)")
    if out["masterordering"].min() < 1 or out["subjectim"].min() < 1:
        raise DatasetError(f"{path}: found an index below 1; expected 1-based indices")
    return out


def trial_images(design: dict[str, np.ndarray], subject: int, session: int, n_trials: int) -> np.ndarray:
    """0-based 73k ids (nsdId) of a session's trials: subjectim[s-1, masterordering[t]-1] - 1."""
    start = (session - 1) * n_trials
    order = design["masterordering"]
    if start + n_trials > len(order):
        raise DatasetError(
            f"session {session} with {n_trials} trials ends at trial {start + n_trials}; "
            f"nsd_expdesign.mat masterordering has {len(order)}"
        )
    ten_k = order[start : start + n_trials] - 1
    return design["subjectim"][subject - 1, ten_k] - 1


def read_ctab(path: Path) -> dict[int, str]:
    """Label number → name from an NSD `.mgz.ctab` file (`<int> <name>` per line)."""
    require_file(path, "a label table with lines '<int> <name>'")
    names = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            names[int(parts[0])] = parts[1]
        except (ValueError, IndexError):
            raise DatasetError(f"{path}: line {number} {line!r}; expected '<int> <name>'") from None
    return names


# ---------------------------------------------------------------- paths


def _options(ds: dict) -> dict:
    return ds["nsd"]


def _is_surface(opts: dict) -> bool:
    return opts["space"] == _SURFACE


def _betas_dir(root: Path, opts: dict, subject: str) -> Path:
    return root / "nsddata_betas" / "ppdata" / subject / opts["space"] / opts["betas"]


def _session_files(root: Path, opts: dict, subject: str, session: int) -> list[Path]:
    folder = _betas_dir(root, opts, subject)
    if _is_surface(opts):
        return [folder / f"{h}.betas_session{session:02d}.mgh" for h in _HEMIS]
    return [folder / f"betas_session{session:02d}.{opts['format']}"]


def _sessions(opts: dict, subject: str) -> list[int]:
    if opts["sessions"]:
        return [int(s) for s in opts["sessions"]]
    return list(range(1, NSD_SESSIONS[subject_number(subject)] + 1))


def _rois(opts: dict) -> list[str]:
    return opts["rois"] or _DEFAULT_ROIS["fsaverage" if _is_surface(opts) else "volume"]


def _roi_files(root: Path, opts: dict, subject: str, family: str) -> tuple[list[Path], Path]:
    if _is_surface(opts):
        label = root / "nsddata" / "freesurfer" / "fsaverage" / "label"
        return [label / f"{h}.{family}.mgz" for h in _HEMIS], label / f"{family}.mgz.ctab"
    roi = root / "nsddata" / "ppdata" / subject / opts["space"] / "roi" / f"{family}.nii.gz"
    return [roi], root / "nsddata" / "freesurfer" / subject / "label" / f"{family}.mgz.ctab"


def _ncsnr_files(root: Path, opts: dict, subject: str) -> list[Path]:
    folder = _betas_dir(root, opts, subject)
    return [folder / f"{h}.ncsnr.mgh" for h in _HEMIS] if _is_surface(opts) else [folder / "ncsnr.nii.gz"]


# ---------------------------------------------------------------- reading betas


def _session_shape(path: Path, opts: dict) -> tuple[int, tuple[int, ...]]:
    """(n_trials, spatial shape in X[,Y,Z] order) from a betas file's header."""
    if path.suffix == ".hdf5":
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if "betas" not in f:
                    raise DatasetError(f"{path}: no dataset 'betas'; expected /betas int16 (T, Z, Y, X)")
                shape = f["betas"].shape
        except OSError as err:
            raise DatasetError(f"{path}: not a readable HDF5 file ({err})") from err
        if len(shape) != 4:
            raise DatasetError(f"{path}: /betas has shape {shape}; expected 4 axes (T, Z, Y, X)")
        return shape[0], tuple(reversed(shape[1:]))
    import nibabel as nib

    try:
        shape = nib.load(path).shape
    except Exception as err:
        raise DatasetError(f"{path}: not readable by nibabel ({err})") from err
    if path.suffix == ".mgh":
        if len(shape) != 4 or shape[1:3] != (1, 1):
            raise DatasetError(f"{path}: shape {shape}; expected (n_vertices, 1, 1, n_trials)")
        return shape[3], (shape[0],)
    if len(shape) != 4:
        raise DatasetError(f"{path}: shape {shape}; expected (X, Y, Z, n_trials)")
    return shape[3], tuple(shape[:3])


def _scaled(raw: np.ndarray) -> np.ndarray:
    """% signal change: int16 files store it × 300, float files as is."""
    if raw.dtype == np.int16:
        return raw.astype(np.float32) / np.float32(300.0)
    if np.issubdtype(raw.dtype, np.floating):
        return raw.astype(np.float32)
    raise DatasetError(f"betas have dtype {raw.dtype}; expected int16 (× 300) or float32")


def _read_surface(path: Path, vertices: np.ndarray) -> np.ndarray:
    """(T, n_selected) % signal change of the selected vertices from one `.mgh` session."""
    import nibabel as nib

    img = nib.load(path)
    try:
        data = np.asarray(img.dataobj)
    except Exception as err:
        raise DatasetError(f"{path}: truncated or unreadable ({err}); expected (V, 1, 1, T) float32") from err
    return _scaled(data[vertices, 0, 0, :]).T


def _read_volume(path: Path, voxels: np.ndarray) -> np.ndarray:
    """(T, n_selected) % signal change of the selected voxels (X, Y, Z) from one session, in Z slabs."""
    zs = voxels[:, 2]
    out = None
    if path.suffix == ".hdf5":
        import h5py

        f = h5py.File(path, "r")
        data = f["betas"]  # (T, Z, Y, X): MATLAB's X×Y×Z×T reversed by h5py

        def get(z0, z1):
            return np.asarray(data[:, z0:z1]).transpose(0, 3, 2, 1)

    else:
        import nibabel as nib

        f = None
        img = nib.load(path)
        slope, inter = img.dataobj.slope, img.dataobj.inter
        if not (slope == 1.0 and inter == 0.0):
            raise DatasetError(
                f"{path}: header scl_slope={slope}, scl_inter={inter}; expected unscaled int16 (÷ 300 is applied here)"
            )

        def get(z0, z1):
            return np.moveaxis(np.asarray(img.dataobj[:, :, z0:z1, :]), 3, 0)

    try:
        for z0 in range(int(zs.min()), int(zs.max()) + 1, _SLAB):
            sel = np.flatnonzero((zs >= z0) & (zs < z0 + _SLAB))
            if not sel.size:
                continue
            try:
                slab = get(z0, z0 + _SLAB)
            except Exception as err:
                raise DatasetError(f"{path}: truncated or unreadable at Z planes {z0}… ({err})") from err
            values = _scaled(slab[:, voxels[sel, 0], voxels[sel, 1], voxels[sel, 2] - z0])
            if out is None:
                out = np.empty((values.shape[0], len(voxels)), dtype=np.float32)
            out[:, sel] = values
    finally:
        if f is not None:
            f.close()
    return out


# ---------------------------------------------------------------- targets


def _load_labels(path: Path, expected: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    require_file(path, "an ROI label file")
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    if path.suffix == ".mgz":
        data = data.reshape(data.shape[0], -1)[:, 0] if data.ndim > 1 else data
    if expected is not None and data.shape != expected:
        raise DatasetError(f"{path}: shape {data.shape}; expected {expected} as the betas")
    return np.round(data).astype(np.int64), img.affine


def _volume_hemispheres(path: Path, labels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """lh/rh per voxel from NSD's `lh.<name>.nii.gz` and `rh.<name>.nii.gz`; else the side of the midline.

    Without the per-hemisphere files the midline is the mean world x of the voxels the ROI file
    covers (label ≥ 0), so that a native-space origin off the midline does not matter.
    """
    import nibabel as nib

    files = [path.with_name(f"{h}.{path.name}") for h in ("lh", "rh")]
    ijk = np.argwhere(labels >= 0)
    world_x = (np.c_[ijk, np.ones(len(ijk))] @ affine.T)[:, 0]
    sides = np.full(labels.shape, "", dtype=object)
    sides[tuple(ijk.T)] = np.where(world_x < world_x.mean(), "lh", "rh")
    if all(f.is_file() for f in files):
        for hemi, f in zip(("lh", "rh"), files):
            side = np.asarray(nib.load(f).dataobj)
            if side.shape != labels.shape:
                raise DatasetError(f"{f}: shape {side.shape}; expected {labels.shape} as {path.name}")
            sides[side > 0] = hemi
    else:
        log.warning("%s: no lh./rh. files beside it; hemispheres from the side of the midline", path)
    return sides


def _missing_labels(root: Path, opts: dict, subject: str) -> list[str]:
    """The names of `nsd.labels` that no ctab of the selected label files holds."""
    if not opts.get("labels"):
        return []
    names = set()
    for family in _rois(opts):
        names |= set(read_ctab(_roi_files(root, opts, subject, family)[1]).values())
    return [name for name in opts["labels"] if name not in names]


def _targets(root: Path, opts: dict, subject: str, shapes: dict[str, tuple[int, ...]]) -> pd.DataFrame:
    """One row per (ROI, vertex or voxel): hemi, family, roi, index/ijk and coordinates.

    With `nsd.labels`, only the ROIs of those names are kept (each must be in some ctab).
    """
    missing = _missing_labels(root, opts, subject)
    if missing:
        raise DatasetError(
            f"{subject}: nsd.labels {missing} are in no label table of {_rois(opts)}; expected names of their "
            ".mgz.ctab files (brainprop check lists the tables)"
        )
    wanted = set(opts.get("labels") or [])
    rows = []
    for family in _rois(opts):
        label_files, ctab_path = _roi_files(root, opts, subject, family)
        names = read_ctab(ctab_path)
        for path in label_files:
            hemi = path.name.split(".")[0] if _is_surface(opts) else None
            labels, affine = _load_labels(path, shapes[hemi] if hemi else shapes["vol"])
            sides = None if hemi else _volume_hemispheres(path, labels, affine)
            unknown = sorted(set(np.unique(labels[labels > 0]).tolist()) - set(names))
            if unknown:
                raise DatasetError(f"{path}: labels {unknown} have no name in {ctab_path}")
            for number in sorted(set(np.unique(labels[labels > 0]).tolist())):
                if wanted and names[number] not in wanted:
                    continue
                idx = np.argwhere(labels == number)
                if hemi:
                    xyz = fsaverage_coordinates(hemi, idx[:, 0])
                    part = pd.DataFrame({"hemi": hemi, "index": idx[:, 0]})
                else:
                    side = sides[idx[:, 0], idx[:, 1], idx[:, 2]]
                    part = pd.DataFrame({"hemi": side, "i": idx[:, 0], "j": idx[:, 1], "k": idx[:, 2]})
                    xyz = np.array([table_coordinates(names[number], h) for h in part["hemi"]]).reshape(-1, 3)
                part[["x", "y", "z"]] = xyz
                rows.append(part.assign(family=family, roi=names[number]))
    if not rows:
        raise DatasetError(f"{subject}: no labelled vertex or voxel in the ROI files {_rois(opts)}")
    return pd.concat(rows, ignore_index=True)


def _ncsnr(root: Path, opts: dict, subject: str, targets: pd.DataFrame) -> np.ndarray:
    import nibabel as nib

    out = np.full(len(targets), np.nan)
    for path in _ncsnr_files(root, opts, subject):
        data = np.asarray(nib.load(require_file(path, "the ncsnr map")).dataobj, dtype=np.float64)
        if _is_surface(opts):
            sel = targets["hemi"].to_numpy() == path.name.split(".")[0]
            out[sel] = data.reshape(data.shape[0], -1)[targets.loc[sel, "index"].to_numpy(), 0]
        else:
            out[:] = data[targets["i"].to_numpy(), targets["j"].to_numpy(), targets["k"].to_numpy()]
    return out


# ---------------------------------------------------------------- reader interface


def files(root: Path, ds: dict, subject: str) -> list[Path]:
    """The files `read_subject` reads for one subject (design, betas of the selected sessions, ROIs, ncsnr)."""
    opts = _options(ds)
    out = [_expdesign_path(root)]
    for session in _sessions(opts, subject):
        out += _session_files(root, opts, subject, session)
    for family in _rois(opts):
        labels, ctab = _roi_files(root, opts, subject, family)
        out += [*labels, ctab]
    return out + _ncsnr_files(root, opts, subject)


def image_files(root: Path, ds: dict) -> list[Path]:
    """The files `images` builds the image set from: the design and the image brick.

    (`images` also counts each session's trials from its betas header; the betas files are the
    brain rule's inputs, not the image set's, so that a replaced session reruns its subject only.)
    """
    return [_expdesign_path(root), _stimuli_path(root)]


def check(root: Path, ds: dict, subject: str) -> list[Finding]:
    """What is present for one subject, what is missing and what does not match the format."""
    opts = _options(ds)
    probe = Probe(subject)
    found = probe.found

    try:
        number = subject_number(subject)
    except DatasetError as err:
        return [Finding(subject, "subject", str(root), "mismatch", str(err))]
    design = probe(
        "expdesign",
        _expdesign_path(root),
        lambda p: expdesign(root),
        lambda d: f"{len(d['masterordering'])} trials in masterordering",
    )
    n_bricks = probe("stimuli", _stimuli_path(root), _brick_rows)
    shapes: dict = {}
    seen = []
    for session in _sessions(opts, subject):
        for path in _session_files(root, opts, subject, session):
            shape = probe(f"session {session:02d}", path, lambda p: _session_shape(p, opts))
            if shape is None:
                continue
            key = path.name.split(".")[0] if _is_surface(opts) else "vol"
            if key in shapes and shapes[key] != shape[1]:
                found.append(
                    Finding(
                        subject,
                        f"session {session:02d}",
                        str(path),
                        "mismatch",
                        f"spatial shape {shape[1]} differs from the first session's {shapes[key]}",
                    )
                )
            shapes.setdefault(key, shape[1])
            if design is not None and key in ("lh", "vol"):
                try:
                    seen.append(trial_images(design, number, session, shape[0]))
                except DatasetError as err:
                    found.append(Finding(subject, f"session {session:02d}", str(path), "mismatch", str(err)))
    if seen and n_bricks is not None:
        ids = np.unique(np.concatenate(seen))
        bad = ids[ids >= n_bricks]
        if bad.size:
            found.append(
                Finding(
                    subject,
                    "images",
                    str(_stimuli_path(root)),
                    "mismatch",
                    f"{bad.size} image ids without an image (imgBrick has {n_bricks} rows), e.g. {bad[:5].tolist()}",
                )
            )
    for family in _rois(opts):
        files, ctab = _roi_files(root, opts, subject, family)
        probe(f"roi names {family}", ctab, lambda p: len(read_ctab(p)))
        for path in files:
            key = path.name.split(".")[0] if _is_surface(opts) else "vol"
            probe(f"roi {family}", path, lambda p, k=key: _load_labels(p, shapes.get(k))[0].shape)
    if opts.get("labels"):
        ctabs = ", ".join(str(_roi_files(root, opts, subject, f)[1]) for f in _rois(opts))
        try:
            missing = _missing_labels(root, opts, subject)
        except DatasetError:
            missing = None  # a ctab is missing or unreadable: reported above
        if missing:
            found.append(
                Finding(subject, "roi labels", ctabs, "mismatch", f"nsd.labels {missing} are in none of these tables")
            )
        elif missing is not None:
            found.append(Finding(subject, "roi labels", ctabs, "found", f"all {len(opts['labels'])} of nsd.labels"))
    for path in _ncsnr_files(root, opts, subject):
        probe("ncsnr", path, lambda p: __import__("nibabel").load(p).shape)
    return found


def _brick_rows(path: Path) -> int:
    import h5py

    with h5py.File(path, "r") as f:
        if "imgBrick" not in f:
            raise DatasetError(f"{path}: no dataset 'imgBrick'; expected (n_images, H, W, 3) uint8")
        brick = f["imgBrick"]
        if brick.ndim != 4 or brick.shape[3] != 3 or brick.dtype != np.uint8:
            raise DatasetError(f"{path}: imgBrick {brick.shape} {brick.dtype}; expected (n_images, H, W, 3) uint8")
        return int(brick.shape[0])


def _subject_images(root: Path, ds: dict, subject: str, design: dict) -> np.ndarray:
    """0-based nsdIds of every trial in the subject's selected sessions, in trial order."""
    opts = _options(ds)
    ids = []
    for session in _sessions(opts, subject):
        path = require_file(_session_files(root, opts, subject, session)[0], f"betas of session {session}")
        n_trials, _ = _session_shape(path, opts)
        ids.append(trial_images(design, subject_number(subject), session, n_trials))
    return np.concatenate(ids)


def images(root: Path, ds: dict, out_dir: Path) -> pd.DataFrame:
    """The manifest rows: the union of the subjects' images (or the shared ones all saw), written as PNGs."""
    import h5py
    from PIL import Image

    from ...io import atomic_path

    design = expdesign(root)
    per_subject = [set(np.unique(_subject_images(root, ds, s, design)).tolist()) for s in ds["subjects"]]
    if _options(ds)["images"] == "shared":
        chosen = set((design["sharedix"] - 1).tolist()).intersection(*per_subject)
    else:
        chosen = set().union(*per_subject)
    ids = np.array(sorted(chosen), dtype=np.int64)
    log.info("%d images (%s of %d subjects)", len(ids), _options(ds)["images"], len(per_subject))
    path = _stimuli_path(root)
    n_rows = _brick_rows(require_file(path, "nsd_stimuli.hdf5 with imgBrick"))
    if ids.size and ids.max() >= n_rows:
        raise DatasetError(f"{path}: imgBrick has {n_rows} rows; image id {int(ids.max())} has no image")
    rows = []
    with h5py.File(path, "r") as f:
        brick = f["imgBrick"]
        for nsd_id in ids:
            image_id = f"nsd{nsd_id:05d}"
            relative = f"images/{image_id}.png"
            pixels = np.asarray(brick[int(nsd_id)])  # one image at a time
            with atomic_path(out_dir / relative) as tmp:
                Image.fromarray(pixels, "RGB").save(tmp, format="PNG")
            rows.append(
                (image_id, relative, image_id, f"nsd_stimuli.hdf5 imgBrick[{nsd_id}]", pixels.shape[1], pixels.shape[0])
            )
    return pd.DataFrame(rows, columns=["image_id", "path", "group", "source", "width", "height"])


def read_subject(
    root: Path, ds: dict, subject: str, image_ids: list[str]
) -> tuple[list[str], np.ndarray, pd.DataFrame, np.ndarray]:
    """The subject's images among `image_ids`, their repetition-mean responses, the targets and trial counts."""
    opts = _options(ds)
    design = expdesign(root)
    number = subject_number(subject)
    sessions = _sessions(opts, subject)
    shapes = {}
    for path in _session_files(root, opts, subject, sessions[0]):
        shapes[path.name.split(".")[0] if _is_surface(opts) else "vol"] = _session_shape(
            require_file(path, f"betas of session {sessions[0]}"), opts
        )[1]
    targets = _targets(root, opts, subject, shapes)
    wanted = set(image_ids)
    mean = RepetitionMean(image_ids, len(targets))
    for session in sessions:
        parts = []
        files = _session_files(root, opts, subject, session)
        for path in files:
            require_file(path, f"betas of session {session:02d}")
            n_trials, shape = _session_shape(path, opts)
            key = path.name.split(".")[0] if _is_surface(opts) else "vol"
            if shape != shapes[key]:
                raise DatasetError(
                    f"{path}: spatial shape {shape}; expected {shapes[key]} as session {sessions[0]:02d}"
                )
            if _is_surface(opts):
                sel = targets["hemi"].to_numpy() == key
                parts.append((sel, _read_surface(path, targets.loc[sel, "index"].to_numpy())))
            else:
                ijk = targets[["i", "j", "k"]].to_numpy()
                parts.append((np.ones(len(targets), bool), _read_volume(path, ijk)))
        data = np.empty((n_trials, len(targets)), dtype=np.float32)
        for sel, values in parts:
            if values.shape[0] != n_trials:
                raise DatasetError(f"{files}: hemispheres have {values.shape[0]} and {n_trials} trials; expected equal")
            data[:, sel] = values
        if opts["zscore"]:
            data = zscore_columns(data)
        trial_ids = np.array([f"nsd{i:05d}" for i in trial_images(design, number, session, n_trials)])
        keep = np.isin(trial_ids, list(wanted))
        mean.add(trial_ids[keep], data[keep])
        log.info("%s session %02d: %d trials, %d of them on manifest images", subject, session, n_trials, keep.sum())
    seen, Y, counts = mean.result()
    targets["noise_ceiling"] = nc_from_ncsnr(_ncsnr(root, opts, subject, targets), counts)
    return seen, Y, targets, counts


def published_image_count(n_subjects: int) -> int:
    """Images the selected subjects saw by the published design: 1,000 shared plus 9,000 each (73,000 at most)."""
    return min(1_000 + 9_000 * n_subjects, 73_000)


def shares_image_order(ds: dict) -> bool:
    """Whether every selected subject's rows are the same images in the same order (`images: shared`)."""
    return ds["nsd"]["images"] == "shared"
