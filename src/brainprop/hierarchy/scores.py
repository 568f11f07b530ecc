"""Hierarchy scores (METHOD.md §5): best layer per ROI, T_max per layer, spatial and temporal scores.

Every function is a pure function of contract tables (see `brainprop.contract.TABLES`):
`best_layers` and `tmax` read the encoding table, `spatial_score` and `temporal_score` one
subject's `best_layers` / `tmax` rows, and `subject_hierarchy` chains them for all signals.
`target_depths` does per fMRI target (vertex or voxel) what `best_layers` does per ROI, from
the encode stage's per-target scores, and adds the score-weighted mean depth and the map
threshold (`target_thresholds`) that the target-level spatial score (`target_spatial_score`) uses.

Each hierarchy row names its `unit`, what the correlation runs over (`SCORE_UNITS`): `roi`
(ROIs' best layers) or `target` (vertices' or voxels' best layers) for the spatial score,
`layer` (layers' T_max, the paper's temporal score) or `time` (time points' best layer, the
paper's Fig. 3F variant) for the temporal score; and its `roi`: the MEG sensor group ("" for
all sensors; "" for spatial rows). MEG encoding and tmax rows carry the sensor group in `roi` too;
`all_sensors` keeps the all-sensor rows that the tests read.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from .files import TARGET_DEPTH_COLUMNS, TARGET_DEPTH_TYPES

__all__ = [
    "ALL_SENSORS",
    "EXCLUSION_RULES",
    "SCORE_UNITS",
    "all_sensors",
    "best_layer_per_time",
    "best_layers",
    "exclusion_mask",
    "in_window",
    "layer_tmax",
    "pearson",
    "score_rows",
    "spatial_score",
    "subject_hierarchy",
    "subject_target_depths",
    "target_depths",
    "target_spatial_score",
    "target_thresholds",
    "temporal_score",
    "time_score",
    "tmax",
    "weighted_depth",
]

# The `roi` of the MEG rows over all sensors (a sensor group's rows carry its name).
ALL_SENSORS = ""
# score -> the units its correlation can run over (first: the default the tests read).
SCORE_UNITS: dict[str, tuple[str, ...]] = {"spatial": ("roi", "target"), "temporal": ("layer", "time")}

# Grouping keys of the derived tables.
BEST_KEYS = ["dataset", "model", "signal", "subject", "atlas", "roi", "hemi"]
TMAX_KEYS = ["dataset", "model", "signal", "subject", "layer_index"]
SUBJECT_KEYS = ["dataset", "model", "signal", "subject"]
GROUP_KEYS = [*SUBJECT_KEYS, "roi"]

_ENC_FMRI = [
    "dataset",
    "modality",
    "model",
    "signal",
    "subject",
    "atlas",
    "roi",
    "hemi",
    "layer_index",
    "depth",
    "roi_distance_mm",
    "r",
]
_ENC_MEG = ["dataset", "modality", "model", "signal", "subject", "roi", "layer_index", "depth", "time", "r"]

# Which ROIs (by best r) or layers (by peak r) enter a score; non-finite values never do.
EXCLUSION_RULES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "nonpositive": lambda r: r > 0,
    "none": lambda r: np.ones(r.shape, dtype=bool),
}


def exclusion_mask(r: np.ndarray, exclude: str = "nonpositive") -> np.ndarray:
    """Return the keep-mask of shape `(n,)` for scores `r` of shape `(n,)` under rule `exclude`."""
    if exclude not in EXCLUSION_RULES:
        raise ValueError(
            f"exclude={exclude!r} is not a known exclusion rule; expected one of {sorted(EXCLUSION_RULES)}"
        )
    r = np.asarray(r, dtype=np.float64)
    finite = np.isfinite(r)
    return finite & EXCLUSION_RULES[exclude](np.where(finite, r, 0.0))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of two `(n,)` vectors in float64; NaN when n < 2 or either is constant."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"pearson needs two vectors of equal length, got shapes {x.shape} and {y.shape}")
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    return float(np.clip(xc @ yc / np.sqrt((xc @ xc) * (yc @ yc)), -1.0, 1.0))


def _require(table: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; expected the contract columns {columns}")


def _check_unique(table: pd.DataFrame, keys: list[str], what: str) -> None:
    dup = table.duplicated(keys)
    if dup.any():
        first = table.loc[dup, keys].iloc[0].to_dict()
        raise ValueError(
            f"{what} has {int(dup.sum())} duplicated rows over {keys}, e.g. {first}; expected one row per key"
        )


def _fmri_rows(enc: pd.DataFrame) -> pd.DataFrame:
    _require(enc, ["modality"], "encoding table")
    fmri = enc[enc["modality"] == "fmri"]
    _require(fmri, _ENC_FMRI, "encoding table")
    _check_unique(fmri, BEST_KEYS + ["layer_index"], "encoding table (fmri rows)")
    return fmri


def _meg_rows(enc: pd.DataFrame, window: tuple | None = None) -> pd.DataFrame:
    _require(enc, ["modality"], "encoding table")
    meg = enc[enc["modality"] == "meg"]
    _require(meg, _ENC_MEG, "encoding table")
    _check_unique(meg, TMAX_KEYS + ["roi", "time"], "encoding table (meg rows)")
    return meg[in_window(meg["time"].to_numpy(np.float64), window)]


def in_window(times: np.ndarray, window: tuple | list | None) -> np.ndarray:
    """Keep-mask of `times` (s) within [start, end] (`hierarchy.tmax_window`; None or a None end: open)."""
    times = np.asarray(times, dtype=np.float64)
    start, end = (None, None) if window is None else window
    keep = np.ones(times.shape, dtype=bool)
    if start is not None:
        keep &= times >= float(start) - 1e-9
    if end is not None:
        keep &= times <= float(end) + 1e-9
    return keep


def all_sensors(table: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The rows of a contract `encoding`, `tmax` or `hierarchy` table over all sensors (and every fMRI row).

    Sensor-group rows (MEG rows whose `roi` names a group) are dropped; a table without a `roi`
    column (tmax, hierarchy written before sensor groups) is returned as is.
    """
    if kind not in ("encoding", "tmax", "hierarchy"):
        raise ValueError(f"kind={kind!r}; expected encoding, tmax or hierarchy (the tables with sensor-group rows)")
    if "roi" not in table.columns or not len(table):
        return table
    group = table["roi"].astype(str).to_numpy() != ALL_SENSORS
    if kind != "tmax":
        group &= table["modality"].to_numpy() == "meg"
    return table[~group]


