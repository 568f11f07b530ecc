"""Per-target maps: encoding r, best-layer and weighted depth on fsaverage5 (nilearn), MEG topomaps (MNE).

Brain maps. Each subject's fMRI targets carry MNI coordinates (x, y, z) and a hemisphere.
Every vertex of nilearn's offline fsaverage5 pial mesh (whose coordinates are in MNI305 space,
within a few mm of MNI152) takes the mean r of the same-hemisphere targets within `radius_mm`
(default 10 mm, 3-D Euclidean distance): a disc kernel; vertices with no target in reach stay
empty. For the simulated ROIs, whose targets scatter 2 mm around published centroids (1-7 mm
from the pial surface), each ROI becomes a patch of cortex around its centroid; for data
already on fsaverage the kernel is a 10 mm surface-free smoothing (set `radius_mm` below the
mesh spacing, about 4 mm, for none). The group map then averages subjects per vertex and
layer, picks each vertex's best layer (highest mean r), and keeps the vertex when a one-sided
one-sample t-test across subjects of r > 0 at that layer survives Benjamini–Hochberg FDR at
`stats.map_fdr` over all vertices × layers (METHOD.md §6). A third quantity, the score-weighted
mean depth of each target (`brainprop.hierarchy.weighted_depth`), is projected the same way and
averaged over subjects at the vertices the test keeps.

MEG topomaps show, for a few layers spread over depth, the subject-mean r of every sensor at
the layer's group T_max, on the CTF-275 layout that MNE ships; EEG sensors (THINGS-EEG2's 10-10
names, read as modality meg) on MNE's EasyCap-M1 montage, the cap THINGS-EEG2 was recorded with.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.sparse
import scipy.stats
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from scipy.spatial import cKDTree

from .catalog import MAP_FIGURES, map_names
from .labels import DEPTH_LABEL
from .style import DEPTH_CMAP, RC, save_figure, signal_order

__all__ = [
    "MAP_FIGURES",
    "VIEWS",
    "fsaverage5",
    "group_vertex_maps",
    "make_brain_map",
    "make_glass_brain",
    "make_meg_topomaps",
    "map_names",
    "plot_brain_map",
    "plot_glass_brain",
    "plot_meg_topomaps",
    "project_to_fsaverage5",
    "roi_markers",
    "topomap_layers",
]

log = logging.getLogger(__name__)

HEMIS = {"lh": "left", "rh": "right"}
VIEWS = ("lateral", "medial", "ventral")
# What a brain map shows per signal × hemisphere (rows of the figure, in this order).
_MAP_QUANTITIES = ("r", "depth", "weighted_depth")
_ROW_LABELS = {"r": "encoding r", "depth": "best layer depth", "weighted_depth": "weighted depth"}
N_FSAVERAGE5 = 10242
R_CMAP = "inferno"


# ---------------------------------------------------------------- fsaverage5 projection


def fsaverage5() -> dict[str, dict]:
    """The fsaverage5 mesh nilearn ships (offline): per hemi, pial and inflated meshes and sulcal depth."""
    from nilearn import datasets

    mesh = datasets.load_fsaverage("fsaverage5")
    sulc = datasets.load_fsaverage_data("fsaverage5", mesh_type="inflated", data_type="sulcal")
    return {
        hemi: {
            "pial": mesh["pial"].parts[part],
            "inflated": mesh["inflated"].parts[part],
            "sulc": np.asarray(sulc.data.parts[part], dtype="float64"),
        }
        for hemi, part in HEMIS.items()
    }


def project_to_fsaverage5(
    targets: pd.DataFrame, pial: Mapping[str, np.ndarray], radius_mm: float = 10.0
) -> scipy.sparse.csr_matrix:
    """Averaging matrix (n_hemis × 10242, n_targets) from targets to fsaverage5 vertices.

    Row v (left hemisphere first, then right, in `pial` order) averages the targets of the same
    hemisphere within `radius_mm` of vertex v (3-D Euclidean, MNI mm); a vertex with none has
    an empty row. `targets` has columns hemi (lh|rh), x, y, z; `pial` maps hemi -> (n, 3).
    """
    missing = [c for c in ("hemi", "x", "y", "z") if c not in targets.columns]
    if missing:
        raise ValueError(f"fMRI target table lacks column(s) {missing}; brain maps need MNI coordinates")
    xyz = targets[["x", "y", "z"]].to_numpy(dtype="float64")
    hemi_of = targets["hemi"].to_numpy()
    rows, cols, offset = [], [], 0
    for hemi, coords in pial.items():
        mine = np.flatnonzero((hemi_of == hemi) & np.isfinite(xyz).all(axis=1))
        if mine.size:
            near = cKDTree(xyz[mine]).query_ball_point(np.asarray(coords, dtype="float64"), r=radius_mm)
            for v, hits in enumerate(near):
                rows += [offset + v] * len(hits)
                cols += mine[hits].tolist()
        offset += len(coords)
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    counts = np.bincount(rows, minlength=offset)
    weights = 1.0 / counts[rows] if rows.size else np.zeros(0)
    return scipy.sparse.csr_matrix((weights, (rows, cols)), shape=(offset, len(targets)))


def group_vertex_maps(
    r: np.ndarray, depths: np.ndarray, fdr: float, min_subjects: int = 2, weighted: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Group map from per-subject vertex scores r (n_subjects, n_layers, n_vertices), NaN where unmapped.

    Returns `r` (subject-mean r at each vertex's best layer, NaN where not significant),
    `depth` (that layer's depth, NaN likewise), `best` (best layer position, -1 where no
    data), `q` (BH-adjusted p of the best layer) and `n` (subjects per vertex). A vertex needs
    `min_subjects` subjects; significance is a one-sided t-test of r > 0 across subjects,
    BH-adjusted over all vertices × layers and compared with `fdr`. With `weighted`
    (n_subjects, n_vertices: each subject's score-weighted mean depth) it also returns
    `weighted_depth`, the subject mean where r is shown, NaN elsewhere.
    """
    r = np.asarray(r, dtype="float64")
    if r.ndim != 3 or r.shape[1] != len(depths):
        raise ValueError(f"r has shape {r.shape}; expected (n_subjects, {len(depths)} layers, n_vertices)")
    n = np.isfinite(r).sum(axis=0)  # (n_layers, n_vertices)
    enough = n >= max(2, min_subjects)
    with np.errstate(invalid="ignore", divide="ignore"), _quiet():
        mean = np.where(enough, np.nanmean(r, axis=0), np.nan)
        p = scipy.stats.ttest_1samp(r, 0.0, axis=0, nan_policy="omit", alternative="greater").pvalue
    p = np.where(enough & np.isfinite(p), p, np.nan)
    q = np.full(p.shape, np.nan)
    tested = np.isfinite(p)
    if tested.any():
        q[tested] = scipy.stats.false_discovery_control(p[tested], method="bh")
    has = np.isfinite(mean).any(axis=0)
    best = np.where(has, np.argmax(np.where(np.isfinite(mean), mean, -np.inf), axis=0), -1)
    cols = np.arange(r.shape[2])
    pick = np.clip(best, 0, None)
    best_r, best_q = mean[pick, cols], q[pick, cols]
    keep = has & (best_q <= fdr) & (best_r > 0)
    out = {
        "r": np.where(keep, best_r, np.nan),
        "depth": np.where(keep, np.asarray(depths)[pick], np.nan),
        "best": best,
        "q": np.where(has, best_q, np.nan),
        "n": n.max(axis=0),
    }
    if weighted is not None:
        weighted = np.asarray(weighted, dtype="float64")
        if weighted.shape != (r.shape[0], r.shape[2]):
            raise ValueError(
                f"weighted has shape {weighted.shape}; expected (n_subjects, n_vertices) = {(r.shape[0], r.shape[2])}"
            )
        with _quiet():
            out["weighted_depth"] = np.where(keep, np.nanmean(weighted, axis=0), np.nan)
    return out


