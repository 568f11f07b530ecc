"""Real datasets read from their published files: a registry of kinds and what the brain stage needs of them.

Each kind's module (nsd, nsd_algonauts, things_fmri, things_meg, things_eeg2) provides `MODALITY` and

- `check(root, ds, subject) -> list[Finding]`: what is present, missing or not in the format;
- `images(root, ds, out_dir) -> DataFrame`: the image set the selected subjects saw
  (image_id, path, group, source, width, height; paths absolute or relative to out_dir);
- `read_subject(root, ds, subject, image_ids) -> (seen_ids, Y, targets, counts)`.

The functions here turn those into the contract's formats: the check report, the manifest's rows
and a subject's data in the subject-folder format (`brainprop.brain.files`); the brain and
stimuli rules (`brainprop.brain.rules`, `brainprop.stimuli.rules`) write them.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd

from ..sensors import grouped_sensors
from ._common import TARGET_COLUMNS, DatasetError, Finding
from .geometry import roi_distances

__all__ = [
    "DATASET_KINDS",
    "SHARED_IMAGE_ORDER",
    "DatasetError",
    "Finding",
    "build_manifest",
    "check_dataset",
    "format_report",
    "modality",
    "published_image_count",
    "reader",
    "shared_fits",
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

# Kinds whose subjects all saw the same images, averaged into the manifest's order (THINGS-MEG:
# the 22,248 + 200 images for every participant; THINGS-EEG2: the 16,540 + 200 for every subject,
# in the files' row order): their encode jobs share one decomposition.
SHARED_IMAGE_ORDER = frozenset({"things_meg", "things_eeg2"})


def published_image_count(kind: str, n_subjects: int) -> int:
    """Images the selected subjects of a dataset kind saw, by the published design (DATASETS.md).

    For planning before the manifest exists: NSD and Algonauts 2023 (NSD's images) 1,000 shared
    plus 9,000 per subject (73,000 at most); THINGS-fMRI 8,640 + 100; THINGS-MEG 22,248 + 200;
    THINGS-EEG2 16,540 + 200.
    """
    counts = {
        "nsd": min(1_000 + 9_000 * n_subjects, 73_000),
        "nsd_algonauts": min(1_000 + 9_000 * n_subjects, 73_000),
        "things_fmri": 8_740,
        "things_meg": 22_448,
        "things_eeg2": 16_740,
    }
    if kind not in counts:
        raise ValueError(f"dataset kind {kind!r} has no published image count; expected one of {sorted(counts)}")
    return counts[kind]


def shared_fits(config: dict) -> list[str]:
    """Datasets whose subjects are fitted together, one encode_shared job per model × signal × layer."""
    if not config.get("encoding", {}).get("shared_fits", True):
        return []
    return [
        name for name, ds in config["datasets"].items() if ds["kind"] in SHARED_IMAGE_ORDER and len(ds["subjects"]) > 1
    ]


def reader(kind: str) -> ModuleType:
    """The reader module of a dataset kind."""
    if kind not in DATASET_KINDS:
        raise ValueError(f"dataset kind {kind!r} has no reader; expected one of {sorted(DATASET_KINDS)}")
    return importlib.import_module(f".{DATASET_KINDS[kind]}", __name__)


def modality(kind: str) -> str:
    """fmri or meg."""
    return reader(kind).MODALITY


def check_dataset(ds: dict) -> pd.DataFrame:
    """Per subject, every file looked for with its status (found | missing | mismatch) and detail."""
    root = Path(ds["root"])
    if not root.is_dir():
        findings = [Finding(s, "root", str(root), "missing", "dataset root is not a folder") for s in ds["subjects"]]
    else:
        module = reader(ds["kind"])
        findings = [f for subject in ds["subjects"] for f in module.check(root, ds, subject)]
    return pd.DataFrame([f.__dict__ for f in findings], columns=["subject", "item", "path", "status", "detail"])


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
