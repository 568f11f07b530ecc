"""ROI geometry for the spatial score (METHOD.md §3): centroids in MNI mm and distances from the reference ROI.

fsaverage data take vertex coordinates from the fsaverage5 pial mesh that nilearn ships (its
10,242 vertices per hemisphere are the first 10,242 of fsaverage). Data in native space use
`MNI_CENTROIDS`, a table of published centroids by ROI name. Hemispheres are pooled by
mirroring x (|x|).
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import pandas as pd

__all__ = ["FSAVERAGE5_VERTICES", "MNI_CENTROIDS", "fsaverage_coordinates", "roi_distances", "table_coordinates"]

log = logging.getLogger("brainprop.datasets")

FSAVERAGE5_VERTICES = 10242

# Right-hemisphere MNI centroids (mm), rounded to whole mm. Sources:
#   retinotopic areas: Wang, Mruczek, Arcaro & Kastner (2015) Cereb Cortex 25:3911, probabilistic
#     atlas (maximum-probability maps), centroids of the MNI152 volumes;
#   category-selective areas: Julian, Fedorenko, Webster & Kanwisher (2012) NeuroImage 60:2357
#     group-constrained parcels (FFA, OFA, STS, PPA, RSC, TOS/OPA, EBA, LOC), and Downing et al.
#     (2001) Science 293:2470 for EBA;
#   IT: the union of the Glasser (2016) areas TE1p, TE2p, FFC, VVC, VMV2-3, PHA1-3 as THINGS-fMRI
#     defines it, centroid of the HCP-MMP1 MNI volume.
# They locate ROIs to within a few millimetres; the spatial score only uses their distances.
MNI_CENTROIDS: dict[str, tuple[float, float, float]] = {
    "V1": (10, -90, 2),
    "V1v": (10, -86, -4),
    "V1d": (10, -94, 8),
    "V2": (15, -88, 2),
    "V2v": (14, -82, -8),
    "V2d": (14, -94, 12),
    "V3": (22, -88, 4),
    "V3v": (22, -80, -12),
    "V3d": (22, -94, 16),
    "hV4": (30, -78, -12),
    "VO1": (28, -70, -12),
    "VO2": (30, -62, -12),
    "PHC1": (30, -54, -8),
    "PHC2": (30, -46, -10),
    "LO1": (36, -88, 2),
    "LO2": (42, -84, 0),
    "TO1": (46, -74, 4),
    "TO2": (46, -68, 4),
    "V3a": (26, -86, 22),
    "V3A": (26, -86, 22),
    "V3b": (32, -86, 14),
    "V3B": (32, -86, 14),
    "FFA": (40, -52, -20),
    "FFA-1": (40, -62, -18),
    "FFA-2": (40, -46, -20),
    "OFA": (40, -78, -12),
    "STS": (50, -46, 10),
    "aTL-faces": (36, -8, -34),
    "mTL-faces": (40, -30, -22),
    "PPA": (26, -46, -10),
    "RSC": (16, -54, 10),
    "TOS": (34, -82, 22),
    "OPA": (34, -82, 22),
    "EBA": (48, -70, 2),
    "FBA-1": (40, -48, -20),
    "FBA-2": (42, -44, -16),
    "mTL-bodies": (42, -34, -20),
    "LOC": (42, -76, -8),
    "IT": (40, -40, -22),
    "OWFA": (44, -72, -12),
    "VWFA-1": (44, -58, -14),
    "VWFA-2": (44, -46, -14),
    "TO1/hMT": (46, -74, 4),
    "TO2/MST": (46, -68, 4),
    "IPS0": (26, -80, 28),
    "IPS1": (24, -72, 46),
    "IPS2": (22, -64, 54),
    "IPS3": (26, -58, 56),
    "IPS4": (24, -52, 60),
    "IPS5": (28, -46, 58),
    "SPL1": (20, -60, 62),
    "FEF": (30, -6, 52),
}


@functools.cache
def _fsaverage5() -> dict[str, np.ndarray]:
    from nilearn import datasets

    mesh = datasets.load_fsaverage("fsaverage5")["pial"]
    return {"lh": np.asarray(mesh.parts["left"].coordinates), "rh": np.asarray(mesh.parts["right"].coordinates)}


def fsaverage_coordinates(hemi: str, vertices: np.ndarray) -> np.ndarray:
    """(n, 3) fsaverage5 pial coordinates of fsaverage vertex indices; NaN for indices ≥ 10,242."""
    vertices = np.asarray(vertices, dtype=np.int64)
    out = np.full((len(vertices), 3), np.nan)
    low = vertices < FSAVERAGE5_VERTICES
    out[low] = _fsaverage5()[hemi][vertices[low]]
    return out


def table_coordinates(roi: str, hemi: str) -> tuple[float, float, float]:
    """Published MNI centroid of an ROI (x negated in the left hemisphere); NaNs when the table lacks it."""
    if roi not in MNI_CENTROIDS:
        return (np.nan, np.nan, np.nan)
    x, y, z = MNI_CENTROIDS[roi]
    return (-x if hemi == "lh" else x, y, z)


def roi_distances(targets: pd.DataFrame, reference: str = "V1") -> pd.Series:
    """Distance (mm) of each target's ROI centroid from the reference ROI's, x mirrored.

    Centroids average the targets' finite coordinates with |x|. The reference is the ROI named
    `reference`, or when absent and `reference` is V1, the union of V1v and V1d.
    """
    xyz = targets[["x", "y", "z"]].astype(float).assign(x=lambda d: d["x"].abs(), roi=targets["roi"])
    finite = xyz.dropna()
    centroids = finite.groupby("roi")[["x", "y", "z"]].mean()
    names = set(finite["roi"])
    if reference in names:
        ref = centroids.loc[reference].to_numpy()
    elif reference == "V1" and {"V1v", "V1d"} & names:
        ref = finite[finite["roi"].isin(["V1v", "V1d"])][["x", "y", "z"]].mean().to_numpy()
    else:
        raise ValueError(f"reference ROI {reference!r} not among the ROIs with coordinates {sorted(names)}")
    missing = sorted(set(targets["roi"]) - names)
    if missing:
        log.warning("no coordinates (roi_distance_mm NaN) for ROIs %s", missing)
    dist = {roi: float(np.linalg.norm(c - ref)) for roi, c in zip(centroids.index, centroids.to_numpy())}
    return targets["roi"].map(dist).astype(float)