def score_rows(hier: pd.DataFrame, spatial_unit: str = "roi", temporal_unit: str = "layer") -> pd.DataFrame:
    """The hierarchy rows the tests read: spatial rows of `spatial_unit`, temporal rows of `temporal_unit`
    over all sensors. Rows without a `unit` column are taken as roi / layer."""
    for score, unit in (("spatial", spatial_unit), ("temporal", temporal_unit)):
        if unit not in SCORE_UNITS[score]:
            raise ValueError(f"{score} unit {unit!r} unknown; expected one of {list(SCORE_UNITS[score])}")
    hier = all_sensors(hier, "hierarchy")
    if "unit" not in hier.columns:
        return hier
    wanted = np.where(hier["score"].to_numpy() == "spatial", spatial_unit, temporal_unit)
    return hier[hier["unit"].to_numpy() == wanted]


def best_layers(enc: pd.DataFrame) -> pd.DataFrame:
    """Best layer (argmax of r over layers, ties to the shallowest) per fMRI ROI and hemisphere.

    Returns the contract `best_layers` columns plus `roi_distance_mm`; a group whose r is NaN
    at every layer gets best_layer_index -1 and NaN depth and r (no exclusion rule keeps it).
    """
    fmri = _fmri_rows(enc)
    # Sorting by r descending (NaN last), then layer_index ascending, puts the argmax with
    # ties broken to the shallowest layer first in each group.
    ordered = fmri.sort_values(
        BEST_KEYS + ["r", "layer_index"],
        ascending=[True] * len(BEST_KEYS) + [False, True],
        na_position="last",
        kind="mergesort",
    )
    best = ordered.drop_duplicates(BEST_KEYS, keep="first")
    out = pd.DataFrame(
        {
            **{k: best[k].astype(str).to_numpy() for k in BEST_KEYS},
            "best_layer_index": best["layer_index"].to_numpy(dtype=np.int64),
            "best_depth": best["depth"].to_numpy(dtype=np.float64),
            "best_r": best["r"].to_numpy(dtype=np.float64),
            "roi_distance_mm": best["roi_distance_mm"].to_numpy(dtype=np.float64),
        }
    )
    undefined = ~np.isfinite(out["best_r"].to_numpy())
    out.loc[undefined, "best_layer_index"] = -1
    out.loc[undefined, "best_depth"] = np.nan
    return out.reset_index(drop=True)


