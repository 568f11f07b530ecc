"""Calibration of the backprop tests on simulated subjects: type I error and power (METHOD.md §6–7).

Scores of simulated subjects come as arrays (`SubjectScores`) from two sources, both in-process
(no Snakemake per subject):

- `planted_scores`: drawn directly from each subject's planted hierarchy
  (`brainprop.brain.simulate.plan_subject`): each ROI's r over layers peaks at its planted layer,
  each layer's r(t) at its planted latency, plus Gaussian noise on r. Cheap enough for
  hundreds of seeds (the type I error tests on the `shuffled` and `smooth_null` scenarios).
- `encoded_scores`: the real chain on cached features: `simulate_subject` builds responses
  from the source model's plant features and `ridge_cv` encodes all subjects' targets of a
  batch from one decomposition per layer, signal and fold.

`group_rejections` applies the group stage's definitions to the arrays (the same exclusions,
minimum counts, per-subject nulls `subject_null_pvalue` and `wilcoxon_exact`), under several
per-subject nulls at once; `rejections` runs the workflow's own table functions instead, and a
test checks that both agree. `null_calibration` runs the planted path over scenarios,
length-scales, nulls and hundreds of seeds (the type I error tests, docs/calibration.md). The
`calibration` rule (off by default; on in `config/calibration.yaml`) runs the `shuffled` and
`smooth_null` scenarios (type I error) and `backprop` (power) over SNRs, seeds and subject
counts through the real encoding, and draws `figures/power_{dataset}.png` and
`figures/calibration_{dataset}.png` (type I error against length-scale, null beside null).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..brain.simulate import SIM_ROIS, plan_subject, roi_geometry
from ..hierarchy.scores import exclusion_mask, in_window, layer_tmax, pearson, subject_hierarchy
from .group import group_from_subjects, subject_statistics
from .inference import wilcoxon_exact
from .nulls import subject_null_pvalue
from .registry import FORWARD_CHECKS, PREDICTIONS, SCORE_TESTS

__all__ = [
    "CALIBRATION_COLUMNS",
    "SubjectScores",
    "encoded_scores",
    "group_rejections",
    "null_calibration",
    "planted_scores",
    "rejection_rates",
    "rejections",
    "calibration_table",
    "scores_table",
    "subject_pvalues",
    "subject_tests",
]

log = logging.getLogger(__name__)

CALIBRATION_COLUMNS = [
    "scenario",
    "length_scale",
    "null",
    "snr_fmri",
    "seed",
    "n_subjects",
    "test",
    "signal",
    "alternative",
    "p",
    "effect",
    "n_significant_subjects",
    "n_used",
]
_TESTS = SCORE_TESTS
# The demo's MEG time axis (40 Hz, 40 samples from -0.1 s).
DEMO_TIMES = np.round(-0.1 + np.arange(40) / 40.0, 10)


@dataclass(frozen=True)
class SubjectScores:
    """One subject's encoding scores as arrays.

    fmri : signal -> (n_rois, n_layers) mean r per ROI (rows in `SIM_ROIS` order, hemispheres pooled).
    meg : signal -> (n_layers, n_times) mean r over sensors per layer and time.
    """

    subject: str
    fmri: dict[str, np.ndarray]
    meg: dict[str, np.ndarray]


@functools.lru_cache(maxsize=1)
def _roi_distance_table() -> tuple[float, ...]:
    coords = pd.DataFrame([(roi, *xyz) for roi, xyz in SIM_ROIS.items()], columns=["roi", "x", "y", "z"])
    dist = roi_geometry(coords, "V1")
    return tuple(float(dist[roi]) for roi in SIM_ROIS)


def _roi_distances() -> np.ndarray:
    """Distance (mm) of each simulated ROI from V1, in `SIM_ROIS` order: (n_rois,)."""
    return np.array(_roi_distance_table())


def planted_scores(
    scenario: str,
    subjects: Sequence[str],
    depths: np.ndarray,
    meg: dict,
    seed: int,
    noise: float,
    times: np.ndarray = DEMO_TIMES,
    dataset: str = "sim",
    width_layers: float = 1.5,
    width_s: float = 0.05,
    length_scale: float = 2.0,
) -> list[SubjectScores]:
    """Scores drawn from each subject's planted hierarchy (`plan_subject`) plus N(0, noise²) on r.

    `length_scale` (layers) is that of the `smooth_null` scenario (`plan_subject`).

    fMRI: per ROI, exp(−(k − k*)² / (2 width_layers²)) over layers k, k* the planted layer;
    MEG: per layer, exp(−(t − t_k)² / (2 width_s²)) over `times`, t_k the planted latency. A
    signal that is not planted (gradients in `forward`) is pure noise.
    """
    depths = np.asarray(depths, dtype=np.float64)
    layers = np.arange(depths.size)
    rng = np.random.default_rng([seed, depths.size, 7])
    out = []
    for subject in subjects:
        plan = plan_subject(scenario, depths, meg, seed, dataset, subject, length_scale)
        fmri, meg_r = {}, {}
        for signal, roi_layer, latency in (
            ("act", plan.roi_act_layer, plan.act_latency),
            ("grad", plan.roi_grad_layer, plan.grad_latency),
        ):
            peak = np.array([roi_layer.get(roi, np.nan) for roi in SIM_ROIS], dtype=np.float64)
            with np.errstate(invalid="ignore"):
                tuning = np.nan_to_num(np.exp(-((layers[None, :] - peak[:, None]) ** 2) / (2 * width_layers**2)))
            fmri[signal] = tuning + rng.normal(0.0, noise, tuning.shape)
            lat = np.where(np.isfinite(latency), latency, np.inf)
            course = np.exp(-((np.asarray(times)[None, :] - lat[:, None]) ** 2) / (2 * width_s**2))
            meg_r[signal] = course + rng.normal(0.0, noise, course.shape)
        out.append(SubjectScores(subject, fmri, meg_r))
    return out


def _group_means(r: np.ndarray, code: np.ndarray, n: int) -> np.ndarray:
    """Mean of the finite values of r per code in [0, n)."""
    ok = np.isfinite(r)
    total = np.bincount(code[ok], r[ok], minlength=n)
    count = np.bincount(code[ok], minlength=n)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def encoded_scores(
    plant: dict[str, list[np.ndarray]],
    features: dict[str, list[np.ndarray]],
    depths: np.ndarray,
    sim_params: dict,
    seed: int,
    subjects: Sequence[str],
    folds: Sequence,
    alphas: np.ndarray,
    sensors: pd.DataFrame,
    dataset: str = "sim",
    backend: str = "numpy",
    device: str = "auto",
    dtype: str | None = None,
) -> tuple[list[SubjectScores], np.ndarray]:
    """Scores of simulated subjects through the real chain, and the MEG times.

    `simulate_subject` builds each subject from the plant features ({"act": [...], "grad":
    [...]} per layer, (n_images, d_k)); `ridge_cv` encodes every subject's targets at once from
    the analysis `features` (one decomposition per layer, signal and fold); r is averaged per
    ROI (both hemispheres) and per MEG time over sensors, as the encoding stage does.
    """
    from ..brain.simulate import simulate_subject
    from ..encoding._ridge import ridge_cv

    Ys, targets = [], None
    for subject in subjects:
        Y, targets = simulate_subject(plant["act"], plant["grad"], depths, sim_params, seed, dataset, subject, sensors)
        Ys.append(Y)
    fmri = (targets["modality"] == "fmri").to_numpy()
    roi_code = pd.Categorical(targets.loc[fmri, "roi"], categories=list(SIM_ROIS)).codes.astype(np.int64)
    times, time_code = np.unique(targets.loc[~fmri, "time"].to_numpy(np.float64), return_inverse=True)
    n_layers = len(depths)
    fmri_r = {s: np.full((len(subjects), len(SIM_ROIS), n_layers), np.nan) for s in features}
    meg_r = {s: np.full((len(subjects), n_layers, times.size), np.nan) for s in features}
    # Targets are fitted independently, so all subjects' targets go through one batch of one fit.
    Y_all, m = np.concatenate(Ys, axis=1), Ys[0].shape[1]
    for signal, layers in features.items():
        for k, X in enumerate(layers):
            X = X[:, np.ptp(X, axis=0) > 0]
            r_all = ridge_cv(X, Y_all, folds, alphas, backend=backend, device=device, dtype=dtype).r
            for i in range(len(subjects)):
                r = r_all[i * m : (i + 1) * m]
                fmri_r[signal][i, :, k] = _group_means(r[fmri], roi_code, len(SIM_ROIS))
                meg_r[signal][i, k] = _group_means(r[~fmri], time_code, times.size)
    scores = [
        SubjectScores(subject, {s: fmri_r[s][i] for s in features}, {s: meg_r[s][i] for s in features})
        for i, subject in enumerate(subjects)
    ]
    return scores, times


def scores_table(
    scores: Sequence[SubjectScores],
    depths: np.ndarray,
    times: np.ndarray = DEMO_TIMES,
    dataset: str = "sim",
    atlas: str = "sim",
) -> pd.DataFrame:
    """The encoding-table rows (hemi 'both' and MEG times) of `scores`, for the hierarchy stage."""
    depths = np.asarray(depths, dtype=np.float64)
    n_layers, rois, dist = depths.size, list(SIM_ROIS), _roi_distances()
    frames = []
    for s in scores:
        for signal, r in s.fmri.items():
            frames.append(
                pd.DataFrame(
                    {
                        "signal": signal,
                        "subject": s.subject,
                        "modality": "fmri",
                        "atlas": atlas,
                        "roi": np.repeat(rois, n_layers),
                        "hemi": "both",
                        "roi_distance_mm": np.repeat(dist, n_layers),
                        "time": np.nan,
                        "layer_index": np.tile(np.arange(n_layers), len(rois)),
                        "depth": np.tile(depths, len(rois)),
                        "r": r.ravel(),
                    }
                )
            )
        for signal, r in s.meg.items():
            frames.append(
                pd.DataFrame(
                    {
                        "signal": signal,
                        "subject": s.subject,
                        "modality": "meg",
                        "atlas": "",
                        "roi": "",
                        "hemi": "",
                        "roi_distance_mm": np.nan,
                        "time": np.tile(times, n_layers),
                        "layer_index": np.repeat(np.arange(n_layers), len(times)),
                        "depth": np.repeat(depths, len(times)),
                        "r": r.ravel(),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True).assign(dataset=dataset, model="m")


def _best(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best layer (ties to the shallowest; -1 when all NaN) and best r per row of (n_rois, n_layers)."""
    filled = np.where(np.isfinite(r), r, -np.inf)
    best = np.argmax(filled, axis=1)
    best_r = filled[np.arange(len(r)), best]
    undefined = ~np.isfinite(best_r)
    return np.where(undefined, -1, best), np.where(undefined, np.nan, best_r)