class _quiet:
    """Silence the RuntimeWarnings of NaN-only slices (unmapped vertices are expected)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def plot_brain_map(
    maps: Mapping[str, Mapping[str, dict[str, np.ndarray]]],
    mesh: Mapping[str, dict],
    *,
    title: str,
    fdr: float,
    views: Sequence[str] = VIEWS,
) -> Figure:
    """Surface maps of encoding r and best-layer depth, signals side by side.

    `maps[signal][hemi]` holds `r` and `depth` arrays (10242,) with NaN where nothing is
    shown, and optionally `weighted_depth`; `mesh` is `fsaverage5()`. Rows: r (left, right
    hemisphere), then depth (left, right), then weighted depth (left, right) when every map
    has it; columns: each signal's `views`. Surfaces are rasterised in vector formats.
    """
    from nilearn import plotting

    signals = signal_order(maps)
    if not signals:
        raise ValueError("no signal to draw; expected maps[signal][hemi] with 'r' and 'depth'")
    finite = [m[h]["r"][np.isfinite(m[h]["r"])] for m in maps.values() for h in m]
    vmax = max([float(v.max()) for v in finite if v.size] or [0.1])
    weighted = all("weighted_depth" in m[h] for m in maps.values() for h in m)
    rows = [(q, hemi) for q in _MAP_QUANTITIES[: 2 + weighted] for hemi in HEMIS]
    scales = {"r": (R_CMAP, 0.0, vmax), "depth": (DEPTH_CMAP, 0.0, 1.0)}
    with plt.rc_context(RC):
        fig = plt.figure(figsize=(1.2 + 1.75 * len(signals) * len(views), 0.9 + 1.45 * len(rows)))
        grid = fig.add_gridspec(
            len(rows), len(signals) * len(views), left=0.06, right=0.88, top=0.88, bottom=0.02, wspace=0.0, hspace=0.0
        )
        for i, (quantity, hemi) in enumerate(rows):
            cmap, vmin, vmax_q = scales[quantity if quantity == "r" else "depth"]
            for j, (signal, view) in enumerate((s, v) for s in signals for v in views):
                ax = fig.add_subplot(grid[i, j], projection="3d")
                values = np.asarray(maps[signal][hemi][quantity], dtype="float64")
                plotting.plot_surf(
                    mesh[hemi]["inflated"],
                    values,
                    hemi=HEMIS[hemi],
                    view=view,
                    bg_map=mesh[hemi]["sulc"],
                    axes=ax,
                    cmap=cmap,
                    vmin=vmin,
                    vmax=vmax_q,
                    colorbar=False,
                    engine="matplotlib",
                )
                ax.set_gid(f"map:{signal}:{hemi}:{quantity}:{view}")
                ax.set_box_aspect(None, zoom=1.35)
                for coll in ax.collections:
                    coll.set_rasterized(True)
                if i == 0:
                    ax.set_title(f"{signal} · {view}", pad=0)
            label = _ROW_LABELS[quantity]
            fig.text(
                0.02,
                1 - (0.12 + 0.86 * (i + 0.5) / len(rows)),
                f"{label}\n{hemi}",
                rotation=90,
                ha="center",
                va="center",
            )
        for k, (quantity, (cmap, vmin, vmax_q)) in enumerate(scales.items()):
            cax = fig.add_axes((0.9, 0.5 - 0.43 * k, 0.015, 0.33))
            bar = fig.colorbar(plt.cm.ScalarMappable(Normalize(vmin, vmax_q), cmap), cax=cax)
            bar.set_label("Pearson r (subject mean)" if quantity == "r" else DEPTH_LABEL)
        shown = ", ".join(f"{s} {sum(int(np.isfinite(maps[s][h]['r']).sum()) for h in maps[s])}" for s in signals)
        fig.suptitle(
            f"{title}\nvertices with BH-FDR q ≤ {fdr} (one-sided t-test across subjects, "
            f"best layer): {shown}; fsaverage5, inflated"
        )
    return fig


# ---------------------------------------------------------------- glass brain (volume variant)


def roi_markers(best: pd.DataFrame, targets: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per signal × ROI × hemisphere: MNI centroid and subject means of best depth and best r.

    `best` holds one dataset × model's best_layers rows; centroids are the mean coordinates of
    the ROI's fMRI targets over subjects (hemispheres kept apart). ROIs whose mean best r is not
    positive are left out.
    """
    frames = [t[t["modality"] == "fmri"] for t in targets.values()]
    coords = pd.concat(frames, ignore_index=True).groupby(["roi", "hemi"], as_index=False)[["x", "y", "z"]].mean()
    rows = best[best["hemi"].isin(list(HEMIS))]
    means = rows.groupby(["signal", "roi", "hemi"], as_index=False)[["best_depth", "best_r"]].mean()
    out = means.merge(coords, on=["roi", "hemi"], how="inner")
    return out[out["best_r"] > 0].reset_index(drop=True)


