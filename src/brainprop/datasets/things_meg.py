"""THINGS-MEG (Hebart et al. 2023), the published preprocessed epochs (DATASETS.md §C).

`derivatives/preprocessed/preprocessed_P{n}-epo.fif` (MNE follows its split parts
`-epo-1.fif`, …) holds 271 sensors at 200 Hz from −0.1 to 1.3 s, band-passed 0.1–40 Hz and
baseline z-scored; `sourcedata/sample_attributes_P{n}.csv` has one row per epoch. Catch trials
(trial_type `catch`, event value 999999) are dropped; every unique image is one sample, the
test images' repetitions averaged (METHOD.md §3). By default each chunk of epochs is low-passed
at 20 Hz and resampled to 30 Hz, and every sensor × time point is z-scored over trials. The
noise ceiling is kknc's ncsnr from the test repetitions with the mixed-repetition formula.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ._common import (
    DatasetError,
    Finding,
    kknc_ncsnr,
    nc_from_ncsnr,
    require_file,
    resolve,
)
from .things_fmri import concept_of

__all__ = ["check", "images", "participant", "read_subject"]

log = logging.getLogger("brainprop.datasets")

MODALITY = "meg"
CATCH_VALUE = 999999
_CHUNK = 500  # epochs read at once
_ATTRIBUTES = ["trial_type", "session_nr", "image_path"]


def _opts(ds: dict) -> dict:
    return ds["things_meg"]


def participant(subject: str) -> int:
    """Participant number from P1, BIGMEG1 or sub-BIGMEG1."""
    match = re.fullmatch(r"(?:sub-)?(?:P|BIGMEG)([1-9])", subject)
    if not match:
        raise DatasetError(f"subject {subject!r}: expected P1…P4 (or BIGMEG1…BIGMEG4)")
    return int(match.group(1))


def _epochs_path(root: Path, subject: str) -> Path:
    return root / "derivatives" / "preprocessed" / f"preprocessed_P{participant(subject)}-epo.fif"


def _attributes_path(root: Path, subject: str) -> Path:
    return root / "sourcedata" / f"sample_attributes_P{participant(subject)}.csv"


def _attributes(path: Path) -> pd.DataFrame:
    table = pd.read_csv(require_file(path, "sample_attributes CSV, one row per epoch"))
    missing = [c for c in _ATTRIBUTES if c not in table.columns]
    if missing:
        raise DatasetError(f"{path}: columns {missing} missing; expected {_ATTRIBUTES}")
    return table


def _read_epochs(path: Path):
    import mne

    require_file(path, "MNE epochs (-epo.fif and its split parts)")
    try:
        return mne.read_epochs(path, preload=False, verbose="error")
    except Exception as err:  # MNE raises several types for truncated or missing split parts
        raise DatasetError(f"{path}: not readable by mne.read_epochs ({err}); expected the epochs and "
                           "every split part (-epo-1.fif, …) in the same folder") from err


def _image_id(path: str) -> str:
    return Path(str(path)).stem


def _kept(attributes: pd.DataFrame, events: np.ndarray, path: Path) -> np.ndarray:
    """Non-catch epochs; catch is trial_type 'catch' or event value 999999, which must agree."""
    catch_type = attributes["trial_type"].to_numpy() == "catch"
    catch_event = events[:, 2] == CATCH_VALUE
    disagree = int((catch_type != catch_event).sum())
    if disagree:
        raise DatasetError(f"{path}: {disagree} epochs are catch by trial_type but not by event value {CATCH_VALUE} "
                           "(or the reverse); expected sample_attributes in the epochs' order")
    log.info("%s: %d catch trials dropped of %d epochs", path.name, int(catch_type.sum()), len(catch_type))
    return np.flatnonzero(~catch_type)


def check(root: Path, ds: dict, subject: str) -> list[Finding]:
    """What is present for one subject, what is missing and what does not match the format."""
    found = []
    try:
        epo, att = _epochs_path(root, subject), _attributes_path(root, subject)
    except DatasetError as err:
        return [Finding(subject, "subject", str(root), "mismatch", str(err))]
    epochs = attributes = None
    for item, path, read in (("epochs", epo, _read_epochs), ("sample attributes", att, _attributes)):
        if not path.exists():
            found.append(Finding(subject, item, str(path), "missing"))
            continue
        try:
            value = read(path)
        except (DatasetError, OSError, ValueError) as err:
            found.append(Finding(subject, item, str(path), "mismatch", str(err)))
            continue
        if item == "epochs":
            epochs = value
            detail = f"{len(value)} epochs, {len(value.ch_names)} channels, {value.tmin:.3f}…{value.tmax:.3f} s"
        else:
            attributes = value
            detail = f"{len(value)} rows"
        found.append(Finding(subject, item, str(path), "found", detail))
    if epochs is not None and attributes is not None:
        if len(epochs) != len(attributes):
            found.append(Finding(subject, "sample attributes", str(att), "mismatch",
                                 f"{len(attributes)} rows but {len(epochs)} epochs"))
        else:
            try:
                _kept(attributes, epochs.events, att)
            except DatasetError as err:
                found.append(Finding(subject, "catch trials", str(att), "mismatch", str(err)))
    if attributes is not None:
        folder = resolve(root, _opts(ds)["images"])
        ids = {_image_id(p) for p in attributes.loc[attributes["trial_type"] != "catch", "image_path"]}
        missing = sorted(i for i in ids if not (folder / concept_of(i) / f"{i}.jpg").is_file())
        found.append(Finding(subject, "images", str(folder), "mismatch" if missing else "found",
                             f"{len(missing)} image ids without an image, e.g. {missing[:5]}" if missing
                             else f"{len(ids)} images"))
    return found


def images(root: Path, ds: dict, out_dir: Path) -> pd.DataFrame:
    """Every non-catch image the participants saw, from the THINGS image folder by file name."""
    from PIL import Image

    folder = resolve(root, _opts(ds)["images"])
    ids = set()
    for subject in ds["subjects"]:
        att = _attributes(_attributes_path(root, subject))
        ids |= {_image_id(p) for p in att.loc[att["trial_type"] != "catch", "image_path"]}
    rows = []
    for image_id in sorted(ids):
        path = require_file(folder / concept_of(image_id) / f"{image_id}.jpg", f"the THINGS image of {image_id}")
        with Image.open(path) as img:
            width, height = img.size
        rows.append((image_id, str(path.resolve()), concept_of(image_id), f"THINGS {concept_of(image_id)}/{path.name}",
                     width, height))
    return pd.DataFrame(rows, columns=["image_id", "path", "group", "source", "width", "height"])


def _preprocess(epochs, picks: list[int], opts: dict) -> np.ndarray:
    """Low-pass and resample a chunk of epochs with MNE's Epochs methods; (n, sensors, times)."""
    chunk = epochs.load_data().pick(picks)
    if opts["lowpass"]:
        chunk.filter(None, opts["lowpass"], verbose="error")
    if opts["sfreq"] and opts["sfreq"] != chunk.info["sfreq"]:
        chunk.resample(opts["sfreq"], verbose="error")
    return chunk.get_data()


