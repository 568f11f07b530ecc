"""Simulated subjects with a planted hierarchy: fMRI ROIs and MEG sensors driven by a model's features.

Responses are built from the source model's features under a finer pooling (4×4 grid) than
the analysis reads (2×2), METHOD.md §7. fMRI: each ROI along the ventral stream is driven by
one planted layer whose depth rises with the ROI's distance from V1 (in `backprop` also by
that layer's gradient). MEG: layer k's activation appears with a latency rising with depth; in
`backprop` each layer's gradient appears after the forward sweep in reverse depth order;
`shuffled` assigns gradient latencies (and gradient layers of ROIs) in a random order per
subject, the exact null of T1 and S1 for exchangeable layers; `smooth_null` draws them per
subject as a smooth random function of depth (a Gaussian process over the layers with
length-scale `length_scale` layers, independent of depth order), the null that real networks
pose: neighbouring layers alike, no order. `fa` plants the feedback-alignment error (signal `fa`)
with backprop's timing; `dfa` plants the direct-feedback-alignment error (signal `dfa`), which
reaches every layer at once (one latency for all layers).

Design choices, so that the planted truth is identifiable and recoverable (defaults in the
config schema, `datasets.<name>.simulation`):

- Latents live in the spatially coarse part of the 4×4 features (the map averaged to 2×2
  cells by a NumPy reshape, independent of the analysis's pooling code). The 2×2 analysis
  pooling is a linear function of it; random projections over all 4×4 dims would put 3/4 of
  their variance in within-cell detail that no analysis feature can see. `detail_fraction`
  adds such detail back as structured, unexplainable variance (default 0).
- Random-weight layers share most of their variance (linear CKA 0.9-1.0 between neighbours;
  the gradient of the last block is a function of the logits, hence of the activations). A
  latent drawn from shared variance has no defined source layer: every layer predicts it,
  and the easiest latents (low-level, early ones) win every layer's comparison. So a fraction
  `unique_fraction` of each latent's variance is its part orthogonal to the top
  `shared_components` principal components of every other (signal, layer): what only this
  layer's activation (or gradient) carries. The rest stays shared, as in a real hierarchy.
- MEG components have dipolar topographies (two opposite Gaussian blobs) normalised to peak 1,
  so every layer reaches a similar number of sensors; time courses are Gaussians of width
  `width_s` centred on the planted latency; sensor noise is the same at every sensor and time,
  set so that the strongest target has SNR `snr_meg`.
- SNR is the variance ratio of signal to noise in the repetition mean; noise is drawn per
  repetition so the noise ceiling is estimated as for real data (NSD formula).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .sensors import grouped_sensors

__all__ = [
    "SCENARIOS",
    "SIM_ROIS",
    "Plan",
    "noise_ceiling_from_repetitions",
    "params_from_config",
    "plan_subject",
    "planted_truth",
    "roi_geometry",
    "simulate_subject",
    "smooth_profile",
]

# Approximate MNI centroids (right hemisphere, mm) of ventral-stream ROIs, ordered from V1
# outwards; rounded from the Wang et al. (2015) probabilistic atlas and face/place localisers.
SIM_ROIS: dict[str, tuple[float, float, float]] = {
    "V1": (10.0, -92.0, 2.0),
    "V2": (16.0, -88.0, -2.0),
    "V3": (24.0, -86.0, -4.0),
    "hV4": (30.0, -78.0, -12.0),
    "LO": (42.0, -80.0, -4.0),
    "VO": (30.0, -64.0, -12.0),
    "FFA": (40.0, -52.0, -20.0),
    "PPA": (26.0, -44.0, -10.0),
}


def params_from_config(dataset: dict) -> dict:
    """Simulation parameters of a validated dataset entry (defaults come from the config schema).

    `length_scale` is kept only for `smooth_null`, the one scenario that reads it, so the key's
    arrival changes no other scenario's params (and reruns none of their jobs).
    """
    sim = dict(dataset["simulation"])
    if sim["scenario"] != "smooth_null":
        sim.pop("length_scale", None)
    return {
        **sim,
        "plant_grid": sim["plant_pooling"]["grid"],
        "atlas": dataset["atlas"],
        "reference_roi": dataset["reference_roi"],
        "sensor_groups": dataset["sensor_groups"],
    }


@dataclass(frozen=True)
class Plan:
    """What one simulated subject carries: planted layers per ROI and latencies per layer."""

    roi_act_layer: dict[str, int]
    roi_grad_layer: dict[str, int]  # empty when gradients are not planted
    act_latency: np.ndarray  # (n_layers,) seconds
    grad_latency: np.ndarray  # (n_layers,) seconds; NaN when gradients are not planted


def _rng(seed: int, *keys: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def _roi_layers(depths: np.ndarray) -> dict[str, int]:
    """Planted layer per ROI: ROIs ranked by distance from V1 mapped evenly onto depth."""
    names = list(SIM_ROIS)
    dist = {n: np.linalg.norm(np.subtract(SIM_ROIS[n], SIM_ROIS["V1"])) for n in names}
    ranked = sorted(names, key=dist.get)
    targets = np.linspace(0, 1, len(ranked))
    return {roi: int(np.argmin(np.abs(depths - t))) for roi, t in zip(ranked, targets)}


def _forward_latency(depths: np.ndarray, meg: dict) -> np.ndarray:
    t0, t1 = meg["forward_window"]
    return t0 + (t1 - t0) * depths


def _backward_latency(depths: np.ndarray, meg: dict) -> np.ndarray:
    t0, t1 = meg["backward_window"]
    return t0 + (t1 - t0) * (1.0 - depths)


def smooth_profile(n_layers: int, length_scale: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random function of depth in (0, 1): (n_layers,).

    One draw of a zero-mean, unit-variance Gaussian process over the layer ordinals with the
    squared-exponential kernel exp(−(i − j)² / (2 length_scale²)), mapped through the normal
    CDF so that every layer's value is uniform on (0, 1): no trend, no order, only smoothness.
    """
    if not length_scale > 0:
        raise ValueError(f"length_scale={length_scale!r}; expected a positive number of layers")
    i = np.arange(n_layers, dtype=np.float64)
    cov = np.exp(-((i[:, None] - i[None, :]) ** 2) / (2.0 * float(length_scale) ** 2))
    # The kernel is nearly singular for long length-scales: an eigendecomposition with the
    # negative rounding clipped draws from it stably.
    vals, vecs = np.linalg.eigh(cov)
    draw = vecs @ (np.sqrt(np.clip(vals, 0.0, None)) * rng.standard_normal(n_layers))
    from scipy.special import ndtr

    return ndtr(draw)


