"""Hierarchy scores (METHOD.md §5): best layer per ROI, T_max per layer, spatial and temporal scores.

Every function is a pure function of contract tables (see `brainprop.contract.TABLES`):
`best_layers` and `tmax` read the encoding table, `spatial_score` and `temporal_score` one
subject's `best_layers` / `tmax` rows, and `subject_hierarchy` chains them for all signals.
`target_depths` does per fMRI target (vertex or voxel) what `best_layers` does per ROI, from
the encode stage's per-target scores, and adds the score-weighted mean depth.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from .files import TARGET_DEPTH_COLUMNS, TARGET_DEPTH_TYPES

__all__ = [
    "EXCLUSION_RULES",
    "best_layers",
    "exclusion_mask",
    "layer_tmax",
    "pearson",
    "spatial_score",
    "subject_hierarchy",
    "subject_target_depths",
    "target_depths",
    "temporal_score",
    "tmax",
    "weighted_depth",
]

# Grouping keys of the derived tables.
BEST_KEYS = ["dataset", "model", "signal", "subject", "atlas", "roi", "hemi"]
TMAX_KEYS = ["dataset", "model", "signal", "subject", "layer_index"]
SUBJECT_KEYS = ["dataset", "model", "signal", "subject"]

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
_ENC_MEG = ["dataset", "modality", "model", "signal", "subject", "layer_index", "depth", "time", "r"]

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


def _meg_rows(enc: pd.DataFrame) -> pd.DataFrame:
    _require(enc, ["modality"], "encoding table")
    meg = enc[enc["modality"] == "meg"]
    _require(meg, _ENC_MEG, "encoding table")
    _check_unique(meg, TMAX_KEYS + ["time"], "encoding table (meg rows)")
    return meg


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


def tmax(enc: pd.DataFrame, threshold: float = 0.95) -> pd.DataFrame:
    """T_max (mean of the times where r(t) / max r(t) >= threshold) and peak r per MEG layer.

    Returns the contract `tmax` columns, one row per dataset × model × signal × subject × layer.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold!r} is outside (0, 1]; expected a fraction of the peak")
    meg = _meg_rows(enc).sort_values(TMAX_KEYS + ["time"], kind="mergesort")
    rows = []
    for key, layer in meg.groupby(TMAX_KEYS, sort=True):
        t_max, peak = layer_tmax(layer["time"].to_numpy(np.float64), layer["r"].to_numpy(np.float64), threshold)
        rows.append((*key, float(layer["depth"].iloc[0]), t_max, peak))
    out = pd.DataFrame(rows, columns=TMAX_KEYS + ["depth", "t_max_s", "peak_r"])
    return out.astype(
        {k: str for k in SUBJECT_KEYS}
        | {"layer_index": np.int64, "depth": np.float64, "t_max_s": np.float64, "peak_r": np.float64}
    )


def _one_subject(table: pd.DataFrame, what: str) -> None:
    present = [k for k in SUBJECT_KEYS if k in table.columns]
    n = len(table.drop_duplicates(present)) if len(table) else 0
    if n > 1:
        raise ValueError(f"{what} holds {n} dataset × model × signal × subject groups; expected one")


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
    """Pearson(depth, T_max) over one subject's layers; layers failing `exclude` on peak r are counted out.

    Returns (value, n_used, n_excluded); value is NaN with fewer than `min_count` layers or a
    constant variable.
    """
    _require(tm, ["depth", "t_max_s", "peak_r"], "tmax table")
    _one_subject(tm, "tmax table")
    depth = tm["depth"].to_numpy(np.float64)
    t_max = tm["t_max_s"].to_numpy(np.float64)
    keep = exclusion_mask(tm["peak_r"].to_numpy(np.float64), exclude) & np.isfinite(t_max) & np.isfinite(depth)
    return _score(depth, t_max, keep, min_count)


_HIER_COLUMNS = ["dataset", "modality", "model", "signal", "subject", "score", "atlas", "value", "n_used", "n_excluded"]