def plot_glass_brain(markers: pd.DataFrame, *, title: str) -> Figure:
    """ROIs on a glass brain, coloured by best layer depth and sized by best r, one row per signal.

    The variant for volume data and for ROI-level results: no surface projection, each ROI at its
    MNI centroid (left, top and right views).
    """
    from nilearn import plotting

    if markers.empty:
        raise ValueError("no ROI with a positive best r to draw on the glass brain")
    signals = signal_order(markers["signal"].unique())
    r_max = float(markers["best_r"].max())
    with plt.rc_context(RC):
        height = 1.0 + 2.7 * len(signals)
        fig = plt.figure(figsize=(9.5, height))
        row = (1 - 1.0 / height) / len(signals)  # the top inch holds the title
        for i, signal in enumerate(signals):
            part = markers[markers["signal"] == signal]
            ax = fig.add_axes((0.02, 1 - 1.0 / height - (i + 1) * row, 0.84, row * 0.95))
            sizes = 15 + 185 * np.clip(part["best_r"].to_numpy() / r_max, 0, 1)
            plotting.plot_markers(
                part["best_depth"].to_numpy(),
                part[["x", "y", "z"]].to_numpy(),
                node_size=sizes,
                node_cmap=DEPTH_CMAP,
                node_vmin=0.0,
                node_vmax=1.0,
                display_mode="lzr",
                axes=ax,
                figure=fig,
                colorbar=False,
                alpha=0.9,
                title=f"{signal} ({len(part)} ROI × hemisphere)",
                annotate=True,
            )
            ax.set_gid(f"glass:{signal}:{len(part)}")
        cax = fig.add_axes((0.9, 0.15, 0.015, 0.6))
        bar = fig.colorbar(plt.cm.ScalarMappable(Normalize(0.0, 1.0), DEPTH_CMAP), cax=cax)
        bar.set_label(f"best {DEPTH_LABEL}")
        fig.suptitle(
            f"{title} (subject means, both hemispheres)\n"
            f"marker area ∝ best r (largest {r_max:.2f}); ROIs with best r ≤ 0 left out",
            y=0.99,
        )
    return fig


