"""Entry point of the hierarchy stage's rule: one subject's encoding rows, best layers, T_max, scores, depths.

`run_hierarchy(*, inputs, outputs, params)` reads the encode rule's outputs through
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

__all__ = ["run_hierarchy"]

log = logging.getLogger(__name__)


def _fmri_scores(summaries: Sequence[pd.DataFrame], scores: Sequence[str], targets: pd.DataFrame) -> pd.DataFrame:
    """Long-form r of the subject's fMRI targets per signal × layer (summary i belongs with scores i)."""
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
        r = load_target_scores(path).set_index("target")["r"]
        frames.append(
            pd.DataFrame(
                {
                    "signal": ident["signal"],
                    "layer_index": int(ident["layer_index"]),
                    "depth": float(ident["depth"]),
                    "target": fmri,
                    "r": r.reindex(fmri).to_numpy(dtype=np.float64),
                }
            )
        )
    columns = ["signal", "layer_index", "depth", "target", "r"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def run_hierarchy(*, inputs, outputs, params) -> None:
    """The hierarchy rule: one subject's encoding rows, best layers, T_max, scores and per-target depths."""
    settings = params.hierarchy
    summaries = [load_summary(p) for p in inputs.summaries]
    enc = pd.concat(summaries, ignore_index=True)
    identity = enc[["dataset", "model", "subject"]].iloc[0].to_dict()
    targets = load_targets(inputs.targets)
    long = _fmri_scores(summaries, inputs.scores, targets)
    threshold = None
    if len(long):
        threshold = {"n_images": int(load_score_counts(inputs.scores[0])["n_images"]), "fdr": settings["map_fdr"]}
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
    save_subject_table(outputs.encoding, enc)
    save_subject_table(outputs.best_layers, best)
    save_subject_table(outputs.tmax, tm)
    save_subject_table(outputs.hierarchy, hier)
    counts = {
        signal: f"{int(part['excluded'].sum())} excluded, {int(part['passes'].sum())} pass q <= {settings['map_fdr']}"
        f" of {len(part)}"
        for signal, part in depths.groupby("signal")
    }
    log.info("per-target depths (exclude %s; map threshold): %s", settings["exclude"], counts)
    save_subject_table(outputs.target_depths, depths)
