"""What every real-dataset reader shares: errors, findings, session z-scores, repetition means, noise ceilings."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..files import TARGET_COLUMNS

__all__ = [
    "TARGET_COLUMNS",
    "DatasetError",
    "Finding",
    "IMAGE_SUFFIXES",
    "RepetitionMean",
    "files_under",
    "image_group",
    "kknc_ncsnr",
    "nc_from_ncsnr",
    "require_file",
    "resolve",
    "short",
    "split_half_ncsnr",
    "zscore_columns",
]

log = logging.getLogger("brainprop.datasets")


class DatasetError(ValueError):
    """A dataset file is missing or not in the published format; the message names the file and what was expected."""


@dataclass(frozen=True)
class Finding:
    """One line of a data check: what was looked for, where, and whether it matched."""

    subject: str
    item: str
    path: str
    status: str  # found | missing | mismatch
    detail: str = ""


def short(value: object) -> str:
    """A value as at most 120 characters of text, for the check report."""
    if isinstance(value, pd.DataFrame):
        return f"{len(value)} rows x {value.shape[1]} columns"
    text = str(value)
    return text if len(text) <= 120 else text[:117] + "..."


class Probe:
    """A subject's file checks, collected as findings: missing, mismatch (with the reason) or found."""

    ERRORS = (DatasetError, OSError, ValueError, KeyError)

    def __init__(self, subject: str):
        self.subject = subject
        self.found: list[Finding] = []

    def __call__(self, item: str, path: Path, test, describe=None) -> object:
        """`test(path)`'s value, or None when the file is missing or does not match the format."""
        if not path.exists():
            self.found.append(Finding(self.subject, item, str(path), "missing"))
            return None
        try:
            value = test(path)
        except self.ERRORS as err:
            self.found.append(Finding(self.subject, item, str(path), "mismatch", str(err)))
            return None
        self.found.append(
            Finding(self.subject, item, str(path), "found", short(describe(value) if describe else value))
        )
        return value


def resolve(root: str | Path, path: str | Path) -> Path:
    """`path` itself when absolute, else relative to the dataset root."""
    path = Path(path)
    return path if path.is_absolute() else Path(root) / path


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def files_under(folder: Path, suffixes: tuple[str, ...] | None = None) -> list[Path]:
    """Every file below `folder` (with one of `suffixes`, any case), sorted; none when it is not a folder."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and (suffixes is None or p.suffix.lower() in suffixes))


def require_file(path: Path, what: str) -> Path:
    """`path` when it is a file, else a DatasetError naming it and what it should hold."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing; expected {what}")
    return path


def zscore_columns(x: np.ndarray) -> np.ndarray:
    """z-score each column over rows (float32); a constant or non-finite column becomes all NaN."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    sd = x.std(axis=0)
    bad = ~np.isfinite(sd) | (sd == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (x - mean) / np.where(bad, 1.0, sd)
    z[:, bad] = np.nan
    return z.astype(np.float32)


class RepetitionMean:
    """Running per-image sums of trial responses, so that repetitions are averaged without holding every trial."""

    def __init__(self, image_ids: list[str], n_targets: int):
        self.index = {image_id: k for k, image_id in enumerate(image_ids)}
        # float32 sums: at most a few dozen z-scored trials per image, and half the memory of float64
        self.sums = np.zeros((len(image_ids), n_targets), dtype=np.float32)
        self.counts = np.zeros(len(image_ids), dtype=np.int64)

    def add(self, image_ids: list[str] | np.ndarray, responses: np.ndarray) -> None:
        """Add trials (n_trials, n_targets) shown with `image_ids`."""
        rows = np.fromiter((self.index[i] for i in image_ids), dtype=np.int64, count=len(image_ids))
        np.add.at(self.sums, rows, responses)
        np.add.at(self.counts, rows, 1)

    def result(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Image ids with at least one trial, their (n, n_targets) float32 means and trial counts."""
        seen = np.flatnonzero(self.counts > 0)
        ids = list(self.index)
        means = self.sums[seen] / self.counts[seen, None].astype(np.float32)
        return [ids[k] for k in seen], means.astype(np.float32), self.counts[seen]


