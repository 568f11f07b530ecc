"""Entry points of the hierarchy stage's rules: one subject's (or every subject's) encoding rows, best layers, T_max,
scores and per-target depths.

`run_hierarchy(*, inputs, outputs, params)` (one subject) and `run_hierarchy_shared` (every subject
of a dataset whose fits are shared, in one job) read the encode rule's outputs through
`brainprop.encoding.files` and the subject's target table through `brainprop.brain.files`, and
writes its outputs through `brainprop.hierarchy.files`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..brain.files import load_targets
from ..encoding.files import load_score_counts, load_score_identity, load_summary, load_target_scores
from .files import save_subject_table
from .scores import subject_hierarchy, subject_target_depths

__all__ = ["run_hierarchy", "run_hierarchy_shared"]

log = logging.getLogger(__name__)


def _fmri_scores(summaries: Sequence[pd.DataFrame], scores: Sequence[str], targets: pd.DataFrame) -> pd.DataFrame:
    """Long-form r and encoding-null p of the subject's fMRI targets per signal × layer (summary i with scores i)."""
    if len(summaries) != len(scores):
        raise ValueError(
            f"{len(summaries)} summary files but {len(scores)} per-target score files; expected "
            "one per signal × layer, in the same order"
        )
    fmri = targets.loc[targets["modality"] == "fmri", "target"].to_numpy(dtype=np.int64)
    frames = []
    pairs = list(zip(summaries, scores)) if fmri.size else []  # an MEG-only subject reads no score file
    for summary, path in pairs:
        ident = summary[["signal", "layer_index", "depth"]].iloc[0]
        got = load_score_identity(path)
        if (got["signal"], int(got["layer_index"])) != (ident["signal"], int(ident["layer_index"])):
            raise ValueError(
                f"{path} holds the scores of {got['signal']} layer {got['layer_index']}, but its summary is of "
                f"{ident['signal']} layer {int(ident['layer_index'])}; expected the rule's inputs in the same order"
            )
        scored = load_target_scores(path).set_index("target")
        frames.append(
            pd.DataFrame(
                {
                    "signal": ident["signal"],
                    "layer_index": int(ident["layer_index"]),
                    "depth": float(ident["depth"]),
                    "target": fmri,
                    "r": scored["r"].reindex(fmri).to_numpy(dtype=np.float64),
                    "p": scored["p"].reindex(fmri).to_numpy(dtype=np.float64),
                }
            )
        )
    columns = ["signal", "layer_index", "depth", "target", "r", "p"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def run_hierarchy(*, inputs, outputs, params) -> None:
    """The hierarchy rule: one subject's encoding rows, best layers, T_max, scores and per-target depths."""
    paths = {kind: getattr(outputs, kind) for kind in _OUTPUTS}
    _subject_hierarchy(list(inputs.summaries), list(inputs.scores), inputs.targets, paths, params.hierarchy)


def run_hierarchy_shared(*, inputs, outputs, params) -> None:
    """The hierarchy_shared rule: `run_hierarchy` of every subject of a dataset, in one job.

    `inputs.summaries` and `.scores` are subject-major (each subject's signal × layer fits in the
    order of `run_hierarchy`), `inputs.targets` and every output list follow `params.subjects`.
    """
    subjects = list(params.subjects)
    n = len(inputs.summaries) // max(1, len(subjects))
    if n * len(subjects) != len(inputs.summaries) or len(inputs.scores) != len(inputs.summaries):
        raise ValueError(
            f"{len(inputs.summaries)} summaries and {len(inputs.scores)} per-target score files for "
            f"{len(subjects)} subjects; expected the same number of fits for every subject"
        )
    for i, subject in enumerate(subjects):
        paths = {kind: getattr(outputs, kind)[i] for kind in _OUTPUTS}
        fits = slice(i * n, (i + 1) * n)
        log.info("subject %s", subject)
        _subject_hierarchy(inputs.summaries[fits], inputs.scores[fits], inputs.targets[i], paths, params.hierarchy)


# The rule's outputs, one file each per subject.
_OUTPUTS = ("encoding", "best_layers", "tmax", "hierarchy", "target_depths")


def _subject_hierarchy(
    summary_paths: Sequence[str], score_paths: Sequence[str], targets_path: str, outputs: dict, settings: dict
) -> None:
    """One subject's encoding rows, best layers, T_max, scores and per-target depths, written to `outputs`."""
    summaries = [load_summary(p) for p in summary_paths]
    enc = pd.concat(summaries, ignore_index=True)
    identity = enc[["dataset", "model", "subject"]].iloc[0].to_dict()
    targets = load_targets(targets_path)
    long = _fmri_scores(summaries, score_paths, targets)
    threshold = None
    if len(long):
        threshold = {"n_images": int(load_score_counts(score_paths[0])["n_images"]), "fdr": settings["map_fdr"]}
    depths = subject_target_depths(long, identity, settings["exclude"], targets, threshold)
    best, tm, hier = subject_hierarchy(
        enc,
        settings["atlas"],
        settings["threshold"],
        settings["min_count"],
        settings["exclude"],
        targets=depths if len(long) else None,
        window=settings["tmax_window"],
    )
    log.info(
        "scores and exclusions: %s",
        hier[["signal", "score", "unit", "roi", "n_used", "n_excluded"]].to_dict("records"),
    )
    save_subject_table(outputs["encoding"], enc)
    save_subject_table(outputs["best_layers"], best)
    save_subject_table(outputs["tmax"], tm)
    save_subject_table(outputs["hierarchy"], hier)
    counts = {
        signal: f"{int(part['excluded'].sum())} excluded, {int(part['passes'].sum())} pass q <= {settings['map_fdr']}"
        f" of {len(part)}"
        for signal, part in depths.groupby("signal")
    }
    source = "the encoding null's p" if len(long) and long["p"].notna().any() else "the t-test of r"
    log.info("per-target depths (exclude %s; map threshold from %s): %s", settings["exclude"], source, counts)
    save_subject_table(outputs["target_depths"], depths)