def _plan_forward(depths: np.ndarray, meg: dict, rng: np.random.Generator, options: dict) -> Plan:
    n = len(depths)
    return Plan(_roi_layers(depths), {}, _forward_latency(depths, meg), np.full(n, np.nan))


def _plan_backprop(depths: np.ndarray, meg: dict, rng: np.random.Generator, options: dict) -> Plan:
    roi = _roi_layers(depths)
    return Plan(roi, dict(roi), _forward_latency(depths, meg), _backward_latency(depths, meg))


def _plan_shuffled(depths: np.ndarray, meg: dict, rng: np.random.Generator, options: dict) -> Plan:
    roi = _roi_layers(depths)
    grad_layers = rng.permutation(sorted(set(roi.values())))
    remap = dict(zip(sorted(set(roi.values())), grad_layers))
    latency = _backward_latency(depths, meg)[rng.permutation(len(depths))]
    return Plan(roi, {r: int(remap[k]) for r, k in roi.items()}, _forward_latency(depths, meg), latency)


def _plan_smooth_null(depths: np.ndarray, meg: dict, rng: np.random.Generator, options: dict) -> Plan:
    # Two independent smooth functions of depth: one gives each layer's gradient latency within
    # the backward window, the other each ROI's gradient depth (read at its activation layer,
    # snapped to the nearest layer), so both vary smoothly with depth and neither follows it.
    roi = _roi_layers(depths)
    n, length = len(depths), float(options["length_scale"])
    t0, t1 = meg["backward_window"]
    latency = t0 + (t1 - t0) * smooth_profile(n, length, rng)
    grad_depth = smooth_profile(n, length, rng)
    grad_layer = {r: int(np.argmin(np.abs(depths - grad_depth[k]))) for r, k in roi.items()}
    return Plan(roi, grad_layer, _forward_latency(depths, meg), latency)