def _subject_units(
    s: SubjectScores, depths: np.ndarray, times: np.ndarray, params: dict, signals: Sequence[str] | None = None
) -> dict[tuple[str, str], tuple]:
    """What each (signal, test) of one subject correlates, with the group stage's conventions.

    Values are (units, y, alternative, moving) for T1, S1a, S1b (`subject_null_pvalue`'s
    arguments; units index `depths`) and (value,) for T2.
    """
    depths = np.asarray(depths, dtype=np.float64)
    exclude = params["exclude"]
    dist = _roi_distances()
    out: dict[tuple[str, str], tuple] = {}
    tm = {}
    inside = in_window(times, params.get("tmax_window"))  # hierarchy.tmax_window, as the hierarchy stage
    wanted = set(s.meg) | set(s.fmri) if signals is None else set(signals)
    for signal, r in s.meg.items():
        if signal in wanted or signal == "act":
            tm[signal] = np.array(
                [layer_tmax(np.asarray(times, np.float64)[inside], row[inside], params["threshold"]) for row in r]
            )
    best = {signal: _best(r) for signal, r in s.fmri.items() if signal in wanted or signal == "act"}
    for signal in tm:
        if signal not in wanted:
            continue
        alternative = PREDICTIONS["T1"] if signal != "act" else FORWARD_CHECKS["T1"]
        t_max, peak = tm[signal][:, 0], tm[signal][:, 1]
        keep = exclusion_mask(peak, exclude) & np.isfinite(t_max)
        out[(signal, "T1")] = (np.flatnonzero(keep), t_max[keep], alternative, "y")
        if signal != "act" and "act" in tm:
            act_last = tm["act"][-1]
            value = float("nan")
            if keep.any() and exclusion_mask(act_last[1:], exclude)[0]:
                value = float(t_max[keep].min() - act_last[0])
            out[(signal, "T2")] = (value,)
    for signal, (layer, best_r) in best.items():
        if signal not in wanted:
            continue
        alternative = PREDICTIONS["S1a"] if signal != "act" else FORWARD_CHECKS["S1a"]
        keep = exclusion_mask(best_r, exclude) & (layer >= 0)
        out[(signal, "S1a")] = (layer[keep], dist[keep], alternative, "depth")
        if signal != "act" and "act" in best:
            act_layer, act_r = best["act"]
            both = keep & exclusion_mask(act_r, exclude) & (act_layer >= 0)
            out[(signal, "S1b")] = (layer[both], depths[act_layer[both]], PREDICTIONS["S1b"], "depth")
    return out


