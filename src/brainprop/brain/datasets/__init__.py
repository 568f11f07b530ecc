"""Real datasets read from their published files: a registry of kinds and what the brain stage needs of them.

Each kind's module (nsd, nsd_algonauts, things_fmri, things_meg, things_eeg2) provides `MODALITY` and

- `check(root, ds, subject) -> list[Finding]`: what is present, missing or not in the format;
- `images(root, ds, out_dir) -> DataFrame`: the image set the selected subjects saw
  (image_id, path, group, source, width, height; paths absolute or relative to out_dir);
- `read_subject(root, ds, subject, image_ids) -> (seen_ids, Y, targets, counts)`;
- `files(root, ds, subject)` and `image_files(root, ds)`: the paths `read_subject` and `images`
  read, from the config alone (no file is opened), which the workflow declares as inputs of the
  brain and stimuli rules, so that a replaced dataset file reruns exactly what read it.

The functions here turn those into the contract's formats: the check report, the manifest's rows
and a subject's data in the subject-folder format (`brainprop.brain.files`); the brain and
stimuli rules (`brainprop.brain.rules`, `brainprop.stimuli.rules`) write them.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd

from ..sensors import grouped_sensors
from ._common import TARGET_COLUMNS, DatasetError, Finding
from .geometry import roi_distances

__all__ = [
    "DATASET_KINDS",
    "DatasetError",
    "Finding",
    "build_manifest",
    "check_dataset",
    "dataset_files",
    "format_report",
    "image_set_files",
    "modality",
    "published_image_count",
    "reader",
    "shared_fits",
    "shares_image_order",
    "subject_data",
]

log = logging.getLogger("brainprop.datasets")

# kind -> module name of its reader
DATASET_KINDS: dict[str, str] = {
    "nsd": "nsd",
    "nsd_algonauts": "nsd_algonauts",
    "things_fmri": "things_fmri",
    "things_meg": "things_meg",
    "things_eeg2": "things_eeg2",
}


def published_image_count(kind: str, n_subjects: int) -> int:
    """Images the selected subjects of a real dataset kind saw, by the published design (DATASETS.md).

    For planning before the manifest exists; each reader states its kind's design.
    """
    return reader(kind).published_image_count(n_subjects)


def shares_image_order(ds: dict) -> bool:
    """Whether a dataset's subjects all saw the same images in the same order (so their fits can share).

    Simulated subjects are all planted on the image set's rows in manifest order; a real kind's
    reader says it (THINGS-MEG and THINGS-EEG2: yes; NSD: with `images: shared`).
    """
    return ds["kind"] == "simulated" or reader(ds["kind"]).shares_image_order(ds)


def shared_fits(config: dict) -> list[str]:
    """Datasets whose subjects are fitted together: one shared encode and joint job per model × signal × layer."""
    if not config.get("encoding", {}).get("shared_fits", True):
        return []
    return [name for name, ds in config["datasets"].items() if len(ds["subjects"]) > 1 and shares_image_order(ds)]


def reader(kind: str) -> ModuleType:
    """The reader module of a dataset kind."""
    if kind not in DATASET_KINDS:
        raise ValueError(f"dataset kind {kind!r} has no reader; expected one of {sorted(DATASET_KINDS)}")
    return importlib.import_module(f".{DATASET_KINDS[kind]}", __name__)


def modality(kind: str) -> str:
    """fmri or meg."""
    return reader(kind).MODALITY


def dataset_files(ds: dict, subject: str | None = None) -> list[str]:
    """The existing files a real dataset's reader reads for one subject (or every subject): brain inputs.

    Sorted paths, found from the config alone. Files that are absent, or a subject name the reader
    does not know, are left to the check rule, which reports them; what is listed here only makes
    Snakemake rerun a job whose files changed.
    """
    module, root = reader(ds["kind"]), Path(ds["root"])
    return _existing(lambda: [p for s in ([subject] if subject else ds["subjects"]) for p in module.files(root, ds, s)])


def image_set_files(ds: dict) -> list[str]:
    """The existing files a real dataset's image set is built from (design tables, image files): stimuli inputs."""
    module, root = reader(ds["kind"]), Path(ds["root"])
    return _existing(lambda: module.image_files(root, ds))


def _existing(listing: Callable[[], list]) -> list[str]:
    """The sorted existing files of a reader's listing; none when the listing itself fails (the check reports why)."""
    try:
        paths = listing()
    except (DatasetError, KeyError, ValueError, OSError):
        return []
    return sorted({str(p) for p in paths if Path(p).is_file()})


def check_dataset(ds: dict) -> pd.DataFrame:
    """Per subject, every file looked for with its status (found | missing | mismatch) and detail."""
    root = Path(ds["root"])
    if not root.is_dir():
        findings = [Finding(s, "root", str(root), "missing", "dataset root is not a folder") for s in ds["subjects"]]
    else:
        module = reader(ds["kind"])
        findings = [_with_near_names(f) for subject in ds["subjects"] for f in module.check(root, ds, subject)]
    return pd.DataFrame([f.__dict__ for f in findings], columns=["subject", "item", "path", "status", "detail"])


def _with_near_names(finding: Finding) -> Finding:
    """A missing file's finding, with the entries near the first missing part of its path (a misnamed folder)."""
    if finding.status != "missing":
        return finding
    path = Path(finding.path)
    parent = next((p for p in path.parents if p.is_dir()), None)
    if parent is None or parent == path:
        return finding
    wanted = path.relative_to(parent).parts[0]
    if wanted == path.name and finding.subject not in wanted:
        return finding  # a file missing beside its siblings, not a misnamed folder or subject
    entries = sorted(e.name for e in parent.iterdir())
    near = difflib.get_close_matches(wanted, entries, n=3, cutoff=0.6)
    if not near:
        return finding
    hint = f"{parent} has no {wanted!r} but has {near}: a misnamed folder or subject? the reader expects {wanted!r}"
    detail = f"{finding.detail}; {hint}" if finding.detail else hint
    return Finding(finding.subject, finding.item, finding.path, finding.status, detail)