def _plan_dfa(depths: np.ndarray, meg: dict, rng: np.random.Generator, options: dict) -> Plan:
    # Direct feedback alignment sends the output error to every layer at once: one latency for
    # all layers, at the start of the backward window.
    roi = _roi_layers(depths)
    latency = np.full(len(depths), float(meg["backward_window"][0]))
    return Plan(roi, dict(roi), _forward_latency(depths, meg), latency)


SCENARIOS: dict[str, Callable[[np.ndarray, dict, np.random.Generator, dict], Plan]] = {
    "forward": _plan_forward,
    "backprop": _plan_backprop,
    "shuffled": _plan_shuffled,
    "smooth_null": _plan_smooth_null,
    "fa": _plan_backprop,  # feedback alignment keeps backprop's reversed order, with fa's errors
    "dfa": _plan_dfa,
}

# The feature signal whose values a scenario plants as the error (the source model extracts it).
ERROR_SIGNALS: dict[str, str] = {
    "forward": "grad",
    "backprop": "grad",
    "shuffled": "grad",
    "smooth_null": "grad",
    "fa": "fa",
    "dfa": "dfa",
}
# The smooth_null scenario's default length-scale in layers (the schema's simulation.length_scale).
DEFAULT_LENGTH_SCALE = 2.0


def error_signal(scenario: str) -> str:
    """The signal that carries a scenario's planted error (grad, fa or dfa)."""
    if scenario not in ERROR_SIGNALS:
        raise ValueError(f"simulation scenario {scenario!r} unknown; valid: {sorted(ERROR_SIGNALS)}")
    return ERROR_SIGNALS[scenario]


def plan_subject(
    scenario: str,
    depths: np.ndarray,
    meg: dict,
    seed: int,
    dataset: str,
    subject: str,
    length_scale: float = DEFAULT_LENGTH_SCALE,
) -> Plan:
    """The planted hierarchy of one subject (deterministic in seed, dataset and subject).

    `length_scale` (layers) is read by `smooth_null` only.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"simulation scenario {scenario!r} unknown; valid: {sorted(SCENARIOS)}")
    options = {"length_scale": float(length_scale)}
    return SCENARIOS[scenario](np.asarray(depths, float), meg, _rng(seed, dataset, subject, "plan"), options)


def planted_truth(
    dataset: str,
    subjects: list[str],
    source_model: str,
    scenario: str,
    depths: np.ndarray,
    meg: dict,
    seed: int,
    length_scale: float = DEFAULT_LENGTH_SCALE,
) -> pd.DataFrame:
    """The truth table of METHOD.md §7: planted ROI depths and layer latencies per subject."""
    rows = []
    for subject in subjects:
        plan = plan_subject(scenario, depths, meg, seed, dataset, subject, length_scale)
        error = error_signal(scenario)
        for signal, mapping in (("act", plan.roi_act_layer), (error, plan.roi_grad_layer)):
            for roi, k in mapping.items():
                rows.append((subject, "roi", roi, signal, float(depths[k]), np.nan))
        for signal, lat in (("act", plan.act_latency), (error, plan.grad_latency)):
            for k, t in enumerate(lat):
                if np.isfinite(t):
                    rows.append((subject, "layer", "", signal, float(depths[k]), float(t)))
    table = pd.DataFrame(rows, columns=["subject", "kind", "roi", "signal", "depth", "latency_s"])
    table.insert(0, "dataset", dataset)
    table.insert(2, "source_model", source_model)
    return table


# ---------------------------------------------------------------- responses


def _zscore(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    sd = x.std(0)
    keep = sd > 0
    return (x[:, keep] - x[:, keep].mean(0)) / sd[keep]


def _split_grid(features: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Split grid-pooled features into a leading token part (n, t) and the map (n, C, grid, grid)."""
    n, d = features.shape
    cells = grid * grid
    lead = d % cells
    if d - lead < cells:
        raise ValueError(f"features of dim {d} are not a {grid}x{grid} pooled map (plant_grid={grid})")
    return features[:, :lead], features[:, lead:].reshape(n, -1, grid, grid)


