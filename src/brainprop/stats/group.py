"""Group tests of the backpropagation predictions (METHOD.md §6): T1, T2, S1a, S1b and E across subjects.

Each test first gives one statistic per subject (and, for T1, S1a and S1b, a per-subject p
under the null `params['null']`, `brainprop.stats.nulls`: by default variogram-matched
surrogates that keep the smoothness of the layer profile); the group row then holds an exact Wilcoxon
signed-rank test of those statistics against 0, a seeded percentile-bootstrap interval of their
mean, the smallest p the test can reach with that many subjects, and Benjamini–Hochberg FDR
within its family. E has two measures per level: the r difference to the activations and,
from the joint models (`brainprop.encoding.joint`), the signal's unique variance.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..hierarchy.scores import all_sensors, exclusion_mask, pearson, score_rows
from .inference import bh_fdr, bootstrap_ci, wilcoxon_exact
from .nulls import NULLS, subject_null_pvalue
from .registry import FORWARD_CHECKS, MEASURES, PREDICTIONS, TEST_ORDER, TESTS

__all__ = ["SUBJECT_COLUMNS", "TESTS_COLUMNS", "group_from_subjects", "group_tests", "subject_statistics"]

_REQUIRED = ("seed", "n_permutations", "n_boot", "alpha", "atlas", "min_count")


# reference: the joint models' reference of E's unique-variance rows (joint.reference; METHOD.md §4).
_OPTIONAL = {
    "roi_levels": {},
    "meg_windows": {},
    "threshold": 0.95,
    "exclude": "nonpositive",
    "reference": "stack",
    "spatial_unit": "roi",
    "tmax_window": None,
    "map_fdr": 0.01,
    "null": "variogram",
}
# What each E measure compares the signal with: r_difference always the same layer's activations.
_E_REFERENCE = {"r_difference": lambda params: "same_layer", "unique_variance": lambda params: params["reference"]}
# What S1a and S1b correlate over (config hierarchy.spatial_unit).
SPATIAL_UNITS = ("roi", "target")


TESTS_COLUMNS = {
    "dataset": str,
    "modality": str,
    "model": str,
    "signal": str,
    "test": str,
    "level": str,
    "measure": str,
    "reference": str,
    "method": str,
    "alternative": str,
    "statistic": np.float64,
    "effect": np.float64,
    "ci_low": np.float64,
    "ci_high": np.float64,
    "p": np.float64,
    "p_min": np.float64,
    "p_fdr": np.float64,
    "family": str,
    "n_subjects": np.int64,
    "n_significant_subjects": np.int64,
    "n_positive": np.int64,
}


SUBJECT_COLUMNS = {
    "dataset": str,
    "modality": str,
    "model": str,
    "signal": str,
    "test": str,
    "level": str,
    "measure": str,
    "reference": str,
    "alternative": str,
    "family": str,
    "subject": str,
    "statistic": np.float64,
    "p_perm": np.float64,
}


_JOINT_REQUIRED = ("dataset", "model", "subject", "layer_index", "modality", "atlas", "roi", "hemi", "time")


@dataclass(frozen=True)
class _Context:
    """One dataset × model: its tables restricted to what the tests read."""

    dataset: str
    model: str
    fmri: pd.DataFrame  # encoding rows, fmri, params atlas, hemi 'both'
    meg: pd.DataFrame  # encoding rows, meg
    best: pd.DataFrame  # best_layers rows, params atlas, hemi 'both'
    tm: pd.DataFrame
    hier: dict  # (signal, subject, score) -> value
    params: dict
    joint: pd.DataFrame  # joint-model summary rows (fmri: params atlas, hemi 'both'; meg); may be empty
    targets: pd.DataFrame  # per-target depth rows of params atlas (spatial_unit target); may be empty

    def rng(self, *key: object) -> np.random.Generator:
        """A generator seeded by the run seed and a stable hash of `key` (independent of row order)."""
        tag = zlib.crc32("/".join(map(str, (self.dataset, self.model, *key))).encode())
        return np.random.default_rng(np.random.SeedSequence([int(self.params["seed"]), tag]))

    def keep(self, r: np.ndarray) -> np.ndarray:
        return exclusion_mask(r, self.params["exclude"])

    def hier_value(self, signal: str, subject: str, score: str) -> float:
        try:
            return self.hier[(signal, subject, score)]
        except KeyError:
            raise ValueError(
                f"hierarchy table lacks the {score} score of {self.dataset}/{self.model}/"
                f"{signal}/subject {subject}; expected one row per subject"
            ) from None


def _checked(ctx: _Context, signal: str, subject: str, score: str, recomputed: float) -> float:
    """The hierarchy table's score, after checking it against the score the permutation test used."""
    value = ctx.hier_value(signal, subject, score)
    if not (np.isnan(value) and np.isnan(recomputed)) and not np.isclose(value, recomputed, atol=1e-9):
        raise ValueError(
            f"hierarchy table gives {score} score {value!r} for {ctx.dataset}/{ctx.model}/{signal}/"
            f"subject {subject}, but the best-layer/T_max tables give {recomputed!r}; expected the "
            "same min_count and exclude in params as in the hierarchy stage"
        )
    return value