def layer_tmax(times: np.ndarray, r: np.ndarray, threshold: float) -> tuple[float, float]:
    """T_max (s) and peak r of one layer's time course; times `(n_times,)`, r `(n_times,)`."""
    finite = np.isfinite(r)
    if not finite.any():
        return float("nan"), float("nan")
    peak = float(np.max(r[finite]))
    # A non-positive peak cannot be normalised; keep the times within (1 - threshold)·|peak| of
    # it, which is the same rule for a positive peak. Such layers are usually excluded.
    near = finite & (r / peak >= threshold) if peak > 0 else finite & (r >= peak - (1.0 - threshold) * abs(peak))
    return float(np.mean(times[near], dtype=np.float64)), peak


def tmax(enc: pd.DataFrame, threshold: float = 0.95, window: tuple | list | None = None) -> pd.DataFrame:
    """T_max (mean of the times where r(t) / max r(t) >= threshold) and peak r per MEG layer and sensor group.

    Only the times within `window` ([start, end] s, None ends open; `hierarchy.tmax_window`)
    enter, peak r included. Returns the contract `tmax` columns plus `roi` (the sensor group,
    "" for all sensors), one row per dataset × model × signal × subject × group × layer.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold!r} is outside (0, 1]; expected a fraction of the peak")
    keys = [*SUBJECT_KEYS, "roi", "layer_index"]
    meg = _meg_rows(enc, window).sort_values(keys + ["time"], kind="mergesort")
    rows = []
    for key, layer in meg.groupby(keys, sort=True):
        t_max, peak = layer_tmax(layer["time"].to_numpy(np.float64), layer["r"].to_numpy(np.float64), threshold)
        rows.append((*key, float(layer["depth"].iloc[0]), t_max, peak))
    out = pd.DataFrame(rows, columns=keys + ["depth", "t_max_s", "peak_r"])
    out = out[TMAX_KEYS + ["depth", "t_max_s", "peak_r", "roi"]]
    return out.astype(
        {k: str for k in [*SUBJECT_KEYS, "roi"]}
        | {"layer_index": np.int64, "depth": np.float64, "t_max_s": np.float64, "peak_r": np.float64}
    )


def best_layer_per_time(enc: pd.DataFrame, window: tuple | list | None = None) -> pd.DataFrame:
    """Best layer (argmax of r over layers, ties to the shallowest) at each MEG time point and sensor group.

    The paper's Fig. 3F variant of the temporal score reads it. Columns: dataset, model, signal,
    subject, roi (sensor group, "" all sensors), time, best_layer_index, best_depth, best_r; a time
    whose r is NaN at every layer gets best_layer_index -1 and NaN depth and r.
    """
    keys = [*GROUP_KEYS, "time"]
    meg = _meg_rows(enc, window)
    ordered = meg.sort_values(
        keys + ["r", "layer_index"], ascending=[True] * len(keys) + [False, True], na_position="last", kind="mergesort"
    )
    best = ordered.drop_duplicates(keys, keep="first")
    out = pd.DataFrame(
        {
            **{k: best[k].astype(str).to_numpy() for k in GROUP_KEYS},
            "time": best["time"].to_numpy(np.float64),
            "best_layer_index": best["layer_index"].to_numpy(np.int64),
            "best_depth": best["depth"].to_numpy(np.float64),
            "best_r": best["r"].to_numpy(np.float64),
        }
    )
    undefined = ~np.isfinite(out["best_r"].to_numpy())
    out.loc[undefined, "best_layer_index"] = -1
    out.loc[undefined, "best_depth"] = np.nan
    return out.reset_index(drop=True)


def _one_subject(table: pd.DataFrame, what: str, keys: list[str] = SUBJECT_KEYS) -> None:
    present = [k for k in keys if k in table.columns]
    n = len(table.drop_duplicates(present)) if len(table) else 0
    if n > 1:
        raise ValueError(f"{what} holds {n} dataset × model × signal × subject (× sensor group) groups; expected one")


def _score(x: np.ndarray, y: np.ndarray, keep: np.ndarray, min_count: int) -> tuple[float, int, int]:
    n_used = int(keep.sum())
    value = pearson(x[keep], y[keep]) if n_used >= min_count else float("nan")
    return value, n_used, int(keep.size - n_used)


def spatial_score(
    best: pd.DataFrame, atlas: str, min_count: int = 3, exclude: str = "nonpositive"
) -> tuple[float, int, int]:
    """Pearson(best depth, ROI distance from the reference ROI) over one subject's ROIs.

    Uses the `hemi == 'both'` rows of `atlas`; ROIs failing `exclude` (or with a non-finite
    depth or distance) are left out and counted. Returns (value, n_used, n_excluded); value is
    NaN with fewer than `min_count` ROIs or a constant variable.
    """
    _require(best, ["atlas", "hemi", "best_depth", "best_r", "roi_distance_mm"], "best_layers table")
    _one_subject(best, "best_layers table")
    rows = best[(best["atlas"] == atlas) & (best["hemi"] == "both")]
    depth = rows["best_depth"].to_numpy(np.float64)
    dist = rows["roi_distance_mm"].to_numpy(np.float64)
    keep = exclusion_mask(rows["best_r"].to_numpy(np.float64), exclude) & np.isfinite(depth) & np.isfinite(dist)
    return _score(depth, dist, keep, min_count)


def temporal_score(tm: pd.DataFrame, min_count: int = 3, exclude: str = "nonpositive") -> tuple[float, int, int]:
    """Pearson(depth, T_max) over one subject's layers (one sensor group); layers failing `exclude` on
    peak r are counted out.

    Returns (value, n_used, n_excluded); value is NaN with fewer than `min_count` layers or a
    constant variable.
    """
    _require(tm, ["depth", "t_max_s", "peak_r"], "tmax table")
    _one_subject(tm, "tmax table", GROUP_KEYS)
    depth = tm["depth"].to_numpy(np.float64)
    t_max = tm["t_max_s"].to_numpy(np.float64)
    keep = exclusion_mask(tm["peak_r"].to_numpy(np.float64), exclude) & np.isfinite(t_max) & np.isfinite(depth)
    return _score(depth, t_max, keep, min_count)


def time_score(bt: pd.DataFrame, min_count: int = 3, exclude: str = "nonpositive") -> tuple[float, int, int]:
    """Pearson(time, best depth) over one subject's time points (one sensor group): the Fig. 3F variant.

    `bt` holds `best_layer_per_time` rows; time points whose best r fails `exclude` (or with a
    non-finite depth) are left out and counted. Returns (value, n_used, n_excluded).
    """
    _require(bt, ["time", "best_depth", "best_r"], "best layer per time table")
    _one_subject(bt, "best layer per time table", GROUP_KEYS)
    time = bt["time"].to_numpy(np.float64)
    depth = bt["best_depth"].to_numpy(np.float64)
    keep = exclusion_mask(bt["best_r"].to_numpy(np.float64), exclude) & np.isfinite(depth)
    return _score(time, depth, keep, min_count)


def target_spatial_score(
    depths: pd.DataFrame, atlas: str, min_count: int = 3, exclude: str = "nonpositive"
) -> tuple[float, int, int]:
    """Pearson(best depth, ROI distance) over one subject's fMRI targets of `atlas` that pass the map threshold.

    `depths` holds one signal's per-target depth rows (`subject_target_depths`). A target enters
    when it passes the map threshold (`passes`), its best r passes `exclude` and its depth and
    its ROI's distance are finite; the others are counted out. Returns (value, n_used, n_excluded).
    """
    _require(depths, ["atlas", "best_depth", "best_r", "roi_distance_mm", "passes"], "per-target depth table")
    _one_subject(depths, "per-target depth table")
    rows = depths[depths["atlas"] == atlas]
    depth = rows["best_depth"].to_numpy(np.float64)
    dist = rows["roi_distance_mm"].to_numpy(np.float64)
    keep = (
        rows["passes"].to_numpy(bool)
        & exclusion_mask(rows["best_r"].to_numpy(np.float64), exclude)
        & np.isfinite(depth)
        & np.isfinite(dist)
    )
    return _score(depth, dist, keep, min_count)


_HIER_COLUMNS = [
    "dataset", "modality", "model", "signal", "subject", "score", "atlas", "value", "n_used", "n_excluded",
    "unit", "roi",
]  # fmt: skip


def _hierarchy_rows(
    best: pd.DataFrame,
    tm: pd.DataFrame,
    bt: pd.DataFrame,
    targets: pd.DataFrame | None,
    atlas: str,
    min_count: int,
    exclude: str,
) -> pd.DataFrame:
    rows = []
    for key, group in best.groupby(SUBJECT_KEYS, sort=True):
        value, used, excluded = spatial_score(group, atlas, min_count, exclude)
        rows.append((key[0], "fmri", *key[1:], "spatial", atlas, value, used, excluded, "roi", ""))
    for key, group in targets.groupby(SUBJECT_KEYS, sort=True) if targets is not None else []:
        value, used, excluded = target_spatial_score(group, atlas, min_count, exclude)
        rows.append((key[0], "fmri", *key[1:], "spatial", atlas, value, used, excluded, "target", ""))
    for unit, table, score in (("layer", tm, temporal_score), ("time", bt, time_score)):
        for key, group in table.groupby(GROUP_KEYS, sort=True):
            value, used, excluded = score(group, min_count, exclude)
            rows.append((key[0], "meg", *key[1:4], "temporal", "", value, used, excluded, unit, key[4]))
    out = pd.DataFrame(rows, columns=_HIER_COLUMNS)
    text = [c for c in _HIER_COLUMNS if c not in ("value", "n_used", "n_excluded")]
    return out.astype({c: str for c in text} | {"value": np.float64, "n_used": np.int64, "n_excluded": np.int64})


def subject_hierarchy(
    enc: pd.DataFrame,
    atlas: str,
    threshold: float = 0.95,
    min_count: int = 3,
    exclude: str = "nonpositive",
    *,
    targets: pd.DataFrame | None = None,
    window: tuple | list | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Best layers, T_max and hierarchy scores of every signal in an encoding table.

    Written for one subject (the `hierarchy` rule's granularity) but correct for several, as
    every step groups by dataset × model × signal × subject. fMRI rows give spatial scores over
    `atlas` (which must be one of their atlases): unit `roi` from the ROI rows and, when the
    per-target depth table `targets` (`subject_target_depths`) is given, unit `target`. MEG
    rows give temporal scores per sensor group (`roi`; "" all sensors) over the times in
    `window` (None: all): unit `layer` (Pearson(depth, T_max)) and unit `time` (Pearson(time,
    best depth), the Fig. 3F variant). Either modality may be absent. Returns (best_layers,
    tmax, hierarchy): contract columns, tmax plus `roi`, hierarchy plus `unit` and `roi`.
    """
    exclusion_mask(np.zeros(0), exclude)  # reject an unknown rule before any work
    if min_count < 2:
        raise ValueError(f"min_count={min_count!r} is below 2; a correlation needs at least 2 points")
    _require(enc, ["modality"], "encoding table")
    best = best_layers(enc)
    if len(best) and atlas not in set(best["atlas"]):
        raise ValueError(
            f"atlas={atlas!r} has no fMRI rows in the encoding table; expected one of {sorted(set(best['atlas']))}"
        )
    tm = tmax(enc, threshold, window)
    bt = best_layer_per_time(enc, window)
    return best, tm, _hierarchy_rows(best, tm, bt, targets, atlas, min_count, exclude)