def nc_from_ncsnr(ncsnr: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Noise ceiling (fraction, r² scale) of repetition means: ncsnr² / (ncsnr² + mean(1/n_i)).

    With A images averaged over 1 trial, B over 2 and C over 3, mean(1/n_i) is
    (A/1 + B/2 + C/3)/(A+B+C), the NSD Data Manual's mixed-repetition formula.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.size == 0 or (counts < 1).any():
        raise ValueError("repetition counts must be >= 1 for every image")
    inverse_n = float(np.mean(1.0 / counts))
    snr2 = np.asarray(ncsnr, dtype=np.float64) ** 2
    with np.errstate(invalid="ignore"):  # ncsnr inf (no noise) gives 1; NaN (no estimate) stays NaN
        return np.where(np.isinf(snr2), 1.0, snr2 / (snr2 + inverse_n))


def kknc_ncsnr(data: np.ndarray) -> np.ndarray:
    """ncsnr per target from repeated trials (n_targets, n_reps, n_images), as THINGS-data `anc.kknc`.

    Each repetition is z-scored over images; noise_sd = sqrt(mean over images of the variance
    across repetitions, ddof=1); signal_sd = sqrt(max(1 - noise_sd², 0)); ncsnr = signal_sd / noise_sd.
    """
    data = np.asarray(data, dtype=np.float64)
    mean = data.mean(axis=-1, keepdims=True)
    sd = data.std(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (data - mean) / sd
        noise_sd = np.sqrt(np.mean(np.var(z, axis=-2, ddof=1), axis=-1))
        signal_sd = np.sqrt(np.clip(1.0 - noise_sd**2, 0.0, None))
        return signal_sd / noise_sd


def split_half_ncsnr(data: np.ndarray, iterations: int = 100, seed: int = 0) -> np.ndarray:
    """ncsnr per target from repeated trials (n_targets, n_reps, n_images) by THINGS-EEG2's split-half procedure.

    As the official `correlation.py`: `iterations` times, the repetitions are split at random
    (one seeded permutation per iteration, shared by every target) into halves A and B of
    n_reps // 2 each; r(mean_A, mean_B) over images is averaged over iterations. That is the
    reliability ρ_k of a k = n_reps // 2 trial mean; Spearman–Brown gives the single-trial
    ρ_1 = ρ_k / (k − (k − 1) ρ_k), and ncsnr² = ρ_1 / (1 − ρ_1) (signal over noise variance), so
    `nc_from_ncsnr` puts it on the scale of the other readers. ρ_k ≤ 0 gives 0, ρ_k ≥ 1 inf.
    """
    data = np.asarray(data, dtype=np.float64)
    n_reps = data.shape[1]
    half = n_reps // 2
    if half < 1:
        raise ValueError(f"split-half noise ceiling needs at least 2 repetitions, got {n_reps}")
    rng = np.random.default_rng(seed)
    total = np.zeros(data.shape[0])
    for _ in range(iterations):
        order = rng.permutation(n_reps)
        a = data[:, order[:half]].mean(axis=1)
        b = data[:, order[half : 2 * half]].mean(axis=1)
        a = a - a.mean(axis=1, keepdims=True)
        b = b - b.mean(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            total += (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    rho_k = np.clip(total / iterations, 0.0, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho_1 = rho_k / (half - (half - 1) * rho_k)
        return np.sqrt(rho_1 / (1.0 - rho_1))


def image_group(image_ids: pd.Series, groups: pd.Series | None = None) -> pd.Series:
    """Fold group per image: the given groups, else the image itself."""
    return image_ids.astype(str) if groups is None else groups.astype(str)
