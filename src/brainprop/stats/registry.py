"""The tests of the backpropagation predictions (METHOD.md §6), one registry: statistic, alternative, family.

Every other module reads what a test is from here: the group stage (which statistic each test
computes per subject and which direction it tests), the comparisons (the sign that means "closer
to backprop"), the calibration, the sensitivity table and the figures (what each learning rule
predicts).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "E_MEASURES",
    "FORWARD_CHECKS",
    "MEASURES",
    "PREDICTIONS",
    "RULE_PREDICTIONS",
    "SCORE_TESTS",
    "TESTS",
    "TEST_ORDER",
    "TestSpec",
]


@dataclass(frozen=True)
class TestSpec:
    """One test of the backpropagation predictions.

    name : T1, T2, S1a, S1b or E.
    modality : the targets it reads ("meg", "fmri"; E reads both).
    measure : what its per-subject statistic is (the `measure` column).
    alternative : the direction backpropagation predicts for a learning signal (group and per-subject).
    forward : the direction the activations' forward check tests, or "" where act is not tested.
    needs_act : whether the statistic compares the signal with the activations.
    family : the FDR family (within dataset × model × signal): "hierarchy" or "E".
    per_subject_p : whether each subject gets a permutation p (prevalence).
    """

    name: str
    modality: str
    measure: str
    alternative: str
    forward: str
    needs_act: bool
    family: str
    per_subject_p: bool


TESTS: dict[str, TestSpec] = {
    "T1": TestSpec("T1", "meg", "temporal_score", "less", "greater", False, "hierarchy", True),
    "T2": TestSpec("T2", "meg", "tmax_lag_s", "greater", "", True, "hierarchy", False),
    "S1a": TestSpec("S1a", "fmri", "spatial_score", "greater", "greater", False, "hierarchy", True),
    "S1b": TestSpec("S1b", "fmri", "depth_alignment", "greater", "", True, "hierarchy", True),
    "E": TestSpec("E", "fmri+meg", "r_difference|unique_variance", "two-sided", "", True, "E", False),
}
TEST_ORDER = tuple(TESTS)
# The hierarchy-score tests (T1, T2, S1a, S1b): what backpropagation predicts for a learning signal,
# and the forward check that activations recover the hierarchy.
SCORE_TESTS = tuple(name for name, spec in TESTS.items() if spec.family == "hierarchy")
PREDICTIONS = {name: TESTS[name].alternative for name in SCORE_TESTS}
FORWARD_CHECKS = {name: TESTS[name].forward for name in SCORE_TESTS if TESTS[name].forward}
MEASURES = {name: TESTS[name].measure for name in SCORE_TESTS}
# E has two measures per level: the r difference to the activations and the unique variance.
E_MEASURES = tuple(TESTS["E"].measure.split("|"))

# What each learning rule predicts for the sign of each test's group effect: "less" / "greater"
# than 0, or "zero" where it predicts no order (dfa: one error for every layer, at once); the
# reasons are in docs/features.md. The group rows still test every learning signal with PREDICTIONS.
RULE_PREDICTIONS: dict[str, dict[str, str]] = {
    "grad": PREDICTIONS,
    "fa": PREDICTIONS,
    "sign": PREDICTIONS,
    "dfa": {"T1": "zero", "T2": "greater", "S1a": "zero", "S1b": "zero"},
}