def _layer_table(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Sorted layer indices `(n_layers,)` and their depths `(n_layers,)` present in `rows`."""
    layers = rows.drop_duplicates("layer_index").sort_values("layer_index")
    return layers["layer_index"].to_numpy(np.int64), layers["depth"].to_numpy(np.float64)


def _score_test(
    ctx: _Context,
    signal: str,
    subject: str,
    test: str,
    layer_depth: np.ndarray,
    unit_layer: np.ndarray,
    y: np.ndarray,
    alternative: str,
    moving: str,
) -> tuple[float, float]:
    """Observed r and per-subject p under `params['null']` (`brainprop.stats.nulls`)."""
    if unit_layer.size < ctx.params["min_count"]:
        return float("nan"), float("nan")
    return subject_null_pvalue(
        ctx.params["null"],
        layer_depth,
        unit_layer,
        y,
        alternative,
        ctx.params["n_permutations"],
        ctx.rng(signal, test, subject),
        moving,
    )


def _t1(ctx: _Context, signal: str, alternative: str) -> list[tuple[str, float, float]]:
    """Temporal score per subject, with its per-subject p (surrogates move the T_max profile along depth)."""
    out = []
    for subject, tm in ctx.tm[ctx.tm["signal"] == signal].groupby("subject", sort=True):
        tm = tm.sort_values("layer_index")
        t_max = tm["t_max_s"].to_numpy(np.float64)
        keep = ctx.keep(tm["peak_r"].to_numpy(np.float64)) & np.isfinite(t_max)
        observed, p = _score_test(
            ctx,
            signal,
            subject,
            "T1",
            tm["depth"].to_numpy(np.float64),
            np.flatnonzero(keep),
            t_max[keep],
            alternative,
            "y",
        )
        out.append((subject, _checked(ctx, signal, subject, "temporal", observed), p))
    return out


def _t2(ctx: _Context, signal: str, alternative: str) -> list[tuple[str, float, float]]:
    """Earliest T_max of the signal minus T_max of the activations' last layer (s), per subject.

    Layers failing the exclusion rule are left out of the minimum; the subject's value is NaN
    when the activations' last layer fails it.
    """
    out = []
    act_all = ctx.tm[ctx.tm["signal"] == "act"]
    for subject, tm in ctx.tm[ctx.tm["signal"] == signal].groupby("subject", sort=True):
        act = act_all[act_all["subject"] == subject].sort_values("layer_index")
        t_max = tm["t_max_s"].to_numpy(np.float64)
        keep = ctx.keep(tm["peak_r"].to_numpy(np.float64)) & np.isfinite(t_max)
        value = float("nan")
        if len(act) and keep.any() and ctx.keep(act["peak_r"].to_numpy(np.float64)[-1:])[0]:
            value = float(t_max[keep].min() - act["t_max_s"].iloc[-1])
        out.append((subject, value, float("nan")))
    return out


def _best_units(ctx: _Context, best: pd.DataFrame, layer_index: np.ndarray) -> np.ndarray:
    """Positions in `layer_index` of each ROI's best layer."""
    pos = np.searchsorted(layer_index, best["best_layer_index"].to_numpy(np.int64))
    if (pos >= layer_index.size).any() or (
        layer_index[np.minimum(pos, layer_index.size - 1)] != best["best_layer_index"].to_numpy()
    ).any():
        raise ValueError(
            f"best_layers of {ctx.dataset}/{ctx.model} name layers absent from the "
            f"encoding table; expected layers among {layer_index.tolist()}"
        )
    return pos


def _kept_units(ctx: _Context, rows: pd.DataFrame, distance: bool) -> pd.DataFrame:
    """ROI or target rows whose best r passes the exclusion rule (targets: and the map threshold), with a
    finite best depth and, when `distance`, a finite ROI distance."""
    keep = ctx.keep(rows["best_r"].to_numpy(np.float64))
    if ctx.params["spatial_unit"] == "target":
        keep &= rows["passes"].to_numpy(bool)
    if distance:
        keep &= np.isfinite(rows["roi_distance_mm"].to_numpy(np.float64))
        keep &= np.isfinite(rows["best_depth"].to_numpy(np.float64))
    return rows[keep]


def _spatial_units(ctx: _Context, signal: str, distance: bool = True) -> list[tuple[str, pd.DataFrame]]:
    """(subject, its kept units' best layers) of `signal`: ROIs (spatial_unit roi) or targets (target)."""
    table = ctx.best if ctx.params["spatial_unit"] == "roi" else ctx.targets
    return [
        (subject, _kept_units(ctx, rows, distance))
        for subject, rows in table[table["signal"] == signal].groupby("subject", sort=True)
    ]


def _s1a(ctx: _Context, signal: str, alternative: str) -> list[tuple[str, float, float]]:
    """Spatial score per subject (over ROIs or targets, `spatial_unit`), with its per-subject p (surrogates
    move the best depths along the ROI distance)."""
    out = []
    for subject, units in _spatial_units(ctx, signal):
        enc = ctx.fmri[(ctx.fmri["signal"] == signal) & (ctx.fmri["subject"] == subject)]
        layer_index, layer_depth = _layer_table(enc)
        dist = units["roi_distance_mm"].to_numpy(np.float64)
        observed, p = _score_test(
            ctx, signal, subject, "S1a", layer_depth, _best_units(ctx, units, layer_index), dist, alternative, "depth"
        )
        out.append((subject, _checked(ctx, signal, subject, "spatial", observed), p))
    return out


def _s1b(ctx: _Context, signal: str, alternative: str) -> list[tuple[str, float, float]]:
    """Pearson over ROIs (or targets, `spatial_unit`) of the signal's best depth vs the activations', per subject.

    Units enter when both signals' best r pass the exclusion rule (targets: and both pass the map
    threshold); the null moves the signal's best depths (along the activations' best depths, or by
    shuffling the signal's layer order under `layer_shuffle`) and keeps the activations' fixed.
    """
    out = []
    act_units = dict(_spatial_units(ctx, "act", distance=False))
    on = "roi" if ctx.params["spatial_unit"] == "roi" else "target"
    for subject, units in _spatial_units(ctx, signal, distance=False):
        act = act_units.get(subject, units.iloc[:0])
        both = units.merge(act[[on, "best_depth", "best_r"]], on=on, suffixes=("", "_act"))
        enc = ctx.fmri[(ctx.fmri["signal"] == signal) & (ctx.fmri["subject"] == subject)]
        layer_index, layer_depth = _layer_table(enc)
        _, p = _score_test(
            ctx,
            signal,
            subject,
            "S1b",
            layer_depth,
            _best_units(ctx, both, layer_index),
            both["best_depth_act"].to_numpy(np.float64),
            alternative,
            "depth",
        )
        value = (
            pearson(both["best_depth"].to_numpy(), both["best_depth_act"].to_numpy())
            if len(both) >= ctx.params["min_count"]
            else float("nan")
        )
        out.append((subject, value, p))
    return out


def _paired_difference(rows: pd.DataFrame, signal: str, keys: list[str]) -> pd.DataFrame:
    """r(signal) − r(act) on matching `keys`, as a table with columns keys + ['diff']."""
    sig = rows[rows["signal"] == signal][keys + ["r"]]
    act = rows[rows["signal"] == "act"][keys + ["r"]]
    both = sig.merge(act, on=keys, suffixes=("", "_act"))
    return both.assign(diff=both["r"].to_numpy(np.float64) - both["r_act"].to_numpy(np.float64))


def _subject_means(diff: pd.DataFrame, mask: np.ndarray, subjects: list[str]) -> list[tuple[str, float, float]]:
    sel = diff[mask & np.isfinite(diff["diff"].to_numpy())]
    means = sel.groupby("subject")["diff"].mean()
    return [(s, float(means.get(s, np.nan)), float("nan")) for s in subjects]


def _unique_variance(ctx: _Context, modality: str, signal: str) -> pd.DataFrame:
    """The signal's unique variance against `params['reference']` from the joint models, with a 'diff' column.

    Joint rows without a `reference` column (written before the forward stack existed) are
    `same_layer` fits. Empty when no joint model of that reference ran.
    """
    column = f"unique_{signal}"
    rows = ctx.joint[ctx.joint["modality"] == modality] if len(ctx.joint) else ctx.joint
    if not len(rows) or column not in rows.columns:
        return pd.DataFrame()
    reference = rows["reference"] if "reference" in rows.columns else pd.Series("same_layer", index=rows.index)
    rows = rows[reference.to_numpy() == ctx.params["reference"]]
    return rows.assign(diff=rows[column].to_numpy(np.float64))


def _e_levels(ctx: _Context, signal: str) -> dict[tuple[str, str], list[tuple[str, float, float]]]:
    """Per ROI level and subject, means over the level's ROIs (hemi 'both') and all layers of
    r(signal) − r(act) and, where joint models exist, of the signal's unique variance."""
    subjects = sorted(set(ctx.fmri.loc[ctx.fmri["signal"] == signal, "subject"]))
    present = set(ctx.fmri["roi"])
    measures = {
        "r_difference": _paired_difference(ctx.fmri, signal, ["subject", "roi", "layer_index"]),
        "unique_variance": _unique_variance(ctx, "fmri", signal),
    }
    out = {}
    for level, rois in ctx.params["roi_levels"].items():
        if not present & set(rois):
            raise ValueError(
                f"roi_levels[{level!r}] = {list(rois)} names no ROI of atlas "
                f"{ctx.params['atlas']!r} in {ctx.dataset}; expected some of {sorted(present)}"
            )
        for measure, diff in measures.items():
            if len(diff):
                out[(level, measure)] = _subject_means(diff, diff["roi"].isin(list(rois)).to_numpy(), subjects)
    return out


def _e_windows(ctx: _Context, signal: str) -> dict[tuple[str, str], list[tuple[str, float, float]]]:
    """Per MEG window and subject, means over the window's times and all layers of r(signal) − r(act)
    and, where joint models exist, of the signal's unique variance."""
    subjects = sorted(set(ctx.meg.loc[ctx.meg["signal"] == signal, "subject"]))
    measures = {
        "r_difference": _paired_difference(ctx.meg, signal, ["subject", "layer_index", "time"]),
        "unique_variance": _unique_variance(ctx, "meg", signal),
    }
    out = {}
    for window, bounds in ctx.params["meg_windows"].items():
        if len(bounds) != 2 or not bounds[0] <= bounds[1]:
            raise ValueError(
                f"meg_windows[{window!r}] = {bounds!r}; expected [t_start, t_end] in seconds with t_start <= t_end"
            )
        for measure, diff in measures.items():
            if len(diff):
                t = diff["time"].to_numpy(np.float64)
                out[(window, measure)] = _subject_means(diff, (t >= bounds[0]) & (t <= bounds[1]), subjects)
    return out


# The per-subject statistic of each hierarchy-score test (its spec: `brainprop.stats.registry.TESTS`).
_STATISTICS: dict[str, Callable[[_Context, str, str], list[tuple[str, float, float]]]] = {
    "T1": _t1,
    "T2": _t2,
    "S1a": _s1a,
    "S1b": _s1b,
}


def _subject_rows(ctx: _Context, signal: str) -> list[tuple]:
    """Per-subject rows (SUBJECT_COLUMNS order) of every test that applies to `signal`."""
    has = {
        "fmri": signal in set(ctx.fmri["signal"]) or signal in set(ctx.best["signal"]),
        "meg": signal in set(ctx.tm["signal"]),
    }
    has_act = {"fmri": "act" in set(ctx.best["signal"]), "meg": "act" in set(ctx.tm["signal"])}
    forward = signal == "act"
    tests = FORWARD_CHECKS if forward else PREDICTIONS
    family = f"{ctx.dataset}/{ctx.model}/{signal}/" + ("forward" if forward else "hierarchy")
    rows = []
    for test, alternative in tests.items():
        spec = TESTS[test]
        if has[spec.modality] and (has_act[spec.modality] or not spec.needs_act):
            for subject, value, p in _STATISTICS[test](ctx, signal, alternative):
                rows.append((spec.modality, test, "", spec.measure, "", alternative, family, subject, value, p))
    if forward:
        return rows
    e_family = f"{ctx.dataset}/{ctx.model}/{signal}/E"
    for modality, levels in (("fmri", _e_levels), ("meg", _e_windows)):
        if has[modality] and has_act[modality]:
            for (level, measure), values in levels(ctx, signal).items():
                reference = _E_REFERENCE[measure](ctx.params)
                rows += [
                    (modality, "E", level, measure, reference, "two-sided", e_family, s, v, p) for s, v, p in values
                ]
    return rows


def _params(params: dict) -> dict:
    missing = [k for k in _REQUIRED if k not in params]
    unknown = sorted(set(params) - set(_REQUIRED) - set(_OPTIONAL))
    if missing or unknown:
        raise ValueError(
            f"group params: missing {missing}, unknown {unknown}; expected keys "
            f"{list(_REQUIRED)} and optionally {sorted(_OPTIONAL)}"
        )
    out = _OPTIONAL | dict(params)
    out |= {k: v for k, v in _OPTIONAL.items() if out[k] is None}
    for key in ("n_permutations", "n_boot", "min_count"):
        if int(out[key]) != out[key] or out[key] < (2 if key == "min_count" else 1):
            raise ValueError(
                f"group params: {key}={out[key]!r}; expected a positive integer"
                + (" >= 2" if key == "min_count" else "")
            )
    if not 0 < out["alpha"] < 1:
        raise ValueError(f"group params: alpha={out['alpha']!r}; expected a level in (0, 1)")
    exclusion_mask(np.zeros(0), out["exclude"])
    if out["null"] not in NULLS:
        raise ValueError(f"group params: null={out['null']!r}; expected one of {list(NULLS)} (stats.subject_null)")
    if out["spatial_unit"] not in SPATIAL_UNITS:
        raise ValueError(f"group params: spatial_unit={out['spatial_unit']!r}; expected one of {list(SPATIAL_UNITS)}")
    return out


_TARGET_REQUIRED = ("dataset", "model", "signal", "subject", "atlas", "target", "best_layer_index", "best_depth")


def _contexts(
    enc: pd.DataFrame,
    best: pd.DataFrame,
    tm: pd.DataFrame,
    hier: pd.DataFrame,
    params: dict,
    joint: pd.DataFrame | None = None,
    targets: pd.DataFrame | None = None,
) -> list[_Context]:
    atlas = params["atlas"]
    if params["spatial_unit"] == "target":
        if targets is None:
            raise ValueError(
                "group params: spatial_unit 'target' needs the per-target depth tables (the hierarchy rule's "
                "target_depths); none were given"
            )
        missing = [c for c in (*_TARGET_REQUIRED, "best_r", "roi_distance_mm", "passes") if c not in targets.columns]
        if missing:
            raise ValueError(f"per-target depth table lacks columns {missing}; rerun the hierarchy rule")
        targets = targets[targets["atlas"] == atlas]
    else:
        targets = pd.DataFrame(columns=list(_TARGET_REQUIRED))
    joint = pd.DataFrame(columns=["dataset", "model"]) if joint is None else joint
    if len(joint):
        missing = [c for c in _JOINT_REQUIRED if c not in joint.columns]
        if missing:
            raise ValueError(
                f"joint table lacks columns {missing}; expected the joint rule's summary "
                f"columns {list(_JOINT_REQUIRED)}"
            )
        joint = joint[(joint["modality"] == "meg") | ((joint["atlas"] == atlas) & (joint["hemi"] == "both"))]
    enc = all_sensors(enc, "encoding")  # the tests read the all-sensor MEG rows
    tm = all_sensors(tm, "tmax")
    fmri = enc[(enc["modality"] == "fmri") & (enc["atlas"] == atlas) & (enc["hemi"] == "both")]
    meg = enc[enc["modality"] == "meg"]
    best = best[(best["atlas"] == atlas) & (best["hemi"] == "both")]
    hier = score_rows(hier, params["spatial_unit"])
    hier = hier[(hier["score"] == "temporal") | (hier["atlas"] == atlas)]
    out = []
    for (dataset, model), _ in enc.groupby(["dataset", "model"], sort=True):

        def pick(t: pd.DataFrame, dataset: str = dataset, model: str = model) -> pd.DataFrame:
            return t[(t["dataset"] == dataset) & (t["model"] == model)]

        h = pick(hier)
        values = dict(zip(zip(h["signal"], h["subject"], h["score"]), h["value"].astype(np.float64)))
        out.append(
            _Context(
                dataset, model, pick(fmri), pick(meg), pick(best), pick(tm), values, params, pick(joint), pick(targets)
            )
        )
    return out


def _typed(rows: list[tuple], columns: dict) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns)).astype(columns)