def subject_pvalues(
    s: SubjectScores,
    depths: np.ndarray,
    times: np.ndarray,
    params: dict,
    rng: np.random.Generator,
    nulls: Sequence[str],
    signals: Sequence[str] | None = None,
) -> dict[tuple[str, str], tuple[float, dict[str, float]]]:
    """(statistic, {null: per-subject p}) of one subject per (signal, test), for several nulls at once.

    The statistics are computed once; each null in `nulls` (`brainprop.stats.nulls.NULLS`) gets
    its own draws. `signals` restricts the tests to those signals (None: all). T2 has no
    per-subject test: its p is NaN under every null.
    """
    depths = np.asarray(depths, dtype=np.float64)
    min_count, n_perm = int(params["min_count"]), int(params["n_permutations"])
    out = {}
    for key, spec in _subject_units(s, depths, times, params, signals).items():
        if len(spec) == 1:
            out[key] = (spec[0], {null: float("nan") for null in nulls})
            continue
        units, y, alternative, moving = spec
        if units.size < min_count:
            out[key] = (float("nan"), {null: float("nan") for null in nulls})
            continue
        ps, value = {}, float("nan")
        for null in nulls:
            value, ps[null] = subject_null_pvalue(null, depths, units, y, alternative, n_perm, rng, moving)
        if key[1] == "S1b":  # the statistic is Pearson of the two best depths, as the group stage computes it
            value = pearson(depths[units], y)
        out[key] = (value, ps)
    return out