def weighted_depth(r: np.ndarray, depths: np.ndarray) -> np.ndarray:
    """Score-weighted mean depth per target: sum_k max(r_k, 0) depth_k / sum_k max(r_k, 0).

    `r` is (n_layers, n_targets), `depths` (n_layers,); NaN r weighs 0. Returns (n_targets,),
    NaN for a target with no positive r.
    """
    r = np.asarray(r, dtype=np.float64)
    depths = np.asarray(depths, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] != depths.shape[0]:
        raise ValueError(f"r has shape {r.shape}; expected ({depths.shape[0]} layers, n_targets)")
    w = np.where(np.isfinite(r) & (r > 0), r, 0.0)
    total = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, depths @ w / total, np.nan)


def target_thresholds(
    r: np.ndarray, n_images: int, fdr: float, p: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One-sided p of r > 0 and its Benjamini–Hochberg q over every finite entry of r (n_layers, n_targets).

    p is the encoding null's (`p`, the per-target image-permutation p of each layer's fit;
    `brainprop.encoding.encode`) where given, else the t-test of a Pearson r over `n_images`
    held-out images (t = r √((n−2)/(1−r²)), n − 2 degrees of freedom), which treats the
    fold-averaged r as one r over all n images and so rejects a true null more often than its
    level (docs/encoding.md, "The encoding null"). BH runs over all targets × layers of one subject
    and signal, as the brain maps' threshold does over vertices × layers (`stats.map_fdr`).
    Returns (p, q), NaN where r is.
    """
    from scipy.special import stdtr

    from ..stats.inference import bh_fdr

    if int(n_images) < 3:
        raise ValueError(f"n_images={n_images!r}; a Pearson r's p needs at least 3 images")
    if not 0 < fdr < 1:
        raise ValueError(f"fdr={fdr!r}; expected a level in (0, 1) (stats.map_fdr)")
    r = np.asarray(r, dtype=np.float64)
    finite = np.isfinite(r)
    if p is not None:
        p = np.where(finite, np.asarray(p, dtype=np.float64), np.nan)
        if not np.isfinite(p[finite]).all():
            raise ValueError("p is NaN where r is finite; expected the encoding null's p of every scored target")
    else:
        df = int(n_images) - 2
        rc = np.clip(np.where(finite, r, 0.0), -1 + 1e-12, 1 - 1e-12)
        p = np.where(finite, stdtr(df, -rc * np.sqrt(df / (1.0 - rc**2))), np.nan)
    q = np.full(r.shape, np.nan)
    q[finite] = bh_fdr(p[finite])
    return p, q


def target_depths(
    r: np.ndarray,
    depths: np.ndarray,
    layer_index: np.ndarray,
    n_images: int | None = None,
    fdr: float | None = None,
    p: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Best layer (argmax of r, ties to the shallowest) and weighted depth of each target.

    `r` is (n_layers, n_targets), `depths` and `layer_index` (n_layers,). Returns arrays
    (n_targets,): best_layer_index (-1 where r is NaN at every layer), best_depth, best_r,
    weighted_depth (see `weighted_depth`), n_layers (layers with a finite r), and the map
    threshold at the best layer (`target_thresholds`, with the encoding null's `p` (n_layers,
    n_targets) where given): p, q and passes (q <= fdr). Without `n_images` and `fdr` there is no
    threshold: p and q are NaN and passes is True where best_r is finite.
    """
    r = np.asarray(r, dtype=np.float64)
    depths = np.asarray(depths, dtype=np.float64)
    layer_index = np.asarray(layer_index, dtype=np.int64)
    if layer_index.shape != depths.shape:
        raise ValueError(f"layer_index has shape {layer_index.shape}, depths {depths.shape}; expected equal")
    order = np.argsort(layer_index, kind="stable")  # argmax returns the first maximum: the shallowest
    r, depths, layer_index = r[order], depths[order], layer_index[order]
    p = None if p is None else np.asarray(p, dtype=np.float64)[order]
    finite = np.isfinite(r)
    has = finite.any(axis=0)
    pick = np.argmax(np.where(finite, r, -np.inf), axis=0)
    cols = np.arange(r.shape[1])
    best_r = np.where(has, r[pick, cols], np.nan)
    if (n_images is None) != (fdr is None):
        raise ValueError("target_depths: give both n_images and fdr (the map threshold), or neither")
    if n_images is None:
        p = q = np.full(r.shape[1], np.nan)
        passes = np.isfinite(best_r)
    else:
        p_all, q_all = target_thresholds(r, n_images, fdr, p)
        p, q = np.where(has, p_all[pick, cols], np.nan), np.where(has, q_all[pick, cols], np.nan)
        passes = np.isfinite(q) & (q <= fdr)
    return {
        "best_layer_index": np.where(has, layer_index[pick], -1),
        "best_depth": np.where(has, depths[pick], np.nan),
        "best_r": best_r,
        "weighted_depth": weighted_depth(r, depths),
        "n_layers": finite.sum(axis=0).astype(np.int64),
        "p": p,
        "q": q,
        "passes": passes,
    }


