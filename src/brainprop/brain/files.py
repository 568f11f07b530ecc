"""The brain stage's files: subject folders, the dataset check report, plant features and the planted truth.

A subject folder holds `Y.npy` (n_images, n_targets) float32, `targets.parquet` (one row per
column of Y: target, modality, atlas, roi, hemi, x, y, z, roi_distance_mm, sensor, time,
noise_ceiling) and `samples.parquet` (image_id and group of each row of Y).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..io import load_array, read_table


def load_subject(folder: str | Path) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Read a subject folder: (Y, target table, samples)."""
    folder = Path(folder)
    return (
        load_array(folder / "Y.npy", mmap=True),
        read_table(folder / "targets.parquet"),
        read_table(folder / "samples.parquet"),
    )
