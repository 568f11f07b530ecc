"""THINGS-MEG (Hebart et al. 2023), the published preprocessed epochs (DATASETS.md §C).

`derivatives/preprocessed/preprocessed_P{n}-epo.fif` (MNE follows its split parts
`-epo-1.fif`, …) holds 271 sensors at 200 Hz from −0.1 to 1.3 s, band-passed 0.1–40 Hz and
baseline z-scored; `sourcedata/sample_attributes_P{n}.csv` has one row per epoch. Catch trials
(trial_type `catch`, event value 999999) are dropped; every unique image is one sample, the
test images' repetitions averaged (METHOD.md §3). By default each chunk of epochs is low-passed
at 20 Hz and resampled to 30 Hz on the exact output grid (`timing.py`: MNE's own padding of
`Epochs.resample` moved latencies by +10…12 ms on these epochs), and every sensor × time point
is z-scored over trials. The
noise ceiling is kknc's ncsnr from the test repetitions with the mixed-repetition formula.
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
    RepetitionMean,
    files_under,
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
        raise DatasetError(
            f"{path}: not readable by mne.read_epochs ({err}); expected the epochs and "
            "every split part (-epo-1.fif, …) in the same folder"
        ) from err


def _image_id(path: str) -> str:
    return Path(str(path)).stem


def _kept(attributes: pd.DataFrame, events: np.ndarray, path: Path) -> np.ndarray:
    """Non-catch epochs; catch is trial_type 'catch' or event value 999999, which must agree."""
    catch_type = attributes["trial_type"].to_numpy() == "catch"
    catch_event = events[:, 2] == CATCH_VALUE
    disagree = int((catch_type != catch_event).sum())
    if disagree:
        raise DatasetError(
            f"{path}: {disagree} epochs are catch by trial_type but not by event value {CATCH_VALUE} "
            "(or the reverse); expected sample_attributes in the epochs' order"
        )
    log.info("%s: %d catch trials dropped of %d epochs", path.name, int(catch_type.sum()), len(catch_type))
    return np.flatnonzero(~catch_type)


def files(root: Path, ds: dict, subject: str) -> list[Path]:
    """The files `read_subject` reads for one participant (sample attributes, and the epochs or BIDS recordings)."""
    recordings = (
        files_under(root / f"sub-BIGMEG{participant(subject)}")
        if _opts(ds)["route"] == "bids"
        else [_epochs_path(root, subject)]
    )
    return [_attributes_path(root, subject), *recordings]


def image_files(root: Path, ds: dict) -> list[Path]:
    """The files `images` builds the image set from (the participants' sample attributes, the THINGS images)."""
    tables = [_attributes_path(root, subject) for subject in ds["subjects"]]
    return tables + files_under(resolve(root, _opts(ds)["images"]), IMAGE_SUFFIXES)


def check(root: Path, ds: dict, subject: str) -> list[Finding]:
    """What is present for one subject, what is missing and what does not match the format."""
    found = []
    try:
        epo, att = _epochs_path(root, subject), _attributes_path(root, subject)
    except DatasetError as err:
        return [Finding(subject, "subject", str(root), "mismatch", str(err))]
    epochs = attributes = None
    probes = [("sample attributes", att, _attributes)]
    if _opts(ds)["route"] == "bids":
        found += _check_bids(root, subject, _opts(ds)["bids"])
    else:
        probes.insert(0, ("epochs", epo, _read_epochs))
    for item, path, read in probes:
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
            found.append(
                Finding(
                    subject,
                    "sample attributes",
                    str(att),
                    "mismatch",
                    f"{len(attributes)} rows but {len(epochs)} epochs",
                )
            )
        else:
            try:
                _kept(attributes, epochs.events, att)
            except DatasetError as err:
                found.append(Finding(subject, "catch trials", str(att), "mismatch", str(err)))
    if attributes is not None:
        folder = resolve(root, _opts(ds)["images"])
        ids = {_image_id(p) for p in attributes.loc[attributes["trial_type"] != "catch", "image_path"]}
        missing = sorted(i for i in ids if not (folder / concept_of(i) / f"{i}.jpg").is_file())
        found.append(
            Finding(
                subject,
                "images",
                str(folder),
                "mismatch" if missing else "found",
                f"{len(missing)} image ids without an image, e.g. {missing[:5]}" if missing else f"{len(ids)} images",
            )
        )
    return found


def _check_bids(root: Path, subject: str, bids: dict) -> list[Finding]:
    """One finding per raw recording of the participant (its events.tsv and its data file or .ds folder)."""
    try:
        runs = _bids_runs(root, subject, bids)
    except DatasetError as err:
        return [
            Finding(subject, "bids recordings", str(root / f"sub-BIGMEG{participant(subject)}"), "missing", str(err))
        ]
    found = []
    for session, run, events in runs:
        data = events.with_name(events.name.replace("_events.tsv", f"_meg{bids['extension']}"))
        status = "found" if data.exists() else "missing"
        found.append(
            Finding(
                subject,
                f"session {session} run {run}",
                str(data),
                status,
                f"events {events.name}" if status == "found" else "",
            )
        )
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
        rows.append(
            (
                image_id,
                str(path.resolve()),
                concept_of(image_id),
                f"THINGS {concept_of(image_id)}/{path.name}",
                width,
                height,
            )
        )
    return pd.DataFrame(rows, columns=["image_id", "path", "group", "source", "width", "height"])


def _preprocess(epochs, sensors: list[str], lowpass: float | None, sfreq: float | None) -> np.ndarray:
    """Low-pass and resample a chunk of epochs on the exact output grid (timing.py); (n, sensors, times)."""
    chunk = epochs.load_data().pick(sensors)
    data, _ = timing.preprocess(chunk.get_data(), chunk.info["sfreq"], cutoff=lowpass, new_sfreq=sfreq)
    return data


def _epochs_source(root: Path, subject: str):
    """The published epochs (MEG sensors only) and one row per kept epoch: image_id, trial_type, session."""
    import mne

    att_path = _attributes_path(root, subject)
    epochs = _read_epochs(_epochs_path(root, subject))
    attributes = _attributes(att_path)
    if len(attributes) != len(epochs):
        raise DatasetError(f"{att_path}: {len(attributes)} rows; expected one per epoch ({len(epochs)})")
    kept = _kept(attributes, epochs.events, att_path)
    sensors = [epochs.ch_names[k] for k in mne.pick_types(epochs.info, meg=True, ref_meg=False)]
    trials = pd.DataFrame(
        {
            "image_id": attributes["image_path"].map(_image_id).to_numpy()[kept],
            "trial_type": attributes["trial_type"].to_numpy()[kept],
            "session": attributes["session_nr"].to_numpy()[kept],
        }
    )
    yield str(_epochs_path(root, subject)), epochs[kept], trials, sensors


def _bids_runs(root: Path, subject: str, opts: dict) -> list[tuple[str, str, Path]]:
    """(session, run, events.tsv) of the participant's raw recordings, in session and run order."""
    folder = root / f"sub-BIGMEG{participant(subject)}"
    pattern = re.compile(rf"sub-BIGMEG{participant(subject)}_ses-(\w+)_task-{opts['task']}_run-(\w+)_events\.tsv")
    runs = sorted(
        (m.group(1), m.group(2), p) for p in folder.glob("ses-*/meg/*_events.tsv") if (m := pattern.fullmatch(p.name))
    )
    if opts["sessions"]:
        wanted = {f"{int(s):02d}" for s in opts["sessions"]}
        missing = sorted(wanted - {r[0] for r in runs})
        if missing:
            raise DatasetError(f"{folder}: sessions {missing} have no *_events.tsv; expected ses-NN/meg/ recordings")
        runs = [r for r in runs if r[0] in wanted]
    if not runs:
        raise DatasetError(
            f"{folder}: no ses-*/meg/*_task-{opts['task']}_run-*_events.tsv; expected the BIDS recordings"
        )
    return runs


def _image_numbers(attributes: pd.DataFrame, path: Path) -> dict[int, str]:
    """things_image_nr (1-based) -> image id, from the sample attributes' non-catch rows."""
    rows = attributes[attributes["trial_type"] != "catch"]
    pairs = pd.DataFrame({"nr": rows["things_image_nr"].astype(int), "id": rows["image_path"].map(_image_id)})
    clash = pairs.groupby("nr")["id"].nunique()
    if (clash > 1).any():
        raise DatasetError(f"{path}: things_image_nr {clash[clash > 1].index[:5].tolist()} name several images")
    return dict(zip(pairs["nr"], pairs["id"]))


def _bids_source(root: Path, subject: str, opts: dict):
    """Per run: raw BIDS data band-passed, epoched around image onsets; the kept trials' rows."""
    import mne
    from mne_bids import BIDSPath, read_raw_bids

    att_path = _attributes_path(root, subject)
    numbers = _image_numbers(_attributes(att_path), att_path)
    for session, run, events_path in _bids_runs(root, subject, opts):
        table = pd.read_csv(events_path, sep="\t", na_values=["N/A", "n/a"])
        keep = (table["trial_type"] != "catch").to_numpy()
        unknown = sorted(set(table.loc[keep, "value"].astype(int)) - set(numbers))
        if unknown:
            raise DatasetError(f"{events_path}: image numbers {unknown[:5]} are not in {att_path.name}")
        bids_path = BIDSPath(
            root=root,
            subject=f"BIGMEG{participant(subject)}",
            session=session,
            task=opts["task"],
            run=run,
            datatype="meg",
            suffix="meg",
            extension=opts["extension"],
        )
        try:
            raw = read_raw_bids(bids_path, verbose="error")
        except Exception as err:
            raise DatasetError(f"{bids_path.fpath}: not readable by mne_bids.read_raw_bids ({err})") from err
        raw.pick(mne.pick_types(raw.info, meg=True, ref_meg=False)).load_data()
        raw.filter(opts["highpass"], opts["lowpass"], verbose="error")
        onsets = table.loc[keep, "onset"].to_numpy()
        events = np.c_[
            raw.first_samp + np.round(onsets * raw.info["sfreq"]).astype(int),
            np.zeros(len(onsets), int),
            np.arange(len(onsets)) + 1,
        ]
        epochs = mne.Epochs(
            raw,
            events,
            tmin=opts["tmin"],
            tmax=opts["tmax"],
            baseline=None,
            preload=False,
            reject=None,
            flat=None,
            verbose="error",
        )
        epochs.drop_bad(verbose="error")
        if len(epochs) < len(onsets):
            log.warning(
                "%s: %d of %d epochs dropped (window beyond the recording)",
                events_path.name,
                len(onsets) - len(epochs),
                len(onsets),
            )
        kept = table.loc[keep].iloc[epochs.events[:, 2] - 1]
        log.info("%s: %d catch trials dropped, %d epochs", events_path.name, int((~keep).sum()), len(epochs))
        trials = pd.DataFrame(
            {
                "image_id": kept["value"].astype(int).map(numbers).to_numpy(),
                "trial_type": kept["trial_type"].to_numpy(),
                "session": int(session),
            }
        )
        yield str(bids_path.fpath), epochs, trials, raw.ch_names


def read_subject(
    root: Path, ds: dict, subject: str, image_ids: list[str]
) -> tuple[list[str], np.ndarray, pd.DataFrame, np.ndarray]:
    """The participant's images among `image_ids`, repetition means (sensor-major targets), targets, trial counts."""
    opts = _opts(ds)
    if opts["route"] == "bids":
        sources, chunk_lowpass = _bids_source(root, subject, opts["bids"] | {"lowpass": opts["lowpass"]}), None
    else:
        sources, chunk_lowpass = _epochs_source(root, subject), opts["lowpass"]
    wanted = set(image_ids)
    mean = sensors = times = total = total_sq = None
    tests = []  # (session, image_id, data) of test trials
    for label, epochs, trials, names in sources:
        select = np.flatnonzero(trials["image_id"].isin(wanted).to_numpy())
        for start in range(0, len(select), _CHUNK):
            idx = select[start : start + _CHUNK]
            try:
                cube = _preprocess(epochs[idx], names, chunk_lowpass, opts["sfreq"])
            except (OSError, ValueError) as err:
                raise DatasetError(f"{label}: epochs {idx[0]}…{idx[-1]} unreadable ({err})") from err
            data = cube.reshape(len(idx), -1)  # sensor-major: (sensor, time) flattened
            if mean is None:
                sensors = list(names)
                times = epochs.tmin + np.arange(cube.shape[2]) / float(opts["sfreq"] or epochs.info["sfreq"])
                mean = RepetitionMean(image_ids, data.shape[1])
                total, total_sq = np.zeros(data.shape[1]), np.zeros(data.shape[1])
            elif list(names) != sensors or cube.shape[2] != len(times):
                raise DatasetError(
                    f"{label}: {len(names)} sensors x {cube.shape[2]} times; expected the "
                    f"first recording's {len(sensors)} x {len(times)}"
                )
            part = trials.iloc[idx]
            mean.add(part["image_id"].to_numpy(), data)
            total += data.sum(0)
            total_sq += (data.astype(np.float64) ** 2).sum(0)
            tests += [
                (s, i, d.astype(np.float32))
                for s, i, t, d in zip(part["session"], part["image_id"], part["trial_type"], data)
                if t == "test"
            ]
    if mean is None:
        raise DatasetError(f"{subject}: no epoch of the manifest's images")
    log.info(
        "%s: %d sensors x %d times (%.3f…%.3f s at %g Hz, low-pass %s Hz); the window is the epochs' own",
        subject,
        len(sensors),
        len(times),
        times[0],
        times[-1],
        opts["sfreq"] or 0,
        opts["lowpass"],
    )
    seen, Y, counts = mean.result()
    if opts["zscore"]:
        n = counts.sum()
        centre = total / n
        sd = np.sqrt(np.maximum(total_sq / n - centre**2, 0))
        Y = (Y - centre) / np.where(sd > 0, sd, np.nan)
    targets = pd.DataFrame({"sensor": np.repeat(sensors, len(times)), "time": np.tile(times, len(sensors))})
    targets["noise_ceiling"] = _noise_ceiling(tests, counts, len(targets))
    return seen, Y.astype(np.float32), targets, counts


def _noise_ceiling(tests: list, counts: np.ndarray, n_targets: int) -> np.ndarray:
    """kknc over the test repetitions (in session order), with the samples' repetition counts."""
    if not tests:
        log.warning("no test trials: noise ceiling NaN")
        return np.full(n_targets, np.nan)
    tests = sorted(tests, key=lambda t: t[0])  # stable: session order, then trial order
    ids = np.array([t[1] for t in tests])
    names, reps = np.unique(ids, return_counts=True)
    n_reps = int(reps.min())
    if reps.max() != n_reps:
        log.warning(
            "test images have %d to %d repetitions; the noise ceiling uses the first %d", n_reps, reps.max(), n_reps
        )
    index = np.stack([np.flatnonzero(ids == name)[:n_reps] for name in names], axis=1)  # (reps, images)
    data = np.stack([[tests[k][2] for k in row] for row in index])  # (reps, images, targets)
    return nc_from_ncsnr(kknc_ncsnr(data.transpose(2, 0, 1)), counts)


def published_image_count(n_subjects: int) -> int:
    """Images every participant saw by the published design: 22,248 single presentations plus 200 test images."""
    return 22_448


def shares_image_order(ds: dict) -> bool:
    """Whether every selected subject's rows are the same images in the same order: yes (averaged in manifest order)."""
    return True
