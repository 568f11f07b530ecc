"""Entry points of the encoding stage's rules: folds, encode, encode_shared and joint.

Each `run_<rule>(*, inputs, outputs, params)` reads the rule's declared inputs through the
files modules of the stages that wrote them (`brainprop.features.files`, `brainprop.brain.files`,
`brainprop.stimuli.files`) and writes its outputs through `brainprop.encoding.files`.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd

from ..brain.files import load_samples, load_targets, load_y
from ..config import alphas as penalty_grid
from ..features import files as features
from ..io import forcerun_hint
from ._ridge import TargetNull
from .files import load_folds, save_folds, save_joint_summary, save_summary, save_target_scores
from .folds import folds_from_table, folds_table, subject_rows

__all__ = ["run_encode", "run_encode_shared", "run_folds", "run_joint", "run_joint_shared"]

log = logging.getLogger(__name__)


def _backend(params: dict) -> dict:
    """The array backend of the fits from the `encoding` config entry."""
    return {
        "backend": params.get("backend", "numpy"),
        "device": params.get("device", "auto"),
        "dtype": params.get("dtype"),
    }


def _target_null(params: dict, subject: str) -> TargetNull | None:
    """The subject's per-target null from `params.null` (permutations, combine, seed); None for 0 permutations."""
    n = int(params["permutations"])
    # Seeded by the run's seed and the subject alone: every model, layer and signal of a subject
    # sees the same permutations, as the hierarchy's comparisons across layers need.
    seed = (int(params["seed"]), zlib.crc32(subject.encode()))
    return TargetNull(n, seed, params["combine"]) if n else None


def _subject_nuisance(features_dir: str, samples_path: str, names: list[str], layer_index: int) -> np.ndarray | None:
    """The `encoding.nuisance` regressors of one layer's fit in a subject's image order (None when none)."""
    if not names:
        return None
    from .nuisance import nuisance_matrix

    table = features.load_nuisance(features_dir)
    image_ids = load_samples(samples_path)["image_id"].to_numpy()
    rows = subject_rows(table["image_id"].to_numpy(), image_ids, features_dir, samples_path)
    return nuisance_matrix(table.iloc[rows].reset_index(drop=True), names, layer_index, str(features_dir))