def _coarse_and_detail(features: np.ndarray, grid: int, coarse: int) -> tuple[np.ndarray, np.ndarray]:
    """Spatially coarse part (the grid map averaged to coarse×coarse cells) and within-cell detail.

    Computed by reshaping in NumPy, a code path independent of the analysis's pooling.
    Returns (n, t + C·coarse²) and (n, C·grid²) arrays.
    """
    if grid % coarse:
        raise ValueError(f"latent_grid={coarse} must divide plant_grid={grid}")
    lead, fmap = _split_grid(np.asarray(features, dtype=np.float64), grid)
    n, c, f = fmap.shape[0], fmap.shape[1], grid // coarse
    blocks = fmap.reshape(n, c, coarse, f, coarse, f).mean(axis=(3, 5))
    detail = fmap - np.repeat(np.repeat(blocks, f, axis=2), f, axis=3)
    return np.concatenate([lead, blocks.reshape(n, -1)], axis=1), detail.reshape(n, -1)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / x.std(0)


@dataclass(frozen=True)
class _Plant:
    """One signal's plant features, ready to draw latents from.

    coarse : per layer, the z-scored spatially coarse features (n_images, d_k).
    detail : per layer, the z-scored within-cell detail (n_images, e_k).
    shared : per layer, an orthonormal basis (n_images, m·(n_layers-1)) of the other layers'
        top-m principal components of their coarse features.
    """

    coarse: list[np.ndarray]
    detail: list[np.ndarray]
    shared: list[np.ndarray]


def _top_components(z: np.ndarray, m: int) -> np.ndarray:
    """Left singular vectors of the m largest principal components: (n_images, m)."""
    # Eigenvectors of the (n_images, n_images) Gram matrix: cheaper than an SVD when dims > images.
    _, vecs = np.linalg.eigh(z @ z.T)
    return vecs[:, ::-1][:, :m]


def _prepare(signals: list[list[np.ndarray]], params: dict) -> list[_Plant]:
    """Split every layer of every signal into coarse part and detail; find what the others share.

    The shared basis of (signal, layer) spans the top `shared_components` principal components
    of the coarse features of every other layer of every signal (activations and gradients).
    """
    grid, coarse_grid = int(params["plant_grid"]), int(params["latent_grid"])
    m = int(params["shared_components"])
    parts = [[_coarse_and_detail(f, grid, coarse_grid) for f in feats] for feats in signals]
    coarse = [[_zscore(c) for c, _ in sig] for sig in parts]
    detail = [[_zscore(d) for _, d in sig] for sig in parts]
    tops = {(s, k): _top_components(z, m) for s, sig in enumerate(coarse) for k, z in enumerate(sig)}
    plants = []
    for s, sig in enumerate(coarse):
        shared = []
        for k, z in enumerate(sig):
            others = [t for key, t in tops.items() if key != (s, k)]
            shared.append(
                np.linalg.qr(np.concatenate(others, axis=1))[0] if others and m > 0 else np.zeros((len(z), 0))
            )
        plants.append(_Plant(sig, detail[s], shared))
    return plants


def _latent(plant: _Plant, k: int, q: int, params: dict, rng: np.random.Generator) -> np.ndarray:
    """q unit-variance latents of layer k's plant features: (n_images, q).

    A random projection of the z-scored coarse features, of which a fraction `unique_fraction`
    of the variance is replaced by its part orthogonal to the other layers' leading components
    (what only layer k carries), plus a fraction `detail_fraction` from the within-cell detail
    (invisible to the coarser analysis pooling: structured noise).
    """
    z = plant.coarse[k]
    base = _unit(z @ rng.standard_normal((z.shape[1], q)))
    q_other = plant.shared[k]
    unique = _unit(base - q_other @ (q_other.T @ base))
    u = float(params["unique_fraction"])
    latent = np.sqrt(1.0 - u) * base + np.sqrt(u) * unique
    w = float(params["detail_fraction"])
    if w > 0:
        d = plant.detail[k]
        latent = np.sqrt(1.0 - w) * _unit(latent) + np.sqrt(w) * _unit(d @ rng.standard_normal((d.shape[1], q)))
    return _unit(latent)


