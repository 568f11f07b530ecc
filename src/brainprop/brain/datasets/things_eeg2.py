"""THINGS-EEG2 (Gifford et al. 2022), the published preprocessed arrays and image set (DATASETS.md §D.1).

`preprocessed_data/sub-XX/preprocessed_eeg_training.npy` and `_test.npy` each hold a dict:
`preprocessed_eeg_data` (images × repetitions × channels × times; training 16,540 × 4 × 17 × 100,
test 200 × 80 × 17 × 100), `ch_names` (17 occipital and parietal channels) and `times` (−0.2 …
0.79 s at 100 Hz). The official script saves the dict with `np.save` (a 0-d object array),
another version with `pickle.dump`; both are read. `image_set/image_metadata.npy` (np.save of a
dict of lists) names row i's image: `training_images/<train_img_concepts[i]>/<train_img_files[i]>`,
likewise `test_images/` for the test rows. Every subject saw the same images in the same order.

**These three files are pickles.** Reading them needs `np.load(allow_pickle=True)`, and
unpickling runs whatever code a crafted file holds. The dataset's own format requires it, so it
is used for exactly these files (`load_pickled_dict`) and for no other file of the dataset;
point `root` only at a copy of the OSF release you trust.

Every image is one sample, its repetitions averaged (training 4, test 80); targets are
channel × time, channel-major like THINGS-MEG's sensor × time, with modality `meg` (the
contract's value for sensor × time targets; docs/datasets.md says why EEG needs no value of its
own). An optional low-pass and resampling go through timing.py (default: the published
100 Hz as is). Every channel × time point is z-scored over trials. The noise ceiling comes from
the test repetitions: kknc's ncsnr by default, or the official split-half procedure (seeded),
either with the mixed-repetition formula over the samples' repetition counts.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from . import timing
from ._common import (
    IMAGE_SUFFIXES,
    DatasetError,
    Finding,
    Probe,
    files_under,
    kknc_ncsnr,
    nc_from_ncsnr,
    resolve,
    split_half_ncsnr,
)

__all__ = ["CHANNELS", "SPLITS", "check", "images", "load_pickled_dict", "read_subject", "subject_number"]

log = logging.getLogger("brainprop.datasets")

MODALITY = "meg"
SPLITS = ("training", "test")
# the published channel selection (regex ^O *|^P *), in the files' order
CHANNELS = ["O1", "Oz", "O2", "PO7", "PO3", "POz", "PO4", "PO8", "P7", "P5", "P3", "P1", "Pz", "P2", "P4", "P6", "P8"]
_EEG_KEYS = ("preprocessed_eeg_data", "ch_names", "times")
_META_KEYS = {split: (f"{split[:5]}_img_files", f"{split[:5]}_img_concepts") for split in SPLITS}
_CHUNK = 2000  # images processed at once
# noise_ceiling.method -> ncsnr per target from (targets, repetitions, images)
_NOISE_CEILING = {
    "ncsnr": lambda data, opts: kknc_ncsnr(data),
    "split_half": lambda data, opts: split_half_ncsnr(data, opts["iterations"], opts["seed"]),
}


def _opts(ds: dict) -> dict:
    return ds["things_eeg2"]


def subject_number(subject: str) -> int:
    """Subject number from sub-01 … sub-10."""
    match = re.fullmatch(r"sub-(0[1-9]|10)", subject)
    if not match:
        raise DatasetError(f"subject {subject!r}: expected sub-01 … sub-10 (THINGS-EEG2's folder names)")
    return int(match.group(1))


def _eeg_path(root: Path, ds: dict, subject: str, split: str) -> Path:
    return resolve(root, _opts(ds)["eeg_dir"]) / subject / f"preprocessed_eeg_{split}.npy"


def _image_root(root: Path, ds: dict) -> Path:
    return resolve(root, _opts(ds)["images"])


def load_pickled_dict(path: Path, keys: tuple[str, ...], what: str) -> dict:
    """The dict in a THINGS-EEG2 file: np.save of a dict (0-d object array) or pickle.dump of one.

    `allow_pickle=True` is what the published format needs (module docstring); it is used here only.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: missing; expected {what}")
    try:
        obj = np.load(path, allow_pickle=True)  # the dataset's format: a pickled dict
    except Exception as err:  # numpy and pickle raise many types for a damaged file
        raise DatasetError(f"{path}: not readable by np.load(allow_pickle=True) ({err}); expected {what}") from err
    if isinstance(obj, np.ndarray) and obj.shape == () and obj.dtype == object:
        obj = obj.item()
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: holds {type(obj).__name__}; expected {what}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DatasetError(f"{path}: keys {missing} missing (has {sorted(obj)}); expected {what}")
    return obj