# ---------------------------------------------------------------- MEG topomaps


def topomap_layers(tm: pd.DataFrame, n: int = 4) -> pd.DataFrame:
    """Up to `n` layers per signal spread over depth with their group T_max (s, mean over subjects).

    `tm` holds one model's tmax rows; layers whose peak r is not positive are left out of the mean.
    """
    rows = tm[(tm["peak_r"] > 0) & np.isfinite(tm["t_max_s"].to_numpy(dtype="float64"))]
    if rows.empty:
        raise ValueError("tmax rows have no layer with a positive peak r; nothing to map")
    mean = rows.groupby(["signal", "layer_index", "depth"], as_index=False)["t_max_s"].mean()
    picked = []
    for _, part in mean.groupby("signal", sort=False):
        part = part.sort_values("depth")
        picks = np.unique(np.round(np.linspace(0, len(part) - 1, min(n, len(part)))).astype(int))
        picked.append(part.iloc[picks])
    return pd.concat(picked, ignore_index=True)


@cache
def _ctf275() -> tuple[list[str], np.ndarray]:
    """Names and 2-D centres of MNE's CTF-275 layout."""
    import mne

    layout = mne.channels.read_layout("CTF275")
    return list(layout.names), layout.pos[:, :2] + layout.pos[:, 2:] / 2


@cache
def _easycap_m1() -> tuple[list[str], np.ndarray]:
    """Names and 2-D centres of MNE's EasyCap-M1 montage (74 EEG sites, 10-10 names) projected as MNE's topomaps do."""
    import mne

    montage = mne.channels.make_standard_montage("easycap-M1")
    info = mne.create_info(montage.ch_names, 1000.0, "eeg")
    info.set_montage(montage)
    layout = mne.channels.make_eeg_layout(info)
    return list(layout.names), layout.pos[:, :2] + layout.pos[:, 2:] / 2