def _hierarchy_rows(best: pd.DataFrame, tm: pd.DataFrame, atlas: str, min_count: int, exclude: str) -> pd.DataFrame:
    rows = []
    for key, group in best.groupby(SUBJECT_KEYS, sort=True):
        value, used, excluded = spatial_score(group, atlas, min_count, exclude)
        rows.append((key[0], "fmri", *key[1:], "spatial", atlas, value, used, excluded))
    for key, group in tm.groupby(SUBJECT_KEYS, sort=True):
        value, used, excluded = temporal_score(group, min_count, exclude)
        rows.append((key[0], "meg", *key[1:], "temporal", "", value, used, excluded))
    out = pd.DataFrame(rows, columns=_HIER_COLUMNS)
    return out.astype(
        {c: str for c in _HIER_COLUMNS[:7]} | {"value": np.float64, "n_used": np.int64, "n_excluded": np.int64}
    )


def subject_hierarchy(
    enc: pd.DataFrame, atlas: str, threshold: float = 0.95, min_count: int = 3, exclude: str = "nonpositive"
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Best layers, T_max and hierarchy scores of every signal in an encoding table.

    Written for one subject (the `hierarchy` rule's granularity) but correct for several, as
    every step groups by dataset × model × signal × subject. fMRI rows give spatial scores over
    `atlas` (which must be one of their atlases), MEG rows temporal scores; either may be absent.
    Returns (best_layers, tmax, hierarchy) in contract columns.
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
    tm = tmax(enc, threshold)
    return best, tm, _hierarchy_rows(best, tm, atlas, min_count, exclude)


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


def target_depths(r: np.ndarray, depths: np.ndarray, layer_index: np.ndarray) -> dict[str, np.ndarray]:
    """Best layer (argmax of r, ties to the shallowest) and weighted depth of each target.

    `r` is (n_layers, n_targets), `depths` and `layer_index` (n_layers,). Returns arrays
    (n_targets,): best_layer_index (-1 where r is NaN at every layer), best_depth, best_r,
    weighted_depth (see `weighted_depth`) and n_layers (layers with a finite r).
    """
    r = np.asarray(r, dtype=np.float64)
    depths = np.asarray(depths, dtype=np.float64)
    layer_index = np.asarray(layer_index, dtype=np.int64)
    if layer_index.shape != depths.shape:
        raise ValueError(f"layer_index has shape {layer_index.shape}, depths {depths.shape}; expected equal")
    order = np.argsort(layer_index, kind="stable")  # argmax returns the first maximum: the shallowest
    r, depths, layer_index = r[order], depths[order], layer_index[order]
    finite = np.isfinite(r)
    has = finite.any(axis=0)
    pick = np.argmax(np.where(finite, r, -np.inf), axis=0)
    cols = np.arange(r.shape[1])
    return {
        "best_layer_index": np.where(has, layer_index[pick], -1),
        "best_depth": np.where(has, depths[pick], np.nan),
        "best_r": np.where(has, r[pick, cols], np.nan),
        "weighted_depth": weighted_depth(r, depths),
        "n_layers": finite.sum(axis=0).astype(np.int64),
    }


def subject_target_depths(scores: pd.DataFrame, identity: dict[str, str], exclude: str = "nonpositive") -> pd.DataFrame:
    """Per-target depth table (`TARGET_DEPTH_COLUMNS`) of one subject from long-form per-target scores.

    `scores` has columns signal, layer_index, depth, target, r (fMRI targets only); `identity`
    gives dataset, model and subject. Every target keeps its row; `excluded` marks those whose
    best r fails `exclude` (as the spatial score leaves ROIs out).
    """
    exclusion_mask(np.zeros(0), exclude)
    _require(scores, ["signal", "layer_index", "depth", "target", "r"], "per-target scores")
    _check_unique(scores, ["signal", "layer_index", "target"], "per-target scores")
    frames = []
    for signal, part in scores.groupby("signal", sort=True):
        wide = part.pivot(index="layer_index", columns="target", values="r").sort_index()
        depth = part.groupby("layer_index")["depth"].first().reindex(wide.index)
        out = target_depths(wide.to_numpy(), depth.to_numpy(), wide.index.to_numpy())
        frames.append(pd.DataFrame({"signal": signal, "target": wide.columns.to_numpy(dtype=np.int64), **out}))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TARGET_DEPTH_COLUMNS[3:-1])
    table["excluded"] = ~exclusion_mask(table["best_r"].to_numpy(np.float64), exclude)
    table = table.assign(**{k: str(identity[k]) for k in ("dataset", "model", "subject")})
    return table[list(TARGET_DEPTH_COLUMNS)].astype(TARGET_DEPTH_TYPES)