def _eeg(path: Path) -> dict:
    """A preprocessed EEG dict checked: data (images, reps, channels, times), channel names, uniform times."""
    what = "a dict with preprocessed_eeg_data (images, repetitions, channels, times), ch_names, times"
    raw = load_pickled_dict(path, _EEG_KEYS, what)
    data = raw["preprocessed_eeg_data"]
    if not isinstance(data, np.ndarray) or data.ndim != 4 or not np.issubdtype(data.dtype, np.floating):
        shape = getattr(data, "shape", type(data).__name__)
        raise DatasetError(f"{path}: preprocessed_eeg_data is {getattr(data, 'dtype', '')} {shape}; expected {what}")
    names = [str(c) for c in raw["ch_names"]]
    times = np.asarray(raw["times"], dtype=np.float64).ravel()
    if len(names) != data.shape[2] or len(times) != data.shape[3]:
        raise DatasetError(
            f"{path}: {len(names)} ch_names and {len(times)} times for data of shape {data.shape}; "
            "expected one name per channel (axis 2) and one time per sample (axis 3)"
        )
    step = np.diff(times)
    if len(times) < 2 or step.min() <= 0 or not np.allclose(step, step.mean(), rtol=1e-4, atol=1e-7):
        raise DatasetError(f"{path}: times {times[:3]}…{times[-1:]} are not evenly spaced and increasing")
    return {"data": data, "ch_names": names, "times": times, "sfreq": round(1.0 / float(step.mean()), 6)}


def _describe(eeg: dict) -> str:
    n, reps, channels, times = eeg["data"].shape
    return (
        f"{n} images x {reps} repetitions x {channels} channels x {times} times "
        f"({eeg['times'][0]:.3f}…{eeg['times'][-1]:.3f} s at {eeg['sfreq']:g} Hz, {eeg['data'].dtype})"
    )


def _image_table(root: Path, ds: dict) -> dict[str, pd.DataFrame]:
    """Per split, one row per data row: image_id (file stem), path, group (THINGS concept), source."""
    folder = _image_root(root, ds)
    path = folder / "image_metadata.npy"
    keys = tuple(k for pair in _META_KEYS.values() for k in pair)
    meta = load_pickled_dict(path, keys, "a dict of lists train_img_files, train_img_concepts, test_img_…")
    tables = {}
    for split, (files_key, concepts_key) in _META_KEYS.items():
        files, concepts = [str(f) for f in meta[files_key]], [str(c) for c in meta[concepts_key]]
        if len(files) != len(concepts):
            raise DatasetError(
                f"{path}: {len(files)} {files_key} but {len(concepts)} {concepts_key}; expected one each"
            )
        tables[split] = pd.DataFrame(
            {
                "image_id": [Path(f).stem for f in files],
                "path": [folder / f"{split}_images" / c / f for c, f in zip(concepts, files)],
                "group": [re.sub(r"^\d+_", "", c) for c in concepts],
                "source": [f"THINGS-EEG2 {split}_images/{c}/{f}" for c, f in zip(concepts, files)],
            }
        )
    ids = pd.concat([t["image_id"] for t in tables.values()])
    if ids.duplicated().any():
        raise DatasetError(f"{path}: image files {sorted(set(ids[ids.duplicated()]))[:5]} are listed twice")
    return tables


