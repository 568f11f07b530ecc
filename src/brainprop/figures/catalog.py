"""The figures stage's files: every figure a run writes, named before anything runs, and the report page.

Paths are templates relative to the run folder `results/{run}` (`brainprop.run.Run.path`).
The Snakefile names every figure output when it is parsed, at each Snakemake start (and in each
cluster job); this module answers without importing matplotlib or scipy, which the drawing
modules of `brainprop.figures` need.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "FIGURE",
    "FIGURE_TABLES",
    "FIGURES",
    "FIGURE_TITLES",
    "MAP_FIGURES",
    "MODALITIES",
    "NULLS",
    "POWER",
    "SUMMARY_PAGE",
    "TESTS_PAGE",
    "figure_entries",
    "figure_names",
    "map_names",
]

FIGURE = "figures/{name}"
# The run tables (brainprop.contract.TABLES) the figures are drawn from.
FIGURE_TABLES = ("encoding", "best_layers", "tmax", "hierarchy", "tests", "cka")
POWER = "figures/power_{dataset}.png"
# Type I error of the per-subject nulls against the smooth_null length-scale, null beside null.
NULLS = "figures/calibration_{dataset}.png"
TESTS_PAGE = "report/tests.html"
# The report's opening text (verdicts, findings, deviations), included by workflow/report/workflow.rst.
SUMMARY_PAGE = "report/summary.rst"

# Figure kind -> (modalities whose rows it draws, scope). Scope "model": one file per dataset ×
# model (so that a run of many models gives figures of a readable size, grouped by model in the
# report); "dataset": one per dataset, all models in it; "simulated": per simulated dataset;
# "run": one file per run. Kinds in `_NEED_ERROR_SIGNAL` are drawn only when the run has a learning
# signal: any signal but act (grad, fa, sign, dfa; each has its prediction in
# `brainprop.stats.registry.RULE_PREDICTIONS`).
FIGURES: dict[str, tuple[frozenset[str], str]] = {
    "encoding_by_layer": (frozenset({"fmri", "meg"}), "model"),
    "meg_timecourses": (frozenset({"meg"}), "model"),
    "spatial_hierarchy": (frozenset({"fmri"}), "model"),
    "tmax": (frozenset({"meg"}), "model"),
    "model_comparison": (frozenset({"fmri", "meg"}), "dataset"),
    "rule_signatures": (frozenset({"fmri", "meg"}), "dataset"),
    "simulation_recovery": (frozenset({"fmri", "meg"}), "simulated"),
    "cka": (frozenset(), "run"),
}
_NEED_ERROR_SIGNAL = frozenset({"rule_signatures"})
MODALITIES = ("fmri", "meg")
# Report titles of the figure kinds (captions: workflow/report/<kind>.rst).
FIGURE_TITLES = {
    "encoding_by_layer": "encoding by layer",
    "meg_timecourses": "MEG r(t) per layer",
    "spatial_hierarchy": "spatial hierarchy",
    "tmax": "T_max vs depth",
    "model_comparison": "model comparison",
    "rule_signatures": "learning-rule signatures",
    "simulation_recovery": "planted vs recovered",
    "cka": "layer CKA",
    "brain_map": "brain map",
    "glass_brain": "glass brain",
    "meg_topomaps": "MEG topomaps",
}
# Map figure kind -> the modality it draws; one file per dataset × model with that modality.
MAP_FIGURES: dict[str, str] = {"brain_map": "fmri", "glass_brain": "fmri", "meg_topomaps": "meg"}


def figure_entries(
    datasets: Mapping[str, Iterable[str]],
    formats: Sequence[str] = ("png", "svg"),
    *,
    models: Iterable[str] = (),
    simulated: Iterable[str] = (),
    signals: Iterable[str] = (),
) -> list[tuple[str, str, str, str]]:
    """(kind, dataset, model, file name) of every file `make_figures` writes ("" where not per dataset/model).

    `datasets` maps each dataset to its modalities ({'fmri', 'meg'}); `models` names the run's
    models; `simulated` names the datasets with a planted truth; `signals` the run's signals
    (the rule signatures need one of grad, fa, sign, dfa: any but act).
    """
    simulated, models, entries = set(simulated), sorted(models), []
    learning = bool(set(signals) - {"act"})
    for dataset in sorted(datasets):
        modalities = set(datasets[dataset])
        bad = sorted(modalities - set(MODALITIES))
        if bad:
            raise ValueError(f"dataset {dataset!r} has modality {bad}; expected some of {list(MODALITIES)}")
        for kind, (needs, scope) in FIGURES.items():
            if not needs & modalities or (kind in _NEED_ERROR_SIGNAL and not learning):
                continue
            if scope == "model":
                entries += [
                    (kind, dataset, model, f"{kind}_{dataset}_{model}.{fmt}") for model in models for fmt in formats
                ]
            elif scope == "dataset" or (scope == "simulated" and dataset in simulated):
                entries += [(kind, dataset, "", f"{kind}_{dataset}.{fmt}") for fmt in formats]
    entries += [
        (kind, "", "", f"{kind}.{fmt}") for kind, (_, scope) in FIGURES.items() if scope == "run" for fmt in formats
    ]
    return entries


def figure_names(
    datasets: Mapping[str, Iterable[str]],
    formats: Sequence[str] = ("png", "svg"),
    *,
    models: Iterable[str] = (),
    simulated: Iterable[str] = (),
    signals: Iterable[str] = (),
) -> list[str]:
    """File names `make_figures` writes for datasets mapped to their modalities ({'fmri', 'meg'})."""
    return [e[3] for e in figure_entries(datasets, formats, models=models, simulated=simulated, signals=signals)]


def map_names(
    datasets: Mapping[str, Sequence[str]], models: Sequence[str], formats: Sequence[str] = ("png", "svg")
) -> list[tuple[str, str, str, str]]:
    """(kind, dataset, model, file name) of every map file, datasets mapped to their modalities."""
    return [
        (kind, dataset, model, f"{kind}_{dataset}_{model}.{fmt}")
        for dataset in sorted(datasets)
        for model in sorted(models)
        for kind, modality in MAP_FIGURES.items()
        if modality in set(datasets[dataset])
        for fmt in formats
    ]