def subject_statistics(
    enc: pd.DataFrame,
    best: pd.DataFrame,
    tm: pd.DataFrame,
    hier: pd.DataFrame,
    params: dict,
    joint: pd.DataFrame | None = None,
    targets: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per-subject statistic (and per-subject p for T1, S1a, S1b under `params['null']`; NaN otherwise) of every test.

    Columns: dataset, modality, model, signal, test, level, measure, alternative, family,
    subject, statistic, p_perm. Arguments as for `group_tests`.
    """
    params = _params(params)
    rows = []
    for ctx in _contexts(enc, best, tm, hier, params, joint, targets):
        for signal in sorted(set(ctx.fmri["signal"]) | set(ctx.meg["signal"])):
            rows += [(ctx.dataset, r[0], ctx.model, signal, *r[1:]) for r in _subject_rows(ctx, signal)]
    return _typed(rows, SUBJECT_COLUMNS)


def _method(test: str, null: str) -> str:
    """The `method` of a tests row: the group test, and for T1, S1a, S1b the per-subject null
    ('wilcoxon+variogram'), so rows computed under different nulls never look alike."""
    return f"wilcoxon+{null}" if TESTS[test].per_subject_p else "wilcoxon"


def _group_row(key: tuple, sub: pd.DataFrame, params: dict) -> tuple:
    """One contract `tests` row from one test's per-subject rows."""
    dataset, modality, model, signal, test, level, measure, reference, alternative, family = key
    values = sub["statistic"].to_numpy(np.float64)
    finite = np.isfinite(values)
    x = values[finite]
    w, p, pmin, n = wilcoxon_exact(x, alternative)
    # The r-difference rows keep the seed tag they had before E gained a second measure.
    suffix = "" if measure in MEASURES.values() or measure == "r_difference" else f"/{measure}"
    tag = zlib.crc32(f"{family}/{test}/{level}{suffix}".encode())
    rng = np.random.default_rng(np.random.SeedSequence([int(params["seed"]), tag, 1]))
    low, high = bootstrap_ci(x, int(params["n_boot"]), rng, level=1.0 - params["alpha"])
    p_perm = sub["p_perm"].to_numpy(np.float64)[finite]
    # Only T1, S1a and S1b have a per-subject test; the others report -1, not a sign count.
    n_sig = int(np.count_nonzero(p_perm < params["alpha"])) if TESTS[test].per_subject_p else -1
    effect = float(x.mean()) if n else float("nan")
    return (
        dataset,
        modality,
        model,
        signal,
        test,
        level,
        measure,
        reference,
        _method(test, params["null"]),
        alternative,
        w,
        effect,
        low,
        high,
        p,
        pmin,
        float("nan"),
        family,
        n,
        n_sig,
        int(np.count_nonzero(x > 0)),
    )


def group_tests(
    enc: pd.DataFrame,
    best: pd.DataFrame,
    tm: pd.DataFrame,
    hier: pd.DataFrame,
    params: dict,
    joint: pd.DataFrame | None = None,
    targets: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Group tests T1, T2, S1a, S1b and E of every dataset × model × signal (contract `tests` table).

    Parameters
    ----------
    enc, best, tm, hier : the contract encoding, best_layers, tmax and hierarchy tables of all
        subjects (one dataset × model at a time in the workflow, but any number works).
    params : seed, n_permutations, n_boot, alpha, atlas, min_count (required); null (the per-subject
        null of T1, S1a, S1b: 'variogram', the default, 'gp' or 'layer_shuffle'; `stats.subject_null`,
        n_permutations surrogates or permutations each); roi_levels
        (level -> ROI names), meg_windows (name -> [t_start, t_end] s), exclude (default
        'nonpositive'), reference (the joint models' reference of E's unique variance: 'stack',
        the default, or 'same_layer'), spatial_unit ('roi' default, or 'target'); threshold,
        tmax_window and map_fdr are unused here (the hierarchy stage applied them), accepted so one
        params block serves both stages. The tests read the all-sensor MEG rows (sensor-group rows
        are descriptive).
    joint : the joint rule's summary rows of all layers and subjects (`brainprop.encoding.joint`), with
        identity columns dataset, model, subject, layer_index; None when no joint models ran.
    targets : the per-target depth rows of all subjects (`brainprop.hierarchy.scores.subject_target_depths`);
        needed when params spatial_unit is 'target' (S1a and S1b over the vertices or voxels
        that pass the map threshold, each with its ROI's distance), unused for 'roi'.

    Notes
    -----
    For a learning signal (signal != 'act') the rows are T1 ('less'), T2, S1a, S1b ('greater')
    in family '{dataset}/{model}/{signal}/hierarchy', and E per ROI level and MEG window
    ('two-sided') in family '.../E'. For 'act' the rows are T1 and S1a with 'greater' (forward
    activations should recover the hierarchy), family '.../act/forward'. A test runs only where
    its modality exists (MEG-only: no S tests; fMRI-only: no T tests), and T2, S1b and E only
    where 'act' exists too.

    statistic is the Wilcoxon W, effect the mean of the per-subject statistics, [ci_low, ci_high]
    their (1 − alpha) percentile bootstrap over subjects (seeded per row), p exact, p_min the
    smallest reachable p, p_fdr Benjamini–Hochberg within the family; method names the group
    test and, for T1, S1a and S1b, the per-subject null ('wilcoxon+variogram'; 'wilcoxon' for T2
    and E). NaN subject values are
    dropped; n_subjects counts the rest. n_significant_subjects counts subjects with a per-subject
    p < alpha for T1, S1a and S1b; it is -1 for T2 and E, which have no per-subject
    test (a sign count is not significance). The extra column n_positive counts subjects whose
    statistic is > 0, for every row.
    E has two rows per level (column `measure`): 'r_difference', r(signal) − r(act) in raw r
    (not noise-normalised), and, when `joint` is given, 'unique_variance', the signal's unique
    variance R²_joint − R²(act alone) from the joint models; both are per-subject means over the
    level's targets and all layers, and both belong to the E family. Column `reference` names
    what an E row compares the signal with: 'same_layer' for r_difference, `params['reference']`
    for unique_variance ('stack': every selected layer's activations and the model output); ""
    for the other tests.
    """
    return group_from_subjects(subject_statistics(enc, best, tm, hier, params, joint, targets), params)


def group_from_subjects(per_subject: pd.DataFrame, params: dict) -> pd.DataFrame:
    """The contract `tests` rows from `subject_statistics` output (see `group_tests`)."""
    params = _params(params)
    keys = ["dataset", "modality", "model", "signal", "test", "level", "measure", "reference", "alternative", "family"]
    if "reference" not in per_subject.columns:  # per-subject tables written before E named its reference
        per_subject = per_subject.assign(reference=np.where(per_subject["test"] == "E", "same_layer", ""))
    rows = [_group_row(key, sub, params) for key, sub in per_subject.groupby(keys, sort=False)]
    out = _typed(rows, TESTS_COLUMNS)
    for idx in out.groupby("family").groups.values():
        out.loc[idx, "p_fdr"] = bh_fdr(out.loc[idx, "p"].to_numpy())
    order = out["test"].map({t: i for i, t in enumerate(TEST_ORDER)})
    out = out.assign(_order=order).sort_values(
        ["dataset", "model", "signal", "_order", "level", "measure"], kind="mergesort"
    )
    return out.drop(columns="_order").reset_index(drop=True)
