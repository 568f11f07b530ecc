"""Entry points of the figures stage's rules: figures (every table figure, the tests page), brain_map, meg_topomaps.

Each `run_<rule>(*, inputs, outputs, params)` reads the run's tables and per-subject files through
the files modules of the stages that wrote them and checks that it drew exactly the figure files
the rule declares (`brainprop.figures.catalog` names them before anything runs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from ..deviations import DEVIATION_COLUMNS
from .catalog import FIGURE_TABLES, figure_entries
from .cka import plot_cka_grid
from .comparison import plot_model_comparison, plot_rule_signatures
from .encoding import plot_encoding_by_layer, plot_meg_timecourses
from .hierarchy import plot_spatial_hierarchy, plot_tmax
from .simulation import plot_simulation_recovery
from .style import check_table, save_figure

__all__ = ["make_figures", "run_brain_map", "run_figures", "run_meg_topomaps"]

log = logging.getLogger(__name__)


def _roi_distance_map(enc: pd.DataFrame, dataset: str) -> dict[str, float]:
    """ROI -> distance from the reference ROI (mm), from a dataset's fMRI encoding rows."""
    rows = enc[(enc["dataset"] == dataset) & (enc["modality"] == "fmri")]
    return rows.groupby("roi")["roi_distance_mm"].mean().dropna().to_dict()


def _of_model(table: pd.DataFrame, model: str) -> pd.DataFrame:
    """Rows of `model` (all rows when `model` is "")."""
    return table[table["model"] == model] if model else table


def _plotters(
    tables: dict[str, pd.DataFrame], roi_levels: Mapping | None, alpha: float
) -> dict[str, Callable[[str, str], Figure]]:
    """Figure kind -> function drawing it for one dataset and model ("" where not per dataset or model)."""
    t = tables
    return {
        "encoding_by_layer": lambda d, m: plot_encoding_by_layer(
            _of_model(t["encoding"], m), d, roi_levels=(roi_levels or {}).get(d)
        ),
        "meg_timecourses": lambda d, m: plot_meg_timecourses(_of_model(t["encoding"], m), d),
        "spatial_hierarchy": lambda d, m: plot_spatial_hierarchy(
            _of_model(t["best_layers"], m),
            t["hierarchy"],
            d,
            tests=t["tests"],
            alpha=alpha,
            roi_distance_mm=_roi_distance_map(t["encoding"], d),
        ),
        "tmax": lambda d, m: plot_tmax(_of_model(t["tmax"], m), t["hierarchy"], d, tests=t["tests"], alpha=alpha),
        "model_comparison": lambda d, _: plot_model_comparison(t["tests"], d, alpha=alpha),
        "rule_signatures": lambda d, _: plot_rule_signatures(t["tests"], d, alpha=alpha),
        "simulation_recovery": lambda d, _: plot_simulation_recovery(t["truth"], t["best_layers"], t["tmax"], d),
        "cka": lambda *_: plot_cka_grid(t["cka"], t["encoding"]),
    }


def make_figures(
    tables: Mapping[str, pd.DataFrame],
    out_dir: Path,
    formats: Sequence[str] = ("png", "svg"),
    *,
    roi_levels: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    truth: Mapping[str, pd.DataFrame] | None = None,
    alpha: float = 0.05,
    spatial_unit: str = "roi",
    workers: int = 1,
) -> list[Path]:
    """Draw every table figure of a run into `out_dir`; return the written paths.

    `tables` maps each name of `FIGURE_TABLES` to the run's table; `roi_levels` maps dataset ->
    level -> ROI names (the config's `roi_levels`; default distance thirds); `truth` maps each
    simulated dataset to its planted-truth table; `alpha` is `stats.alpha`: the test level that
    fills the model comparison's markers and names the CI level (1 − alpha); `spatial_unit`
    (`hierarchy.spatial_unit`) the spatial score the figures print; `workers` processes draw
    them (forked, so each inherits the tables; 1 draws in this process). The figures draw the
    all-sensor MEG rows (sensor-group rows are in the tables only).
    """
    from ..hierarchy.scores import all_sensors, score_rows

    out_dir = Path(out_dir)
    tables = dict(tables)
    for kind in ("encoding", "tmax"):
        tables[kind] = all_sensors(tables[kind], kind)
    tables["hierarchy"] = score_rows(tables["hierarchy"], spatial_unit)
    truth = dict(truth or {})
    if truth:
        tables["truth"] = pd.concat([table for _, table in sorted(truth.items())], ignore_index=True)
    check_table(tables["encoding"], "encoding", ("dataset", "modality"))
    datasets = tables["encoding"].groupby("dataset")["modality"].agg(set).to_dict()
    plotters = _plotters(tables, roi_levels, alpha)
    models = sorted(tables["encoding"]["model"].unique())
    signals = tables["encoding"]["signal"].unique()
    entries = [
        (kind, dataset, model, out_dir / name.rsplit(".", 1)[0])
        for kind, dataset, model, name in figure_entries(
            datasets, formats[:1], models=models, simulated=truth, signals=signals
        )
    ]
    global _DRAWING
    _DRAWING = (plotters, entries, tuple(formats))
    try:
        if workers <= 1 or len(entries) < 2:
            drawn = [_draw_entry(i) for i in range(len(entries))]
        else:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(min(workers, len(entries))) as pool:
                drawn = pool.map(_draw_entry, range(len(entries)), chunksize=1)
    finally:
        _DRAWING = None
    return [path for paths in drawn for path in paths]


