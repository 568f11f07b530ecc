"""Entry points of the brain stage's rules: check, brain (real or simulated subjects) and truth."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..features.files import load_features, load_layers, load_samples
from ..io import save_array, write_table

log = logging.getLogger(__name__)


def _plant_features(plant_dir: str | Path, n_layers: int, error: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The source model's activations and its `error` signal (grad, fa or dfa) per layer."""
    act = [np.asarray(load_features(plant_dir, "act", k)) for k in range(n_layers)]
    err = [np.asarray(load_features(plant_dir, error, k)) for k in range(n_layers)]
    return act, err


def run_simulated_subject(
    plant_dir: str | Path, layers_path: str | Path, outputs, simulation: dict, seed: int, dataset: str, subject: str
) -> None:
    """Entry point of the brain rule for a simulated dataset: write one subject's folder."""
    from .simulate import error_signal, simulate_subject

    layers = load_layers(layers_path)
    act, grad = _plant_features(plant_dir, len(layers), error_signal(simulation["scenario"]))
    Y, targets = simulate_subject(act, grad, layers["depth"].to_numpy(), simulation, seed, dataset, subject)
    samples = load_samples(plant_dir)
    log.info(
        "%s %s: %d images x %d targets (%s)", dataset, subject, *Y.shape, targets["modality"].value_counts().to_dict()
    )
    save_array(outputs.Y, Y)
    write_table(outputs.targets, targets)
    write_table(outputs.samples, samples)


def simulated_truth(
    layers_path: str | Path, simulation: dict, subjects: list[str], seed: int, dataset: str
) -> pd.DataFrame:
    """The planted truth table of a simulated dataset (METHOD.md §7)."""
    from .simulate import planted_truth

    depths = load_layers(layers_path)["depth"].to_numpy()
    return planted_truth(
        dataset, subjects, simulation["source_model"], simulation["scenario"], depths, simulation["meg"], seed
    )