def files(root: Path, ds: dict, subject: str) -> list[Path]:
    """The files `read_subject` reads for one subject (its training and test EEG, the image metadata)."""
    eeg = [_eeg_path(root, ds, subject, split) for split in SPLITS]
    return [*eeg, _image_root(root, ds) / "image_metadata.npy"]


def image_files(root: Path, ds: dict) -> list[Path]:
    """The files `images` builds the image set from (the image metadata, the training and test images)."""
    folder = _image_root(root, ds)
    images = [p for split in SPLITS for p in files_under(folder / f"{split}_images", IMAGE_SUFFIXES)]
    return [folder / "image_metadata.npy", *images]


def check(root: Path, ds: dict, subject: str) -> list[Finding]:
    """What is present for one subject, what is missing and what does not match the format."""
    try:
        subject_number(subject)
    except DatasetError as err:
        return [Finding(subject, "subject", str(root), "mismatch", str(err))]
    probe = Probe(subject)
    found = probe.found
    meta_path = _image_root(root, ds) / "image_metadata.npy"
    tables = probe(
        "image metadata",
        meta_path,
        lambda _: _image_table(root, ds),
        lambda t: ", ".join(f"{len(t[s])} {s} images" for s in SPLITS),
    )
    first = None
    for split in SPLITS:
        path = _eeg_path(root, ds, subject, split)
        eeg = probe(f"{split} eeg", path, _eeg, _describe)
        if eeg is None:
            continue
        if tables is not None and eeg["data"].shape[0] != len(tables[split]):
            found.append(
                Finding(
                    subject,
                    f"{split} eeg",
                    str(path),
                    "mismatch",
                    f"{eeg['data'].shape[0]} images but {len(tables[split])} {split} images in {meta_path}",
                )
            )
        if first is None:
            first = (split, eeg["ch_names"], eeg["times"])
        elif eeg["ch_names"] != first[1] or not np.allclose(eeg["times"], first[2]):
            found.append(
                Finding(
                    subject,
                    f"{split} eeg",
                    str(path),
                    "mismatch",
                    f"channels {eeg['ch_names'][:3]}… / {len(eeg['times'])} times differ from the {first[0]} file's",
                )
            )
        del eeg
    if tables is not None:
        for split in SPLITS:
            folder = _image_root(root, ds) / f"{split}_images"
            missing = [str(p.relative_to(folder)) for p in tables[split]["path"] if not p.is_file()]
            status = "mismatch" if missing else "found"
            detail = (
                f"{len(missing)} of {len(tables[split])} images missing, e.g. {missing[:5]}"
                if missing
                else f"{len(tables[split])} images"
            )
            found.append(
                Finding(subject, f"{split} images", str(folder), status if folder.is_dir() else "missing", detail)
            )
    return found


def images(root: Path, ds: dict, out_dir: Path) -> pd.DataFrame:
    """The training then the test images in the files' row order (absolute paths), grouped by THINGS concept."""
    from PIL import Image

    rows = []
    for split, table in _image_table(root, ds).items():
        for image_id, path, group, source in table.itertuples(index=False):
            if not path.is_file():
                raise DatasetError(
                    f"{path}: missing; expected the {split} image {image_id} named in image_metadata.npy"
                )
            with Image.open(path) as img:
                width, height = img.size
            rows.append((image_id, str(path.resolve()), group, source, width, height))
    return pd.DataFrame(rows, columns=["image_id", "path", "group", "source", "width", "height"])