# What `make_figures` draws: (plotters, entries, formats), set while it runs (forked workers inherit it).
_DRAWING = None


def _draw_entry(i: int) -> list[Path]:
    """Draw and save entry i of the running `make_figures` call."""
    plotters, entries, formats = _DRAWING
    kind, dataset, model, stem = entries[i]
    return save_figure(plotters[kind](dataset, model), stem, formats)


def _check_written(written: Sequence[Path], declared: Sequence[str], rule: str) -> None:
    """Fail when a rule drew other files than it declares (its outputs and the drawing code disagree)."""
    got, want = {str(Path(p)) for p in written}, {str(Path(p)) for p in declared}
    if got != want:
        raise RuntimeError(
            f"rule {rule} wrote {sorted(got - want)} that it does not declare and not {sorted(want - got)}; "
            "brainprop.figures.catalog and the drawing code disagree"
        )


def run_figures(*, inputs, outputs, params, runtime=None) -> None:
    """The figures rule: every table figure of the run (drawn by the job's threads) and the report's tests page."""
    from ..brain.files import load_truth
    from ..stats.files import load_run_table
    from .report import write_summary_rst, write_tests_html

    tables = {name: load_run_table(inputs[name], name) for name in FIGURE_TABLES}
    truth = {ds: load_truth(path) for ds, path in zip(params.simulated, inputs.truth)}
    out_dir = Path(outputs.figures[0]).parent
    paths = make_figures(
        tables,
        out_dir,
        params.formats,
        roi_levels=params.roi_levels,
        truth=truth,
        alpha=params.alpha,
        spatial_unit=params.spatial_unit,
        workers=int((runtime or {}).get("threads", 1)),
    )
    _check_written(paths, outputs.figures, "figures")
    deviations = pd.DataFrame(params.deviations, columns=list(DEVIATION_COLUMNS))
    write_tests_html(tables["tests"], outputs.tests, params.alpha, deviations)
    write_summary_rst(tables["tests"], outputs.summary, params.alpha, deviations)
    log.info("%d figure files, the tests page and the report's summary written", len(paths))


def _subject_inputs(inputs, params) -> dict:
    """The map rules' per-subject inputs, read through their stages' loaders (subjects in `params.subjects` order)."""
    from ..brain.files import load_targets
    from ..hierarchy.files import load_subject_tables
    from ..hierarchy.scores import all_sensors

    return {
        "targets": {s: load_targets(p) for s, p in zip(params.subjects, inputs.targets)},
        "encoding": all_sensors(load_subject_tables(inputs.encoding, "encoding"), "encoding"),
    }


def run_brain_map(*, inputs, outputs, params) -> None:
    """The brain_map rule: one dataset × model's fsaverage5 brain map and glass brain."""
    from ..hierarchy.files import load_subject_tables, load_target_depths
    from .maps import make_brain_map, make_glass_brain

    data = _subject_inputs(inputs, params)
    depths = {s: load_target_depths(p) for s, p in zip(params.subjects, inputs.target_depths)}
    out_dir, ident = Path(outputs.figures[0]).parent, (params.dataset, params.model, params.formats)
    paths = make_brain_map(
        inputs.scores,
        data["targets"],
        depths,
        data["encoding"],
        out_dir,
        *ident,
        fdr=params.fdr,
        radius_mm=params.radius_mm,
    )
    paths += make_glass_brain(data["targets"], load_subject_tables(inputs.best_layers, "best_layers"), out_dir, *ident)
    _check_written(paths, outputs.figures, "brain_map")
    log.info("%s written", [str(x) for x in paths])


def run_meg_topomaps(*, inputs, outputs, params) -> None:
    """The meg_topomaps rule: one dataset × model's sensor maps at each picked layer's T_max."""
    from ..hierarchy.files import load_subject_tables
    from .maps import make_meg_topomaps

    data = _subject_inputs(inputs, params)
    out_dir = Path(outputs.figures[0]).parent
    from ..hierarchy.scores import all_sensors

    tmax = all_sensors(load_subject_tables(inputs.tmax, "tmax"), "tmax")
    paths = make_meg_topomaps(
        inputs.scores, data["targets"], tmax, out_dir, params.dataset, params.model, params.formats
    )
    _check_written(paths, outputs.figures, "meg_topomaps")
    log.info("%s written", [str(x) for x in paths])
