"""Sensitivity of the backprop tests to the choices the reference papers leave open (issue: one table).

One choice varies at a time, all others at their configured value (`choice == "default"`):

- `tmax_threshold` (METHOD.md §5; 0.9 / 0.95 / 0.99 by default) and `exclude` (§5–6): the
  hierarchy scores and tests recomputed from the model's encoding table;
- `atlas`: every atlas present in the fMRI rows of the encoding table (spatial tests);
- `pooling`, `loss`, `grad_normalize` (§2) and `nuisance` (§2, "Gradient scale"): the tests of the
  model's variants (`brainprop.run.model_variants`), whose features were extracted (or, for
  `nuisance`, only encoded) again;
- `reference` (§4): E's unique variance against another reference of the joint models (the
  joint jobs fit every reference the table asks for; `brainprop.encoding.joint`).

The default rows and the variants' rows hold T1, T2, S1a, S1b and E (both measures); the
threshold, exclusion and atlas rows hold T1, T2, S1a, S1b (E does not depend on them); the
reference rows hold E's unique variance. Rows carry the tests columns plus `choice`, `value`,
`significant` (p_fdr < alpha) and `same_as_default` (the same significance and effect sign as the
default row with the same dataset, modality, signal, test, level and measure).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..hierarchy.scores import subject_hierarchy
from .group import group_tests
from .registry import SCORE_TESTS

__all__ = ["sensitivity_table"]

_KEYS = ["dataset", "modality", "model", "signal", "test", "level", "measure"]
# The tests each kind of row holds.
_WITH_E = (*SCORE_TESTS, "E")


def _tests(
    enc: pd.DataFrame,
    params: dict,
    joint: pd.DataFrame | None = None,
    targets: pd.DataFrame | None = None,
    tests: tuple[str, ...] = SCORE_TESTS,
) -> pd.DataFrame:
    targets = targets if params.get("spatial_unit", "roi") == "target" else None
    best, tm, hier = subject_hierarchy(
        enc,
        params["atlas"],
        params["threshold"],
        params["min_count"],
        params["exclude"],
        targets=targets,
        window=params.get("tmax_window"),
    )
    out = group_tests(enc, best, tm, hier, params, joint, targets=targets)
    return out[out["test"].isin(tests)]


def sensitivity_table(
    enc: pd.DataFrame,
    params: dict,
    choices: dict,
    variants: dict[str, pd.DataFrame] | None = None,
    joint: pd.DataFrame | None = None,
    targets: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Tests T1, T2, S1a, S1b and E of one dataset × model under each open choice, one at a time.

    Parameters
    ----------
    enc : the model's encoding table (all subjects, both signals).
    params : the group stage's params (atlas, threshold, exclude, min_count, seed, roi_levels,
        meg_windows, reference, ...): the defaults.
    choices : `tmax_threshold` (list of fractions), `exclude` (list of rule names), `reference`
        (list of joint-model references, each besides `params['reference']`).
    variants : `"pooling=mean"`-style label -> that variant's tests table (rows of any model).
    joint : the model's joint-model summary rows of every reference fitted (None without joint models).
    targets : the model's per-target depth rows (all subjects), for params spatial_unit 'target'.
    """
    params = {"threshold": 0.95, "exclude": "nonpositive", "reference": "stack"} | dict(params)
    rows = [_tests(enc, params, joint, targets, _WITH_E).assign(choice="default", value="")]
    for threshold in choices.get("tmax_threshold", []):
        if threshold != params["threshold"]:
            rows.append(
                _tests(enc, params | {"threshold": threshold}, targets=targets).assign(
                    choice="tmax_threshold", value=f"{threshold:g}"
                )
            )
    for exclude in choices.get("exclude", []):
        if exclude != params["exclude"]:
            rows.append(
                _tests(enc, params | {"exclude": exclude}, targets=targets).assign(choice="exclude", value=exclude)
            )
    fmri = enc[enc["modality"] == "fmri"]
    for atlas in sorted(set(fmri["atlas"]) - {params["atlas"]}):
        spatial = _tests(enc, params | {"atlas": atlas, "spatial_unit": "roi"})
        rows.append(spatial[spatial["modality"] == "fmri"].assign(choice="atlas", value=atlas))
    for reference in choices.get("reference", []):
        if reference != params["reference"] and joint is not None and len(joint):
            e = _tests(enc, params | {"reference": reference}, joint, targets, ("E",))
            e = e[e["measure"] == "unique_variance"]
            rows.append(e.assign(choice="reference", value=reference))
    model = str(enc["model"].iloc[0]) if len(enc) else ""
    for label, tests in (variants or {}).items():
        choice, value = label.split("=", 1)
        tests = tests[tests["test"].isin(_WITH_E)]
        rows.append(tests.assign(model=model, choice=choice, value=value))
    out = pd.concat(rows, ignore_index=True)
    significant = out["p_fdr"].to_numpy(np.float64) < params["alpha"]
    out["significant"] = significant
    default = out[out["choice"] == "default"].set_index(_KEYS)
    key = pd.MultiIndex.from_frame(out[_KEYS])
    ref_sig = default["significant"].reindex(key).to_numpy()
    ref_sign = np.sign(default["effect"].reindex(key).to_numpy(np.float64))
    same = (ref_sig == significant) & (ref_sign == np.sign(out["effect"].to_numpy(np.float64)))
    out["same_as_default"] = np.where(pd.isna(ref_sig), False, same).astype(bool)
    drop = [c for c in ("base_model", "variant") if c in out.columns]
    return out.drop(columns=drop).reset_index(drop=True)
