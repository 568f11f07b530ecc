"""Entry points of the statistics stage's rules: group, compare, sensitivity, calibration and tables.

Each `run_<rule>(*, inputs, outputs, params)` reads the rule's declared inputs through the files
modules of the stages that wrote them and writes its outputs through `brainprop.stats.files`.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..hierarchy.files import load_subject_tables, load_target_depths
from .files import (
    load_comparisons,
    load_sensitivity,
    load_subject_stats,
    load_tests,
    save_calibration,
    save_comparisons,
    save_run_table,
    save_sensitivity,
    save_subject_stats,
    save_tests,
)

__all__ = ["run_calibration", "run_compare", "run_group", "run_sensitivity", "run_tables"]

log = logging.getLogger(__name__)


def _target_depths(paths) -> pd.DataFrame:
    """Every subject's per-target depth rows (the hierarchy rule's target_depths), concatenated."""
    return pd.concat([load_target_depths(p) for p in paths], ignore_index=True)


def run_group(*, inputs, outputs, params) -> None:
    """The group rule: one dataset × model's tests and the per-subject statistics behind them."""
    from ..encoding.files import load_joint_summary
    from .group import group_from_subjects, subject_statistics

    tables = {
        kind: load_subject_tables(inputs[kind], kind) for kind in ("encoding", "best_layers", "tmax", "hierarchy")
    }
    joint_paths = list(inputs.joint)
    joint = pd.concat([load_joint_summary(p) for p in joint_paths], ignore_index=True) if joint_paths else None
    targets = _target_depths(inputs.target_depths)
    settings = dict(params.group)
    variant = settings.pop("variant")
    per_subject = subject_statistics(
        tables["encoding"], tables["best_layers"], tables["tmax"], tables["hierarchy"], settings, joint, targets
    )
    tests = group_from_subjects(per_subject, settings)
    identity = {"base_model": variant["base_model"], "variant": variant["variant"]}
    log.info("%d test rows (%d joint summary files)", len(tests), len(joint_paths))
    save_subject_stats(outputs.subjects, per_subject.assign(**identity))
    save_tests(outputs.tests, tests.assign(**identity))


def run_compare(*, inputs, outputs, params) -> None:
    """The compare rule: act vs grad and model against model, over one dataset's per-subject statistics."""
    from .compare import compare_models

    settings = params.compare
    per_subject = pd.concat([load_subject_stats(p) for p in inputs.subjects], ignore_index=True)
    table = compare_models(per_subject, int(settings["seed"]), int(settings["n_boot"]), float(settings["alpha"]))
    variants = per_subject.drop_duplicates("model").set_index("model")
    for side in ("a", "b"):
        for column in ("base_model", "variant"):
            source = variants[column] if column in variants.columns else pd.Series(dtype=str)
            table[f"{column}_{side}"] = table[f"model_{side}"].map(source).fillna("").astype(str)
    save_comparisons(outputs.comparisons, table)


def run_sensitivity(*, inputs, outputs, params) -> None:
    """The sensitivity rule: one dataset × model's tests under each open choice, one at a time."""
    from ..encoding.files import load_joint_summary
    from .sensitivity import sensitivity_table

    settings = params.sensitivity
    enc = load_subject_tables(inputs.encoding, "encoding")
    variants = {label: load_tests(path) for label, path in zip(settings["variant_labels"], inputs.variants)}
    joint_paths = list(inputs.joint)
    joint = pd.concat([load_joint_summary(p) for p in joint_paths], ignore_index=True) if joint_paths else None
    targets = _target_depths(inputs.target_depths)
    table = sensitivity_table(enc, settings["group"], settings["choices"], variants, joint, targets)
    save_sensitivity(outputs.sensitivity, table.assign(base_model=settings["model"]))


def run_calibration(*, inputs, outputs, params) -> None:
    """The calibration rule: type I error (shuffled, smooth_null) and power (backprop) of the tests over SNRs,
    under each per-subject null of `calibration.nulls`."""
    from ..brain.simulate import simulated_sensors
    from ..encoding.files import load_folds
    from ..encoding.folds import folds_from_table
    from ..features.files import load_features, load_layers, load_samples
    from ..figures.calibration import calibration_figures
    from .calibration import calibration_table, rejection_rates

    dataset = params.dataset
    settings = {k: getattr(params, k) for k in ("simulation", "calibration", "group", "encoding", "seed")}
    layers = load_layers(inputs.layers)
    depths = layers["depth"].to_numpy(np.float64)
    index = layers["layer_index"].to_numpy()
    plant = {s: [np.asarray(load_features(inputs.plant, s, k)) for k in index] for s in ("act", "grad")}
    features = {s: [np.asarray(load_features(inputs.features, s, k)) for k in index] for s in ("act", "grad")}
    folds = folds_from_table(load_folds(inputs.folds), load_samples(inputs.features)["image_id"].to_numpy())
    sensors = simulated_sensors(int(settings["calibration"]["n_sensors"]))
    table = calibration_table(plant, features, depths, folds, sensors, settings, dataset)
    save_calibration(outputs.calibration, table.assign(dataset=dataset))
    alpha = float(settings["group"]["alpha"])
    rates = rejection_rates(table, alpha)
    log.info("rejection rates:\n%s", rates.to_string())
    calibration_figures(rates, alpha, dataset, settings["calibration"], outputs.figure, outputs.nulls)


def run_tables(*, inputs, outputs, params, runtime: dict) -> None:
    """The tables rule: the run's contract tables, each checked against the contract, with provenance.

    The whole config goes into the tables' provenance through `runtime`, not params: settings that
    change no number (batch size, device, workers) must not rerun the tables.
    """
    from ..features.files import load_cka
    from .tables import provenance, run_table

    meta = provenance(runtime["config"], params.provenance["models"], params.provenance["seed"])
    parts = {
        kind: [load_subject_tables(inputs[kind], kind)] for kind in ("encoding", "best_layers", "tmax", "hierarchy")
    }
    parts["tests"] = [load_tests(p) for p in inputs.tests]
    parts["cka"] = [load_cka(p) for p in inputs.cka]
    parts["comparisons"] = [load_comparisons(p) for p in inputs.comparisons]
    parts["sensitivity"] = [load_sensitivity(p) for p in inputs.sensitivity]
    for name, frames in parts.items():
        save_run_table(outputs[name], run_table(name, frames), meta)
