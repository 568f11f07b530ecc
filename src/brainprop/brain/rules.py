"""Entry points of the brain stage's rules: check (real datasets), brain (one subject) and truth (simulated).

Each `run_<rule>(*, inputs, outputs, params)` reads the rule's declared inputs and writes its
declared outputs through `brainprop.brain.files` (and the other stages' files modules).
"""

from __future__ import annotations

import logging

import numpy as np

from ..features.files import load_features, load_layers, load_samples
from .files import save_check, save_subject, save_truth

__all__ = ["run_brain", "run_check", "run_truth"]

log = logging.getLogger(__name__)


def run_check(*, inputs, outputs, params) -> None:
    """The check rule: log a real dataset's file report; write it, or fail naming every problem."""
    from .datasets import check_dataset, format_report
    from .datasets._common import DatasetError

    ds, name = params.entry, params.dataset
    report = check_dataset(ds)
    log.info("data check of %s (%s) at %s:\n%s", name, ds["kind"], ds["root"], format_report(report))
    problems = report[report["status"] != "found"]
    if len(problems):
        raise DatasetError(
            f"dataset {name!r} ({ds['kind']}) at {ds['root']}: {len(problems)} problems\n" + format_report(problems)
        )
    save_check(outputs.report, report)


def _real_subject(inputs, params) -> tuple:
    """(Y, targets, samples) of a real dataset's subject, read from its published files."""
    from ..stimuli.files import load_manifest
    from .datasets import subject_data
    from .files import load_check

    load_check(inputs.check)
    return subject_data(params.spec["entry"], params.subject, load_manifest(inputs.manifest))


def _simulated_subject(inputs, params) -> tuple:
    """(Y, targets, samples) of a simulated subject, planted from the source model's plant features."""
    from .simulate import error_signal, simulate_subject

    simulation = params.spec["simulation"]
    depths = load_layers(inputs.layers)["depth"].to_numpy()
    error = error_signal(simulation["scenario"])
    act = [np.asarray(load_features(inputs.plant, "act", k)) for k in range(len(depths))]
    err = [np.asarray(load_features(inputs.plant, error, k)) for k in range(len(depths))]
    Y, targets = simulate_subject(act, err, depths, simulation, params.seed, params.dataset, params.subject)
    return Y, targets, load_samples(inputs.plant)


# Where a subject's responses come from: a real dataset's files or the simulation.
_SUBJECT_SOURCES = {"real": _real_subject, "simulated": _simulated_subject}


def run_brain(*, inputs, outputs, params) -> None:
    """The brain rule: one subject's folder (Y, target table, samples)."""
    source = "real" if "entry" in params.spec else "simulated"
    Y, targets, samples = _SUBJECT_SOURCES[source](inputs, params)
    log.info(
        "%s %s: %d images x %d targets (%s)",
        params.dataset,
        params.subject,
        *Y.shape,
        targets["modality"].value_counts().to_dict(),
    )
    save_subject(outputs, Y, targets, samples)


def run_truth(*, inputs, outputs, params) -> None:
    """The truth rule: the planted truth table of a simulated dataset (METHOD.md §7)."""
    from .simulate import DEFAULT_LENGTH_SCALE, planted_truth

    sim = params.simulation
    depths = load_layers(inputs.layers)["depth"].to_numpy()
    truth = planted_truth(
        params.dataset,
        params.subjects,
        sim["source_model"],
        sim["scenario"],
        depths,
        sim["meg"],
        params.seed,
        sim.get("length_scale", DEFAULT_LENGTH_SCALE),
    )
    save_truth(outputs.truth, truth)