def read_subject(
    root: Path, ds: dict, subject: str, image_ids: list[str]
) -> tuple[list[str], np.ndarray, pd.DataFrame, np.ndarray]:
    """The participant's images among `image_ids`, repetition means (sensor-major targets), targets, trial counts."""
    import mne

    opts = _opts(ds)
    att_path = _attributes_path(root, subject)
    epochs = _read_epochs(_epochs_path(root, subject))
    attributes = _attributes(att_path)
    if len(attributes) != len(epochs):
        raise DatasetError(f"{att_path}: {len(attributes)} rows; expected one per epoch ({len(epochs)})")
    kept = _kept(attributes, epochs.events, att_path)
    picks = list(mne.pick_types(epochs.info, meg=True, ref_meg=False))
    sensors = [epochs.ch_names[p] for p in picks]
    trial_ids = attributes["image_path"].map(_image_id).to_numpy()
    kept = kept[np.isin(trial_ids[kept], image_ids)]
    seen = [i for i in image_ids if i in set(trial_ids[kept])]
    row_of = {i: k for k, i in enumerate(seen)}
    sfreq = epochs.info["sfreq"]
    test = attributes["trial_type"].to_numpy() == "test"
    sums = counts = total = total_sq = None
    test_data = {}
    for start in range(0, len(kept), _CHUNK):
        idx = kept[start:start + _CHUNK]
        try:
            data = _preprocess(epochs[idx], picks, opts).reshape(len(idx), -1)  # sensor-major (sensor, time)
        except (OSError, ValueError) as err:
            raise DatasetError(f"{_epochs_path(root, subject)}: epochs {idx[0]}…{idx[-1]} unreadable ({err})") from err
        if sums is None:
            sums = np.zeros((len(seen), data.shape[1]))
            counts = np.zeros(len(seen), dtype=np.int64)
            total, total_sq = np.zeros(data.shape[1]), np.zeros(data.shape[1])
        rows = np.array([row_of[i] for i in trial_ids[idx]])
        np.add.at(sums, rows, data)
        np.add.at(counts, rows, 1)
        total += data.sum(0)
        total_sq += (data.astype(np.float64) ** 2).sum(0)
        for k in np.flatnonzero(test[idx]):
            test_data[idx[k]] = data[k].astype(np.float32)
    n_times = sums.shape[1] // len(sensors)
    new_sfreq = float(opts["sfreq"] or sfreq)
    times = epochs.tmin + np.arange(n_times) / new_sfreq
    log.info("%s: %d sensors x %d times (%.3f…%.3f s at %g Hz, low-pass %s Hz); the window ends where the epochs end",
             subject, len(sensors), n_times, times[0], times[-1], new_sfreq, opts["lowpass"])
    Y = sums / counts[:, None]
    if opts["zscore"]:
        mean = total / counts.sum()
        sd = np.sqrt(np.maximum(total_sq / counts.sum() - mean**2, 0))
        Y = (Y - mean) / np.where(sd > 0, sd, np.nan)
    targets = pd.DataFrame({"sensor": np.repeat(sensors, n_times), "time": np.tile(times, len(sensors))})
    targets["noise_ceiling"] = _noise_ceiling(test_data, trial_ids, attributes, counts, len(targets))
    return seen, Y.astype(np.float32), targets, counts


def _noise_ceiling(test_data: dict, trial_ids: np.ndarray, attributes: pd.DataFrame, counts: np.ndarray,
                   n_targets: int) -> np.ndarray:
    """kknc over the test repetitions (in session order), with the samples' repetition counts."""
    if not test_data:
        log.warning("no test trials: noise ceiling NaN")
        return np.full(n_targets, np.nan)
    positions = np.array(sorted(test_data))
    order = positions[np.argsort(attributes["session_nr"].to_numpy()[positions], kind="stable")]
    names, reps = np.unique(trial_ids[order], return_counts=True)
    n_reps = int(reps.min())
    if reps.max() != n_reps:
        log.warning("test images have %d to %d repetitions; the noise ceiling uses the first %d", n_reps, reps.max(), n_reps)
    index = np.stack([order[trial_ids[order] == name][:n_reps] for name in names], axis=1)  # (reps, images)
    data = np.stack([[test_data[p] for p in row] for row in index])  # (reps, images, targets)
    return nc_from_ncsnr(kknc_ncsnr(data.transpose(2, 0, 1)), counts)