def subject_tests(
    s: SubjectScores, depths: np.ndarray, times: np.ndarray, params: dict, rng: np.random.Generator
) -> dict[tuple[str, str], tuple[float, float]]:
    """(statistic, per-subject p) of one subject per (signal, test), with the group stage's conventions.

    The same definitions as `brainprop.stats.group` (exclusions, minimum counts, the per-subject
    null `params['null']`, default variogram, by `subject_null_pvalue`) on arrays, for hundreds
    of seeds; a test checks that both give the same statistics.
    """
    null = params.get("null", "variogram")
    per = subject_pvalues(s, depths, times, params, rng, [null])
    return {key: (value, ps[null]) for key, (value, ps) in per.items()}


def group_rejections(
    scores: Sequence[SubjectScores],
    depths: np.ndarray,
    times: np.ndarray,
    params: dict,
    n_subjects: Sequence[int],
    seed: int,
    nulls: Sequence[str] | None = None,
    signals: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Exact Wilcoxon p, effect and per-subject prevalence of every test for the first n subjects.

    `nulls` are the per-subject nulls to count significant subjects under (default
    `[params['null']]`, itself variogram by default); the group test does not depend on them.
    `signals` restricts the signals tested (None: all). Columns: n_subjects, null, test, signal,
    alternative, p, effect, n_significant_subjects (−1 for T2), n_used (subjects with a finite
    statistic).
    """
    nulls = list(nulls) if nulls is not None else [params.get("null", "variogram")]
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(np.random.SeedSequence([int(params["seed"]), seed, 11]))
    # The surrogates' matrix products are small: BLAS threads cost more than they give.
    with threadpool_limits(1, user_api="blas"):
        per = [subject_pvalues(s, depths, times, params, rng, nulls, signals) for s in scores]
    rows = []
    for n in n_subjects:
        if n > len(per):
            raise ValueError(f"n_subjects {n} exceeds the {len(per)} simulated subjects")
        for signal, test in sorted(per[0]):
            values = np.array([p[(signal, test)][0] for p in per[:n]], dtype=np.float64)
            finite = np.isfinite(values)
            alternative = (PREDICTIONS if signal != "act" else FORWARD_CHECKS)[test]
            _, p, _, used = wilcoxon_exact(values[finite], alternative)
            effect = float(values[finite].mean()) if used else float("nan")
            for null in nulls:
                p_sub = np.array([q[(signal, test)][1][null] for q in per[:n]], dtype=np.float64)[finite]
                n_sig = int(np.count_nonzero(p_sub < params["alpha"])) if test != "T2" else -1
                rows.append((n, null, test, signal, alternative, p, effect, n_sig, used))
    columns = ["n_subjects", "null", "test", "signal", "alternative", "p", "effect", "n_significant_subjects"]
    return pd.DataFrame(rows, columns=[*columns, "n_used"])


def null_calibration(
    depths: np.ndarray,
    meg: dict,
    params: dict,
    nulls: Sequence[str],
    scenarios: Sequence[tuple[str, float]],
    n_seeds: int,
    n_subjects: int = 8,
    noise: float = 0.3,
    times: np.ndarray = DEMO_TIMES,
    signals: Sequence[str] = ("grad",),
) -> pd.DataFrame:
    """Rejections of the per-subject and group tests over seeds, on scores drawn from planted plans.

    The fast path of the calibration (`planted_scores`, no encoding): for each (scenario,
    length_scale) in `scenarios` and seed, `n_subjects` subjects are drawn with N(0, noise²) on
    r and tested under every null of `nulls`. Columns: those of `group_rejections` plus
    scenario, length_scale (NaN where the scenario has none), seed.
    """
    subjects = [f"sub-{i + 1:02d}" for i in range(n_subjects)]
    rows = []
    for scenario, length in scenarios:
        for seed in range(int(n_seeds)):
            scores = planted_scores(
                scenario, subjects, depths, meg, seed, noise, times, length_scale=length if length else 2.0
            )
            rej = group_rejections(scores, depths, times, params, [n_subjects], seed, nulls, signals)
            rows.append(rej.assign(scenario=scenario, length_scale=float(length or np.nan), seed=seed))
    return pd.concat(rows, ignore_index=True)


def rejections(enc: pd.DataFrame, params: dict, n_subjects: Sequence[int]) -> pd.DataFrame:
    """As `group_rejections`, through the workflow's own tables (`subject_hierarchy`, `group`).

    The first n subjects (sorted) of the encoding table `enc` enter each count n.
    """
    params = dict(params) | {"spatial_unit": "roi"}  # the calibration's subjects have ROI scores only
    best, tm, hier = subject_hierarchy(
        enc,
        params["atlas"],
        params["threshold"],
        params["min_count"],
        params["exclude"],
        window=params.get("tmax_window"),
    )
    per_subject = subject_statistics(enc, best, tm, hier, params)
    per_subject = per_subject[per_subject["test"].isin(_TESTS)]
    subjects = sorted(set(enc["subject"]))
    rows = []
    for n in n_subjects:
        if n > len(subjects):
            raise ValueError(f"n_subjects {n} exceeds the {len(subjects)} simulated subjects")
        group = group_from_subjects(per_subject[per_subject["subject"].isin(subjects[:n])], params)
        rows.append(group.assign(n_subjects_requested=n))
    out = pd.concat(rows, ignore_index=True)
    return pd.DataFrame(
        {
            "n_subjects": out["n_subjects_requested"].astype(np.int64),
            "null": params.get("null", "variogram"),
            "test": out["test"],
            "signal": out["signal"],
            "alternative": out["alternative"],
            "p": out["p"],
            "effect": out["effect"],
            "n_significant_subjects": out["n_significant_subjects"].astype(np.int64),
            "n_used": out["n_subjects"].astype(np.int64),
        }
    )


def rejection_rates(table: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Per scenario × length-scale × null × SNR × subject count × test × signal (the keys present):
    group rejection rate (p < alpha) over seeds, the per-subject rejection rate (per-subject p <
    alpha, pooled over seeds and subjects; NaN for T2) and the number of per-subject tests."""
    keys = [k for k in ("scenario", "length_scale", "null", "snr_fmri", "n_subjects", "test", "signal") if k in table]
    subject_level = table["n_significant_subjects"].where(table["n_significant_subjects"] >= 0)
    out = table.assign(
        reject=table["p"] < alpha, significant=subject_level, tested=table["n_used"].where(subject_level.notna())
    )
    rates = (
        out.groupby(keys, sort=True, dropna=False)
        .agg(
            group_rate=("reject", "mean"),
            significant=("significant", "sum"),
            n_subject_tests=("tested", "sum"),
            n_seeds=("seed", "nunique"),
        )
        .reset_index()
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        subject_rate = rates["significant"] / rates["n_subject_tests"]
    rates["subject_rate"] = subject_rate.where(rates["n_subject_tests"] > 0)
    rates["n_subject_tests"] = rates["n_subject_tests"].astype(np.int64)
    return rates.drop(columns="significant")


def _scenarios(cal: dict) -> list[tuple[str, float]]:
    """The calibration's (scenario, length_scale) pairs: shuffled, smooth_null at each length-scale, backprop."""
    smooth = [("smooth_null", float(length)) for length in cal["length_scales"]]
    return [("shuffled", float("nan")), *smooth, ("backprop", float("nan"))]


def calibration_table(
    plant: dict[str, list[np.ndarray]],
    features: dict[str, list[np.ndarray]],
    depths: np.ndarray,
    folds: Sequence,
    sensors: pd.DataFrame,
    params: dict,
    dataset: str,
) -> pd.DataFrame:
    """Group and per-subject rejections of every test over scenarios, SNRs, seeds and per-subject nulls.

    Scenarios: shuffled (type I error, exchangeable layers), smooth_null at each
    `calibration.length_scales` (type I error when neighbouring layers are alike), backprop
    (power). Every seed's subjects are encoded once and tested under each `calibration.nulls`.
    `plant` and `features` are the source model's plant and analysis features per signal and layer;
    `params` has `simulation` (the dataset's), `calibration` (the config entry), `group` (the
    group stage's settings), `encoding` (the `encoding` config entry) and `seed`. Columns
    `CALIBRATION_COLUMNS`.
    """
    from ..config import alphas as alpha_grid

    cal, group = params["calibration"], dict(params["group"])
    subjects = [f"sub-{i + 1:02d}" for i in range(max(cal["n_subjects"]))]
    alphas = alpha_grid(params["encoding"])
    backend = {k: params["encoding"][k] for k in ("backend", "device", "dtype") if k in params["encoding"]}
    rows = []
    for scenario, length in _scenarios(cal):
        for snr in cal["snr_fmri"]:
            sim = dict(
                params["simulation"],
                scenario=scenario,
                snr_fmri=float(snr),
                snr_meg=float(snr) * float(cal["snr_meg_ratio"]),
            )
            if np.isfinite(length):
                sim["length_scale"] = length
            for seed in range(int(cal["n_seeds"])):
                run_seed = int(params["seed"]) * 100_003 + seed
                scores, times = encoded_scores(
                    plant, features, depths, sim, run_seed, subjects, folds, alphas, sensors, dataset, **backend
                )
                rej = group_rejections(scores, depths, times, group, cal["n_subjects"], run_seed, cal["nulls"])
                rows.append(rej.assign(scenario=scenario, length_scale=length, snr_fmri=float(snr), seed=seed))
                log.info(
                    "%s (length-scale %g) snr %g seed %d: %s",
                    scenario,
                    length,
                    snr,
                    seed,
                    rej[rej["signal"] == "grad"][["n_subjects", "null", "test", "p", "n_significant_subjects"]].to_dict(
                        "records"
                    ),
                )
    return pd.concat(rows, ignore_index=True)[CALIBRATION_COLUMNS]