def _subject_features(
    features_dir: str, samples_path: str, signal: str, layer_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """One layer's features in a subject's image order, and that order (image ids)."""
    feature_ids = features.load_samples(features_dir)["image_id"].to_numpy()
    image_ids = load_samples(samples_path)["image_id"].to_numpy()
    rows = subject_rows(feature_ids, image_ids, features_dir, samples_path)
    if len(rows) < len(feature_ids):
        log.info("subject saw %d of the %d images with features", len(rows), len(feature_ids))
    return np.asarray(features.load_features(features_dir, signal, layer_index))[rows], image_ids


def _save_fit(
    paths: tuple[str, str], fit: tuple[pd.DataFrame, pd.DataFrame, dict], identity: dict, layers: pd.DataFrame, k: int
) -> None:
    """Write one subject's per-target scores and summary rows (identity, then layer columns)."""
    per_target, summary, counts = fit
    layer = features.layer_row(layers, k)
    summary = summary.assign(
        **identity, layer=str(layer["layer"]), layer_index=np.int64(k), depth=float(layer["depth"])
    )
    save_target_scores(paths[0], per_target, {**identity, "layer_index": k}, counts)
    save_summary(paths[1], summary)


@contextmanager
def _named_rows(y_path: str, image_ids: np.ndarray) -> Iterator[None]:
    """Turn a NoUsableTargetsError into one that names the subject's file, the images and the recovery."""
    from .encode import NoUsableTargetsError

    try:
        yield
    except NoUsableTargetsError as err:
        ids = [str(image_ids[r]) for r in err.rows[:10]]
        named = f" (image ids {ids})" if ids else ""
        raise ValueError(
            f"{y_path}: {err}{named}. The brain rule wrote this file, and it refuses such rows when it reads a "
            f"dataset; {forcerun_hint(y_path)}"
        ) from err


def run_folds(*, inputs, outputs, params) -> None:
    """The folds rule: a dataset's outer folds from its image set's manifest."""
    from ..stimuli.files import load_manifest

    try:
        folds = folds_table(load_manifest(inputs.manifest), params.folds, params.seed, params.group_folds)
    except ValueError as err:
        raise ValueError(f"{inputs.manifest}: {err}") from err
    log.info("images per fold: %s", folds["fold"].value_counts().sort_index().to_dict())
    save_folds(outputs.folds, folds)


def run_encode(*, inputs, outputs, params) -> None:
    """The encode rule: one layer's features against one subject's targets.

    `params.identity` names the fit (dataset, model, timm_name, signal, subject), `params.layer`
    its layer index; `params.encoding` is the `encoding` config entry, whose optional `backend`
    ("numpy" default, or "torch"), `device` ("auto") and `dtype` choose the array backend.
    """
    from .encode import encode

    identity, k, settings = dict(params.identity), int(params.layer), params.encoding
    X, image_ids = _subject_features(inputs.features, inputs.samples, identity["signal"], k)
    folds = folds_from_table(load_folds(inputs.folds), image_ids)
    nuisance = _subject_nuisance(inputs.features, inputs.samples, list(settings.get("nuisance") or []), k)
    with _named_rows(inputs.Y, image_ids):
        fit = encode(
            X,
            load_y(inputs.Y, inputs.samples),
            load_targets(inputs.targets),
            folds,
            penalty_grid(settings),
            **_backend(settings),
            nuisance=nuisance,
            null=_target_null(params.null, identity["subject"]),
            fdr=float(params.null["fdr"]),
        )
    log.info("backend: %s; nuisance: %s; counts: %s", _backend(settings), settings.get("nuisance") or [], fit[2])
    _save_fit((outputs.scores, outputs.summary), fit, identity, features.load_layers(inputs.layers), k)


def run_encode_shared(*, inputs, outputs, params) -> None:
    """The encode_shared rule: one layer's features against every subject of a dataset.

    `inputs.Y`, `.targets`, `.samples` and `outputs.scores`, `.summary` are lists in
    `params.subjects` order. Subjects who saw the same images in the same order share one
    decomposition per fold (`encode_shared`, the same numbers as separate fits); otherwise each
    is fitted on its own (logged).
    """
    from .encode import encode, encode_shared

    identity, k, settings, subjects = dict(params.identity), int(params.layer), params.encoding, params.subjects
    alphas, backend = penalty_grid(settings), _backend(settings)
    names = list(settings.get("nuisance") or [])
    nulls = [_target_null(params.null, subject) for subject in subjects]
    fdr = float(params.null["fdr"])
    orders = [load_samples(path)["image_id"].to_numpy() for path in inputs.samples]
    table = load_folds(inputs.folds)
    targets = [load_targets(path) for path in inputs.targets]
    if all(np.array_equal(orders[0], order) for order in orders[1:]):
        X, image_ids = _subject_features(inputs.features, inputs.samples[0], identity["signal"], k)
        Ys = [load_y(path, samples) for path, samples in zip(inputs.Y, inputs.samples)]
        nuisance = _subject_nuisance(inputs.features, inputs.samples[0], names, k)
        folds = folds_from_table(table, image_ids)
        fits = encode_shared(X, Ys, targets, folds, alphas, **backend, nuisance=nuisance, nulls=nulls, fdr=fdr)
        log.info(
            "%d subjects share one decomposition per fold (%d images in the same order)", len(subjects), len(image_ids)
        )
    else:
        differ = [s for s, order in zip(subjects, orders) if not np.array_equal(orders[0], order)]
        log.warning(
            "subjects %s saw other images or another order than %s: each subject is fitted on its own",
            differ,
            subjects[0],
        )
        fits = []
        for samples, Y, target_table, null in zip(inputs.samples, inputs.Y, targets, nulls):
            X, image_ids = _subject_features(inputs.features, samples, identity["signal"], k)
            nuisance = _subject_nuisance(inputs.features, samples, names, k)
            folds = folds_from_table(table, image_ids)
            fit = encode(
                X, load_y(Y, samples), target_table, folds, alphas, **backend, nuisance=nuisance, null=null, fdr=fdr
            )
            fits.append(fit)
    layers = features.load_layers(inputs.layers)
    for subject, fit, scores, summary in zip(subjects, fits, outputs.scores, outputs.summary):
        log.info("%s: backend: %s; counts: %s", subject, backend, fit[2])
        _save_fit((scores, summary), fit, {**identity, "subject": subject}, layers, k)


def _stack_blocks(features_dir: str, layers: pd.DataFrame, rows: np.ndarray) -> list[np.ndarray]:
    """The forward stack in a subject's image order: every selected layer's activations, then the model output."""
    blocks = [np.asarray(features.load_features(features_dir, "act", int(k)))[rows] for k in layers["layer_index"]]
    return blocks + [np.asarray(features.load_output(features_dir))[rows]]


def _joint_options(features_dir: str, samples_path: str, layers: pd.DataFrame, k: int, settings: dict) -> dict:
    """`joint_encode`'s references, stack (in the subject's image order), width and nuisances from `params.joint`."""
    references = list(settings.get("references") or ["same_layer"])
    image_ids = load_samples(samples_path)["image_id"].to_numpy()
    feature_ids = features.load_samples(features_dir)["image_id"].to_numpy()
    rows = subject_rows(feature_ids, image_ids, features_dir, samples_path)
    return {
        "references": references,
        "stack": _stack_blocks(features_dir, layers, rows) if "stack" in references else None,
        "width": int(settings.get("width", 64)),
        "nuisance": _subject_nuisance(features_dir, samples_path, list(settings.get("nuisance") or []), k),
    }


def _joint_features(features_dir: str, samples_path: str, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One layer's activations and gradients in a subject's image order, and that order (image ids)."""
    from .joint import JOINT_SIGNALS

    image_ids = load_samples(samples_path)["image_id"].to_numpy()
    feature_ids = features.load_samples(features_dir)["image_id"].to_numpy()
    rows = subject_rows(feature_ids, image_ids, features_dir, samples_path)
    X_act, X_grad = (np.asarray(features.load_features(features_dir, s, k))[rows] for s in JOINT_SIGNALS)
    return X_act, X_grad, image_ids


def _subject_targets(Y_path: str, targets_path: str, samples_path: str) -> tuple[np.ndarray, pd.DataFrame]:
    """A subject's responses (checked against their recorded checksum) and target table, checked against each other."""
    Y, targets = load_y(Y_path, samples_path), load_targets(targets_path)
    if len(targets) != Y.shape[1]:
        raise ValueError(f"{targets_path} has {len(targets)} rows but {Y_path} has {Y.shape[1]} columns")
    return Y, targets


def _save_joint(
    path: str, fit: tuple[pd.DataFrame, dict], targets: pd.DataFrame, identity: dict, layer: pd.Series
) -> None:
    """Write one subject's joint-model summary rows (identity, then layer columns)."""
    from .joint import summarize_joint

    per_target, counts = fit
    log.info("joint fit of %s: %s", identity, counts)
    per_target = per_target.copy()
    # one block of rows per reference, each in the target table's order
    per_target.insert(0, "target", np.tile(targets["target"].to_numpy(dtype=np.int64), len(per_target) // len(targets)))
    summary = summarize_joint(per_target, targets).assign(
        **identity, layer=str(layer["layer"]), layer_index=np.int64(layer.name), depth=float(layer["depth"])
    )
    save_joint_summary(path, summary, counts)


def run_joint(*, inputs, outputs, params) -> None:
    """The joint rule: one layer's gradients with a reference against one subject's targets (banded ridge).

    `params.identity` names the fit (dataset, model, subject), `params.layer` its layer index,
    `params.joint` has `alphas` (the per-band grid spec `{log10_min, log10_max, n}`),
    `references` (the configured `joint.reference` first, then the sensitivity table's:
    `stack` = every selected layer's activations and the model output, `same_layer`), `width`
    (the stack's components per training split) and `nuisance` (`encoding.nuisance` names).
    """
    from .joint import joint_encode

    identity, k = dict(params.identity), int(params.layer)
    layers = features.load_layers(inputs.layers)
    X_act, X_grad, image_ids = _joint_features(inputs.features, inputs.samples, k)
    options = _joint_options(inputs.features, inputs.samples, layers, k, params.joint)
    Y, targets = _subject_targets(inputs.Y, inputs.targets, inputs.samples)
    folds = folds_from_table(load_folds(inputs.folds), image_ids)
    fit = joint_encode(X_act, X_grad, Y, folds, penalty_grid(params.joint), **options)
    _save_joint(outputs.summary, fit, targets, identity, features.layer_row(layers, k))


def run_joint_shared(*, inputs, outputs, params) -> None:
    """The joint_shared rule: one layer's activations and gradients against every subject of a dataset.

    As `run_encode_shared`: subjects who saw the same images in the same order go through one
    banded fit (`joint_encode_shared`, the same numbers as separate fits); otherwise each is
    fitted on its own (logged).
    """
    from .joint import joint_encode, joint_encode_shared

    identity, k, subjects = dict(params.identity), int(params.layer), params.subjects
    alphas, table = penalty_grid(params.joint), load_folds(inputs.folds)
    layers = features.load_layers(inputs.layers)
    orders = [load_samples(path)["image_id"].to_numpy() for path in inputs.samples]
    data = [_subject_targets(Y, t, s) for Y, t, s in zip(inputs.Y, inputs.targets, inputs.samples)]
    if all(np.array_equal(orders[0], order) for order in orders[1:]):
        X_act, X_grad, image_ids = _joint_features(inputs.features, inputs.samples[0], k)
        folds = folds_from_table(table, image_ids)
        options = _joint_options(inputs.features, inputs.samples[0], layers, k, params.joint)
        fits = joint_encode_shared(X_act, X_grad, [Y for Y, _ in data], folds, alphas, **options)
        log.info("%d subjects in one banded fit per fold (%d images in the same order)", len(subjects), len(image_ids))
    else:
        differ = [s for s, order in zip(subjects, orders) if not np.array_equal(orders[0], order)]
        log.warning(
            "subjects %s saw other images or another order than %s: each subject is fitted on its own",
            differ,
            subjects[0],
        )
        fits = []
        for samples, (Y, _) in zip(inputs.samples, data):
            X_act, X_grad, image_ids = _joint_features(inputs.features, samples, k)
            options = _joint_options(inputs.features, samples, layers, k, params.joint)
            fits.append(joint_encode(X_act, X_grad, Y, folds_from_table(table, image_ids), alphas, **options))
    layer = features.layer_row(layers, k)
    for subject, fit, (_, targets), path in zip(subjects, fits, data, outputs.summary):
        _save_joint(path, fit, targets, {**identity, "subject": subject}, layer)