def read_subject(
    root: Path, ds: dict, subject: str, image_ids: list[str]
) -> tuple[list[str], np.ndarray, pd.DataFrame, np.ndarray]:
    """The subject's images among `image_ids` in that order, repetition means (channel-major), targets, repetitions."""
    opts = _opts(ds)
    subject_number(subject)
    tables = _image_table(root, ds)
    wanted = set(image_ids)
    ids, means, counts, tests = [], [], [], []
    per_split = dict.fromkeys(SPLITS, 0)
    total = total_sq = names = times = rate = None
    n_trials = 0
    for split in SPLITS:
        path = _eeg_path(root, ds, subject, split)
        eeg = _eeg(path)
        table = tables[split]
        if eeg["data"].shape[0] != len(table):
            raise DatasetError(
                f"{path}: {eeg['data'].shape[0]} images; expected one per {split} image of image_metadata.npy "
                f"({len(table)})"
            )
        if names is None:
            names, times = eeg["ch_names"], eeg["times"]
        elif eeg["ch_names"] != names or not np.allclose(eeg["times"], times):
            raise DatasetError(f"{path}: channels or times differ from the training file's; expected the same")
        rows = np.flatnonzero(table["image_id"].isin(wanted).to_numpy())
        for start in range(0, len(rows), _CHUNK):
            idx = rows[start : start + _CHUNK]
            cube = eeg["data"][idx]  # (images, reps, channels, times)
            n, reps = cube.shape[:2]
            data, rate = timing.preprocess(
                cube.reshape(n * reps, *cube.shape[2:]), eeg["sfreq"], cutoff=opts["lowpass"], new_sfreq=opts["sfreq"]
            )
            trials = data.reshape(n, reps, -1)  # channel-major: (channel, time) flattened
            if total is None:
                total, total_sq = np.zeros(trials.shape[2]), np.zeros(trials.shape[2])
            total += trials.sum(axis=(0, 1))
            total_sq += (trials**2).sum(axis=(0, 1))
            n_trials += n * reps
            means.append(trials.mean(axis=1).astype(np.float32))
            counts += [reps] * n
            ids += table["image_id"].iloc[idx].tolist()
            per_split[split] += n
            if split == "test":
                tests.append(trials.astype(np.float32))
        del eeg
    if not ids:
        raise DatasetError(f"{subject}: no image of the manifest among the THINGS-EEG2 training and test rows")
    position = {image_id: k for k, image_id in enumerate(ids)}
    seen = [i for i in image_ids if i in position]
    order = np.array([position[i] for i in seen])
    Y, counts = np.concatenate(means)[order], np.asarray(counts, dtype=np.int64)[order]
    if opts["zscore"]:
        centre = total / n_trials
        sd = np.sqrt(np.maximum(total_sq / n_trials - centre**2, 0))
        Y = ((Y - centre) / np.where(sd > 0, sd, np.nan)).astype(np.float32)
    n_times = Y.shape[1] // len(names)
    out_times = times[0] + np.arange(n_times) / rate
    targets = pd.DataFrame({"sensor": np.repeat(names, n_times), "time": np.tile(out_times, len(names))})
    targets["noise_ceiling"] = _noise_ceiling(tests, counts, len(targets), opts["noise_ceiling"])
    log.info(
        "%s: %d images (%d training, %d test) x %d channels x %d times (%.3f…%.3f s at %g Hz, low-pass %s Hz)",
        subject,
        len(seen),
        per_split["training"],
        per_split["test"],
        len(names),
        n_times,
        out_times[0],
        out_times[-1],
        rate,
        opts["lowpass"],
    )
    return seen, Y, targets, counts


def _noise_ceiling(tests: list[np.ndarray], counts: np.ndarray, n_targets: int, opts: dict) -> np.ndarray:
    """The test repetitions' ncsnr (kknc or split-half, `noise_ceiling.method`) with the samples' repetition counts."""
    if not tests:
        log.warning("no test image among the samples: noise ceiling NaN")
        return np.full(n_targets, np.nan)
    data = np.concatenate(tests).transpose(2, 1, 0)  # (targets, reps, images)
    if opts["method"] not in _NOISE_CEILING:
        raise DatasetError(f"noise_ceiling.method {opts['method']!r}: expected one of {sorted(_NOISE_CEILING)}")
    ncsnr = _NOISE_CEILING[opts["method"]](data, opts)
    return nc_from_ncsnr(ncsnr, counts)


def published_image_count(n_subjects: int) -> int:
    """Images every subject saw by the published design: 16,540 training plus 200 test images."""
    return 16_740


def shares_image_order(ds: dict) -> bool:
    """Whether every selected subject's rows are the same images in the same order: yes (the files' row order)."""
    return True