# Columns of the brain stage's target table the per-target depth table carries.
_TARGET_PLACE = ("atlas", "roi", "hemi", "roi_distance_mm")


def subject_target_depths(
    scores: pd.DataFrame,
    identity: dict[str, str],
    exclude: str = "nonpositive",
    targets: pd.DataFrame | None = None,
    threshold: dict | None = None,
) -> pd.DataFrame:
    """Per-target depth table (`TARGET_DEPTH_COLUMNS`) of one subject from long-form per-target scores.

    `scores` has columns signal, layer_index, depth, target, r (fMRI targets only) and, for the
    map threshold, the encoding null's p where it ran (a column p, NaN without the null); `identity`
    gives dataset, model and subject; `targets` (the brain stage's target table) gives each
    target's atlas, roi, hemi and roi_distance_mm ("" and NaN without it); `threshold`
    ({"n_images": n, "fdr": stats.map_fdr}) the map threshold (`target_thresholds`; none
    without it). Every target keeps its row; `excluded` marks those whose best r fails
    `exclude` (as the spatial score leaves ROIs out), `passes` those whose best layer passes the map threshold.
    """
    exclusion_mask(np.zeros(0), exclude)
    _require(scores, ["signal", "layer_index", "depth", "target", "r"], "per-target scores")
    _check_unique(scores, ["signal", "layer_index", "target"], "per-target scores")
    threshold = threshold or {}
    frames = []
    for signal, part in scores.groupby("signal", sort=True):
        wide = part.pivot(index="layer_index", columns="target", values="r").sort_index()
        depth = part.groupby("layer_index")["depth"].first().reindex(wide.index)
        p = None
        if "p" in part and part["p"].notna().any():
            p = part.pivot(index="layer_index", columns="target", values="p").reindex_like(wide).to_numpy()
        out = target_depths(
            wide.to_numpy(), depth.to_numpy(), wide.index.to_numpy(), threshold.get("n_images"), threshold.get("fdr"), p
        )
        frames.append(pd.DataFrame({"signal": signal, "target": wide.columns.to_numpy(dtype=np.int64), **out}))
    if frames:
        table = pd.concat(frames, ignore_index=True)
    else:
        table = pd.DataFrame({c: pd.Series(dtype=TARGET_DEPTH_TYPES[c]) for c in TARGET_DEPTH_COLUMNS})
    table["excluded"] = ~exclusion_mask(table["best_r"].to_numpy(np.float64), exclude)
    if targets is not None and len(table):
        _require(targets, ["target", *_TARGET_PLACE], "target table")
        place = targets.set_index("target")[list(_TARGET_PLACE)].reindex(table["target"].to_numpy())
        table = table.assign(**{c: place[c].to_numpy() for c in _TARGET_PLACE})
    else:
        table = table.assign(atlas="", roi="", hemi="", roi_distance_mm=np.nan)
    table = table.assign(**{k: str(identity[k]) for k in ("dataset", "model", "subject")})
    return table[list(TARGET_DEPTH_COLUMNS)].astype(TARGET_DEPTH_TYPES)