def format_report(report: pd.DataFrame) -> str:
    """The check report as text, one block per subject, problems first."""
    lines = []
    for subject, part in report.groupby("subject", sort=False):
        counts = part["status"].value_counts().to_dict()
        lines.append(
            f"{subject}: {counts.get('found', 0)} found, {counts.get('missing', 0)} missing, "
            f"{counts.get('mismatch', 0)} not as expected"
        )
        order = part.assign(rank=part["status"].map({"missing": 0, "mismatch": 1, "found": 2}))
        for row in order.sort_values("rank", kind="stable").itertuples():
            detail = f" ({row.detail})" if row.detail else ""
            lines.append(f"  {row.status:8s} {row.item}: {row.path}{detail}")
    return "\n".join(lines)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_manifest(out_dir: str | Path, ds: dict, name: str) -> pd.DataFrame:
    """The manifest of a dataset's image set: the images its selected subjects saw."""
    out_dir = Path(out_dir)
    rows = reader(ds["kind"]).images(Path(ds["root"]), ds, out_dir)
    if rows.empty:
        raise DatasetError(f"dataset {name!r}: the selected subjects saw no image")
    paths = [p if Path(p).is_absolute() else out_dir / p for p in rows["path"]]
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise DatasetError(f"dataset {name!r}: {len(missing)} image ids without an image file, e.g. {missing[:5]}")
    manifest = rows.assign(path=rows["path"].astype(str), sha256=[_sha256(Path(p)) for p in paths])
    columns = ["image_id", "path", "sha256", "group", "source", "width", "height"]
    return manifest[columns].astype({"width": "int64", "height": "int64"})


def _finish_targets(ds: dict, targets: pd.DataFrame, kind_modality: str) -> pd.DataFrame:
    """The contract's target table (brain.py) from a reader's target rows."""
    table = targets.copy()
    if kind_modality == "fmri":
        table["roi_distance_mm"] = roi_distances(table, ds["reference_roi"])
        table = table.assign(modality="fmri", atlas=ds["atlas"], sensor="", time=np.nan)
    else:
        groups = grouped_sensors(table["sensor"].to_numpy(), ds.get("sensor_groups", "standard"))
        table = table.assign(
            modality="meg", atlas="", roi=groups, hemi="", x=np.nan, y=np.nan, z=np.nan, roi_distance_mm=np.nan
        )
    table["target"] = np.arange(len(table), dtype=np.int64)
    return table[list(TARGET_COLUMNS)].astype(
        {"x": float, "y": float, "z": float, "time": float, "noise_ceiling": float}
    )


def _check_rows(ds: dict, subject: str, seen: list[str], Y: np.ndarray) -> None:
    """Refuse images whose response is non-finite in every target (they would take every target with them)."""
    empty = np.flatnonzero(~np.isfinite(Y).any(axis=1)) if Y.shape[1] else np.array([], dtype=int)
    if empty.size:
        ids = [seen[k] for k in empty[:10]]
        files = dataset_files(ds, subject)
        raise DatasetError(
            f"{ds['kind']} subject {subject} at {ds['root']}: {empty.size} image(s) {ids} have no finite response "
            f"in any of the {Y.shape[1]} targets (NaN or infinite in the files read: {files[:5]}"
            f"{' ...' if len(files) > 5 else ''}); expected a finite response to every image the subject saw. "
            "Fix or replace those dataset files, then run snakemake again (they are inputs of the brain rule, so "
            "a replaced file reruns this subject)"
        )


def subject_data(ds: dict, subject: str, manifest: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """One real subject's (Y, target table, samples) in the subject-folder format (brain/files.py).

    Rows are the manifest images the subject saw, in manifest order; targets with a non-finite
    response (NaN, or constant within a session) are left out and counted in the log.
    """
    module = reader(ds["kind"])
    seen, Y, targets, counts = module.read_subject(Path(ds["root"]), ds, subject, manifest["image_id"].tolist())
    absent = len(manifest) - len(seen)
    if absent:
        log.info(
            "%s: %d of the %d manifest images were not shown to this subject; its rows cover the %d it saw "
            "(encoding selects their feature rows and keeps each image's dataset-wide fold)",
            subject,
            absent,
            len(manifest),
            len(seen),
        )
    _check_rows(ds, subject, seen, Y)
    finite = np.isfinite(Y).all(axis=0)
    if not finite.all():
        log.warning(
            "%s: %d of %d targets excluded (NaN or constant within a session)",
            subject,
            int((~finite).sum()),
            len(finite),
        )
    Y, targets = Y[:, finite], targets.loc[finite].reset_index(drop=True)
    if Y.shape[1] == 0:
        raise DatasetError(f"{subject}: no target left with finite responses")
    table = _finish_targets(ds, targets, module.MODALITY)
    samples = manifest.set_index("image_id").loc[seen, ["group"]].reset_index()
    samples["n_trials"] = np.asarray(counts, dtype=np.int64)
    log.info(
        "%s %s: %d images x %d targets; trials per image %s",
        ds["kind"],
        subject,
        *Y.shape,
        dict(zip(*[v.tolist() for v in np.unique(counts, return_counts=True)])),
    )
    return np.ascontiguousarray(Y, dtype=np.float32), table, samples