# sensor layout -> (its names and 2-D centres, a recorded channel's name on it); CTF channels carry "-1609"
SENSOR_LAYOUTS = {
    "CTF-275": (_ctf275, lambda name: name.split("-")[0]),
    "EasyCap-M1 10-10 EEG": (_easycap_m1, lambda name: name),
}


def sensor_layout(sensors: Sequence[str]) -> str:
    """The layout of SENSOR_LAYOUTS that holds the most of `sensors` (the first on ties)."""
    held = {}
    for name, (read, bare) in SENSOR_LAYOUTS.items():
        names = set(read()[0])
        held[name] = sum(bare(s) in names for s in sensors)
    best = max(held, key=held.get)
    if not held[best]:
        raise ValueError(
            f"sensor(s) {list(sensors)[:5]} not on the CTF-275 layout nor any other of {list(SENSOR_LAYOUTS)}; "
            "expected CTF-275 (MEG) or 10-10 (EEG) names"
        )
    return best


def _layout_positions(sensors: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """2-D positions (head-sized, metres) of the `sensors` on their layout (`sensor_layout`), and which are on it.

    Recorded CTF channels carry the system's suffix ("MLC11-1609"); the layout has the bare
    names. Sensors not on the layout are left out of the map (the caller logs how many).
    """
    read, bare = SENSOR_LAYOUTS[sensor_layout(sensors)]
    names, centre = read()
    index = {name: i for i, name in enumerate(names)}
    keys = [bare(s) for s in sensors]
    on = np.array([k in index for k in keys], dtype=bool)
    pos = centre[[index[k] for k, o in zip(keys, on) if o]]
    pos = pos - centre.mean(axis=0)
    return pos / np.linalg.norm(centre - centre.mean(axis=0), axis=1).max() * 0.09, on


def plot_meg_topomaps(values: pd.DataFrame, *, title: str) -> Figure:
    """Sensor topomaps of r, one per (signal, layer) row of `values`, on the sensors' layout (CTF-275 or EEG 10-10).

    `values` has columns signal, depth, time (s) and `r`: an array of per-sensor r, and
    `sensors`: the sensor names of that array. Rows are signals, columns layers by depth;
    one symmetric colour scale for all.
    """
    import mne

    signals = signal_order(values["signal"].unique())
    ncols = int(values.groupby("signal").size().max())
    vmax = max(float(np.nanmax(np.abs(v))) for v in values["r"]) or 0.1
    with plt.rc_context(RC):
        fig, axes = plt.subplots(
            len(signals),
            ncols,
            squeeze=False,
            layout="constrained",
            figsize=(1.2 + 2.1 * ncols, 0.9 + 2.1 * len(signals)),
        )
        for i, signal in enumerate(signals):
            part = values[values["signal"] == signal].sort_values("depth")
            for j in range(ncols):
                ax = axes[i, j]
                if j >= len(part):
                    ax.set_axis_off()
                    continue
                row = part.iloc[j]
                pos, on = _layout_positions(list(row["sensors"]))
                if not on.all():
                    log.info(
                        "topomap %s depth %.2f: %d of %d sensors not on the %s layout, left out",
                        signal,
                        row["depth"],
                        int((~on).sum()),
                        len(on),
                        sensor_layout(list(row["sensors"])),
                    )
                image, _ = mne.viz.plot_topomap(
                    np.asarray(row["r"], dtype="float64")[on],
                    pos,
                    axes=ax,
                    show=False,
                    vlim=(-vmax, vmax),
                    cmap="RdBu_r",
                    sensors=False,
                    contours=4,
                    extrapolate="local",
                )
                image.set_gid(f"topo:{signal}:{row['depth']:.3f}")
                ax.set_title(f"{signal} · depth {row['depth']:.2f}\nT_max {row['time']:.3f} s")
        bar = fig.colorbar(image, ax=list(axes.ravel()), shrink=0.8, aspect=25)
        bar.set_label("Pearson r (subject mean)")
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------- entry point


def _subject_scores(
    scores: Sequence[str], targets: Mapping[str, pd.DataFrame]
) -> dict[tuple[str, int, str], np.ndarray]:
    """r per target (in each subject's target-table order) of every (signal, layer_index, subject) score file."""
    from ..encoding.files import load_score_identity, load_target_scores

    r = {}
    for path in scores:
        ident = load_score_identity(path)
        key = (str(ident["signal"]), int(ident["layer_index"]), str(ident["subject"]))
        if key[2] not in targets:
            raise ValueError(f"{path} holds scores of subject {key[2]!r}, whose target table was not given")
        table = load_target_scores(path).set_index("target")["r"]
        r[key] = table.reindex(targets[key[2]]["target"].to_numpy()).to_numpy(dtype="float64")
    return r


def _weighted_depths(
    depths: Mapping[str, pd.DataFrame], targets: Mapping[str, pd.DataFrame]
) -> dict[tuple[str, str], np.ndarray]:
    """Weighted depth per fMRI target (target-table order) of every (signal, subject), from the hierarchy stage."""
    out = {}
    for subject, table in depths.items():
        fmri = targets[subject].loc[targets[subject]["modality"] == "fmri", "target"].to_numpy()
        for signal, part in table.groupby("signal", sort=True):
            out[signal, subject] = part.set_index("target")["weighted_depth"].reindex(fmri).to_numpy(dtype="float64")
    return out


def _brain_maps(
    targets: Mapping[str, pd.DataFrame],
    r: Mapping,
    depth: Mapping[int, float],
    fdr: float,
    radius_mm: float,
    mesh: Mapping[str, dict],
    weighted_depths: Mapping[tuple[str, str], np.ndarray],
) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """maps[signal][hemi] -> group r, best-layer depth and weighted depth arrays on fsaverage5."""
    layers = sorted(depth)
    signals = signal_order({k[0] for k in r})
    subjects = sorted(targets)
    pial = {hemi: np.asarray(mesh[hemi]["pial"].coordinates) for hemi in HEMIS}
    depths = np.array([depth[k] for k in layers])
    stacks = {s: np.full((len(subjects), len(layers), 2 * N_FSAVERAGE5), np.nan) for s in signals}
    weighted = {s: np.full((len(subjects), 2 * N_FSAVERAGE5), np.nan) for s in signals}
    for si, subject in enumerate(subjects):
        fmri = targets[subject]["modality"].to_numpy() == "fmri"
        weights = project_to_fsaverage5(targets[subject][fmri], pial, radius_mm)
        mapped = np.asarray(weights.sum(axis=1)).ravel() > 0
        for signal in signals:
            present = [li for li, layer in enumerate(layers) if (signal, layer, subject) in r]
            per_target = np.vstack([r[signal, layers[li], subject][fmri] for li in present]) if present else None
            for row, li in enumerate(present):
                stacks[signal][si, li] = _vertex_mean(weights, mapped, per_target[row])
            if (signal, subject) in weighted_depths:
                weighted[signal][si] = _vertex_mean(weights, mapped, weighted_depths[signal, subject])
    out = {}
    for signal in signals:
        group = group_vertex_maps(stacks[signal], depths, fdr, weighted=weighted[signal])
        log.info(
            "%s: %d of %d vertices mapped, %d significant at q <= %g",
            signal,
            int((group["best"] >= 0).sum()),
            2 * N_FSAVERAGE5,
            int(np.isfinite(group["r"]).sum()),
            fdr,
        )
        out[signal] = {
            hemi: {q: group[q][k * N_FSAVERAGE5 : (k + 1) * N_FSAVERAGE5] for q in _MAP_QUANTITIES}
            for k, hemi in enumerate(HEMIS)
        }
    return out


def _vertex_mean(weights: scipy.sparse.csr_matrix, mapped: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean of the finite target `values` in reach of each vertex (weights renormalised over them), NaN if none."""
    ok = np.isfinite(values)
    num, den = weights @ np.where(ok, values, 0.0), weights @ ok.astype("float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mapped & (den > 0), num / den, np.nan)


def _topomap_values(targets: Mapping[str, pd.DataFrame], r: Mapping, tm: pd.DataFrame) -> pd.DataFrame:
    """Subject-mean per-sensor r at each picked layer's group T_max (nearest sampled time)."""
    rows = []
    for signal, k, depth, t_max in topomap_layers(tm)[["signal", "layer_index", "depth", "t_max_s"]].itertuples(
        index=False
    ):
        per_subject, sensors, time = [], None, np.nan
        for subject, table in sorted(targets.items()):
            values = r.get((signal, int(k), subject))
            meg = table[table["modality"] == "meg"]
            if values is None or meg.empty:
                continue
            times = np.unique(meg["time"].to_numpy(dtype="float64"))
            time = float(times[np.argmin(np.abs(times - t_max))])
            at = (table["modality"].to_numpy() == "meg") & np.isclose(table["time"].to_numpy(dtype="float64"), time)
            frame = pd.Series(values[at], index=table.loc[at, "sensor"].to_numpy())
            sensors = sorted(frame.index) if sensors is None else sensors
            per_subject.append(frame.reindex(sensors).to_numpy())
        if per_subject:
            rows.append(
                {
                    "signal": signal,
                    "depth": float(depth),
                    "time": time,
                    "sensors": sensors,
                    "r": np.nanmean(np.vstack(per_subject), axis=0),
                }
            )
    if not rows:
        raise ValueError("no MEG per-target scores for the picked layers; nothing to map")
    return pd.DataFrame(rows)


def _rows_of(table: pd.DataFrame, dataset: str, model: str) -> pd.DataFrame:
    """Rows of dataset × model of a table."""
    return table[(table["dataset"] == dataset) & (table["model"] == model)]


def _layer_depths(encoding: pd.DataFrame, dataset: str, model: str) -> dict[int, float]:
    """Depth of each layer index of dataset × model, from its encoding rows."""
    enc = _rows_of(encoding, dataset, model)
    if enc.empty:
        raise ValueError(f"the encoding rows hold nothing of {dataset} × {model}")
    return enc.groupby("layer_index")["depth"].first().to_dict()


def make_brain_map(
    scores: Sequence[str],
    targets: Mapping[str, pd.DataFrame],
    depths: Mapping[str, pd.DataFrame],
    encoding: pd.DataFrame,
    out_dir: Path,
    dataset: str,
    model: str,
    formats: Sequence[str] = ("png", "svg"),
    *,
    fdr: float = 0.01,
    radius_mm: float = 10.0,
) -> list[Path]:
    """Draw the fsaverage5 brain map of one dataset × model; return the written paths.

    `scores` are the encode rule's per-target files of every signal × layer × subject, `targets`
    and `depths` each subject's target table and per-target depth table (the hierarchy stage's),
    `encoding` the dataset × model's encoding rows (for the layer depths).
    """
    layer_depth = _layer_depths(encoding, dataset, model)
    r = _subject_scores(scores, targets)
    mesh = fsaverage5()
    maps = _brain_maps(targets, r, layer_depth, fdr, radius_mm, mesh, _weighted_depths(depths, targets))
    fig = plot_brain_map(maps, mesh, title=f"{dataset} · {model}: best layer per vertex", fdr=fdr)
    return save_figure(fig, Path(out_dir) / f"brain_map_{dataset}_{model}", formats)


def make_glass_brain(
    targets: Mapping[str, pd.DataFrame],
    best_layers: pd.DataFrame,
    out_dir: Path,
    dataset: str,
    model: str,
    formats: Sequence[str] = ("png", "svg"),
) -> list[Path]:
    """Draw the glass-brain ROI figure of one dataset × model from its best-layer rows; return the paths."""
    best = _rows_of(best_layers, dataset, model)
    if best.empty:
        raise ValueError(f"the best-layer rows hold nothing of {dataset} × {model}")
    fig = plot_glass_brain(roi_markers(best, targets), title=f"{dataset} · {model}: best layer per ROI")
    return save_figure(fig, Path(out_dir) / f"glass_brain_{dataset}_{model}", formats)


def make_meg_topomaps(
    scores: Sequence[str],
    targets: Mapping[str, pd.DataFrame],
    tmax: pd.DataFrame,
    out_dir: Path,
    dataset: str,
    model: str,
    formats: Sequence[str] = ("png", "svg"),
) -> list[Path]:
    """Draw the MEG topomaps of one dataset × model at its layers' T_max (`tmax` rows); return the paths."""
    tm = _rows_of(tmax, dataset, model)
    values = _topomap_values(targets, _subject_scores(scores, targets), tm)
    layout = sensor_layout(list(values["sensors"].iloc[0]))
    fig = plot_meg_topomaps(values, title=f"{dataset} · {model}: sensor r at each layer's T_max ({layout})")
    return save_figure(fig, Path(out_dir) / f"meg_topomaps_{dataset}_{model}", formats)