def noise_ceiling_from_repetitions(reps: np.ndarray) -> np.ndarray:
    """NC (fraction, r² scale) of the repetition mean from (n_reps, n_images, n_targets) data.

    ncsnr = sqrt(max(var_total - var_noise, 0)) / sd_noise with var_noise the mean over images
    of the variance across repetitions; NC = ncsnr² / (ncsnr² + 1/n_reps) (NSD Data Manual).
    """
    n = reps.shape[0]
    var_noise = reps.var(axis=0, ddof=1).mean(axis=0)
    var_total = reps.reshape(-1, reps.shape[2]).var(axis=0, ddof=1)
    ncsnr2 = np.clip(var_total - var_noise, 0, None) / var_noise
    return ncsnr2 / (ncsnr2 + 1.0 / n)


def roi_geometry(coords: pd.DataFrame, reference: str = "V1") -> dict[str, float]:
    """Distance (mm) of each ROI's centroid from the reference ROI's, hemispheres mirrored (|x|)."""
    xyz = coords.assign(x=coords["x"].abs()).groupby("roi")[["x", "y", "z"]].mean()
    if reference not in xyz.index:
        raise ValueError(f"reference ROI {reference!r} not among the ROIs {sorted(xyz.index)}")
    return {roi: float(np.linalg.norm(xyz.loc[roi] - xyz.loc[reference])) for roi in xyz.index}


def _fmri(
    act: _Plant, grad: _Plant | None, plan: Plan, params: dict, rng: np.random.Generator
) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    n_vert = int(params["vertices_per_roi"])
    q = int(params["latent_dims"])
    blocks, rows = [], []
    for roi, centroid in SIM_ROIS.items():
        for hemi, sign in (("lh", -1.0), ("rh", 1.0)):
            signal = _latent(act, plan.roi_act_layer[roi], q, params, rng) @ rng.standard_normal((q, n_vert))
            if roi in plan.roi_grad_layer:
                g = _latent(grad, plan.roi_grad_layer[roi], q, params, rng) @ rng.standard_normal((q, n_vert))
                signal = signal + params["grad_weight"] * g
            blocks.append(signal / signal.std(0))
            xyz = np.asarray(centroid) * [sign, 1, 1] + rng.normal(0, 2.0, (n_vert, 3))
            rows += [(roi, hemi, *p) for p in xyz]
    signal = np.concatenate(blocks, axis=1)
    table = pd.DataFrame(rows, columns=["roi", "hemi", "x", "y", "z"])
    return signal, table, np.full(signal.shape[1], params["snr_fmri"])


def _meg_topographies(n_components: int, pos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth dipolar sensor patterns (n_components, n_sensors), peak |value| 1.

    Each is the difference of two Gaussian blobs 0.25 layout units apart (the outgoing and
    ingoing flux of one current dipole), so that every component reaches a similar number of
    sensors with a similar power.
    """
    centres = pos[rng.integers(0, len(pos), n_components)]
    angle = rng.uniform(0, 2 * np.pi, n_components)
    partner = centres + 0.25 * np.stack([np.cos(angle), np.sin(angle)], axis=1)

    def blob(c: np.ndarray) -> np.ndarray:
        return np.exp(-((pos[None, :, :] - c[:, None, :]) ** 2).sum(-1) / (2 * 0.12**2))

    topo = blob(centres) - blob(partner)
    return topo / np.abs(topo).max(axis=1, keepdims=True)


def _meg(
    act: _Plant,
    grad: _Plant | None,
    plan: Plan,
    params: dict,
    sensors: pd.DataFrame,
    rng: np.random.Generator,
) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    meg = params["meg"]
    times = meg["tmin"] + np.arange(meg["n_times"]) / meg["sfreq"]
    pos = sensors[["px", "py"]].to_numpy()
    q = int(params["latent_dims"])
    n_img = act.coarse[0].shape[0]
    data = np.zeros((n_img, len(sensors), len(times)))
    sources = [(act, plan.act_latency, 1.0), (grad, plan.grad_latency, params["grad_weight"])]
    for feats, latency, weight in sources:
        for k, t_k in enumerate(latency):
            if not np.isfinite(t_k):
                continue
            latent = _latent(feats, k, q, params, rng)  # (n_img, q)
            topo = _meg_topographies(q, pos, rng)  # (q, n_sensors)
            course = np.exp(-((times - t_k) ** 2) / (2 * meg["width_s"] ** 2))
            data += weight * np.einsum("iq,qs,t->ist", latent, topo, course)
    signal = data.reshape(n_img, -1)
    table = pd.DataFrame(
        {
            "sensor": np.repeat(sensors["sensor"].to_numpy(), len(times)),
            "time": np.tile(times, len(sensors)),
        }
    )
    # Same noise level at every sensor and time: the SNR is that of the strongest target.
    scale = np.full(signal.shape[1], signal.std(0).max())
    return signal, table, params["snr_meg"] * (signal.std(0) / scale) ** 2


def ctf275_sensors() -> pd.DataFrame:
    """The CTF-275 MEG sensor names and 2-D layout positions that MNE ships (offline)."""
    import mne

    layout = mne.channels.read_layout("CTF275")
    pos = layout.pos[:, :2] + layout.pos[:, 2:] / 2
    pos = (pos - pos.mean(0)) / np.ptp(pos, axis=0).max()
    return pd.DataFrame({"sensor": layout.names, "px": pos[:, 0], "py": pos[:, 1]})


def simulated_sensors(n: int | None = None) -> pd.DataFrame:
    """The CTF-275 sensors of a simulated MEG, or `n` of them spread evenly over the layout's list.

    MNE lists the sensors region by region (MLC, MLF, MLO, MLP, MLT, MRC, …), so evenly spaced
    picks keep every region's share.
    """
    sensors = ctf275_sensors()
    if n is None or n >= len(sensors):
        return sensors
    pick = np.unique(np.linspace(0, len(sensors) - 1, int(n)).round().astype(int))
    return sensors.iloc[pick].reset_index(drop=True)


def simulate_subject(
    act: list[np.ndarray],
    grad: list[np.ndarray],
    depths: np.ndarray,
    params: dict,
    seed: int,
    dataset: str,
    subject: str,
    sensors: pd.DataFrame | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """One subject's responses (n_images, n_targets) float32 and its target table.

    `act` and `grad` hold the source model's plant-pooled features per layer, (n_images, d_k).
    Noise is drawn per repetition and averaged; the noise ceiling is estimated from the
    repetitions with the NSD formula, as for real data.
    """
    plan = plan_subject(
        params["scenario"],
        depths,
        params["meg"],
        seed,
        dataset,
        subject,
        params.get("length_scale", DEFAULT_LENGTH_SCALE),
    )
    rng = _rng(seed, dataset, subject, "responses")
    act, grad = _prepare([act, grad], params)
    parts, tables = [], []
    fsig, ftab, fsnr = _fmri(act, grad, plan, params, rng)
    dist = roi_geometry(ftab, params.get("reference_roi", "V1"))
    ftab = ftab.assign(
        modality="fmri", atlas=params["atlas"], roi_distance_mm=ftab["roi"].map(dist), sensor="", time=np.nan
    )
    parts.append((fsig, fsnr))
    tables.append(ftab)
    msig, mtab, msnr = _meg(
        act,
        grad,
        plan,
        params,
        sensors if sensors is not None else simulated_sensors(params["meg"].get("n_sensors")),
        rng,
    )
    groups = grouped_sensors(mtab["sensor"].to_numpy(), params.get("sensor_groups", "standard"))
    mtab = mtab.assign(
        modality="meg", atlas="", roi=groups, hemi="", x=np.nan, y=np.nan, z=np.nan, roi_distance_mm=np.nan
    )
    parts.append((msig, msnr))
    tables.append(mtab)
    signal = np.concatenate([p[0] for p in parts], axis=1)
    snr = np.concatenate([p[1] for p in parts])
    signal = (signal - signal.mean(0)) / np.where(signal.std(0) > 0, signal.std(0), 1.0)
    n_rep = int(params["n_repetitions"])
    # Per-repetition noise so that the averaged response has the configured SNR (variance ratio).
    noise_sd = np.sqrt(n_rep / np.maximum(snr, 1e-12))
    reps = signal[None] + rng.standard_normal((n_rep, *signal.shape)) * noise_sd
    table = pd.concat(tables, ignore_index=True)
    table["noise_ceiling"] = noise_ceiling_from_repetitions(reps)
    table.insert(0, "target", np.arange(len(table), dtype=np.int64))
    columns = [
        "target",
        "modality",
        "atlas",
        "roi",
        "hemi",
        "x",
        "y",
        "z",
        "roi_distance_mm",
        "sensor",
        "time",
        "noise_ceiling",
    ]
    return reps.mean(0).astype(np.float32), table[columns]
