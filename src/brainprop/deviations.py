"""Where brainprop's defaults depart from the reference study, why, and the config key that restores its choice.

One registry, `DEVIATIONS`, read by docs/deviations.md (a test checks that the page lists every
entry with its default), by the report (`brainprop.figures.report`) and by `brainprop summary`
(through the tables' provenance, `brainprop.stats.tables.provenance`). Each entry names a config
key, brainprop's default, the reference study's value (METHOD.md) and the reason;
`run_deviations(config)` lists the entries a validated config departs on. An entry whose key is
"" has no config key: no setting reproduces the paper there (the reason says why).
Additions beyond the paper (per-subject tests, controls, joint models, sensor groups) are not
departures: they leave the paper's rows as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

__all__ = ["DEVIATIONS", "DEVIATION_COLUMNS", "Deviation", "deviations_table", "run_deviations"]

DEVIATION_COLUMNS = ("key", "choice", "value", "paper", "why")


@dataclass(frozen=True)
class Deviation:
    """One place where a brainprop default departs from the reference study.

    key : the config key (`datasets.<name>.` keys apply to each dataset of `kinds`), or "".
    choice : what is chosen, in words.
    default : brainprop's default value.
    paper : the reference study's value; setting `key` to it restores the paper's choice.
    why : why brainprop's default differs.
    kinds : dataset kinds a `datasets.<name>.` key applies to; modality ("fmri", "meg") for a
        run-wide key that matters only when a dataset has that modality; () for every run.
    get : the value in one validated config (run-wide) or dataset entry (`datasets.<name>.` keys).
    matches : whether a value is the paper's choice (default: equal to `paper`).
    """

    key: str
    choice: str
    default: object
    paper: object
    why: str
    kinds: tuple[str, ...] = ()
    get: Callable[[dict], object] = lambda config: None
    matches: Callable[[object], bool] | None = None

    def is_paper(self, value: object) -> bool:
        """Whether `value` (read by `get`) is the reference study's choice."""
        if self.matches is not None:
            return bool(self.matches(value))
        norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
        return norm(value) == norm(self.paper)


_FMRI_KINDS = ("nsd", "nsd_algonauts", "things_fmri")
_MEG_KINDS = ("things_meg", "things_eeg2")
PAPER_HCP_ROIS = ("V1", "V2", "V3", "V4", "MT", "MST", "LO2", "PIT", "VMV2", "FFC", "TE2p", "44", "45", "IFSa", "IFSp")
PAPER_MEG_WINDOWS = {"80_130ms": [0.08, 0.13], "130_180ms": [0.13, 0.18], "500_550ms": [0.5, 0.55]}

DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "hierarchy.spatial_unit",
        "what the spatial score (S1a, S1b) correlates over",
        "roi",
        "target",
        "a Pearson over vertices weighs each ROI by its vertex count, and its per-point p is not valid "
        "(neighbouring vertices are not independent); over ROIs each region is one point. Both are in "
        "hierarchy.parquet (column unit) whichever is chosen",
        ("fmri",),
        lambda c: c["hierarchy"]["spatial_unit"],
    ),
    Deviation(
        "hierarchy.tmax_window",
        "the times T_max and the best layer per time point are taken over",
        [0.0, None],
        [None, None],
        "before image onset no response is driven by the image; on the paper's -0.5 s baseline a weak "
        "layer's noise can reach 95 % of its peak there and pull its T_max before onset",
        ("meg",),
        lambda c: list(c["hierarchy"]["tmax_window"]),
    ),
    Deviation(
        "encoding.group_folds",
        "outer folds grouped by the images' source",
        True,
        False,
        "images that share a source (crops of one photograph in the demo, one THINGS concept's images) "
        "would otherwise sit in train and test folds at once and inflate r; NSD images are their own groups",
        (),
        lambda c: c["encoding"]["group_folds"],
    ),
    Deviation(
        "datasets.<name>.nsd.rois",
        "NSD label files",
        None,
        ["HCP_MMP1"],
        "null reads Kastner2015, NSD's retinotopic atlas of visual cortex on fsaverage (25 ROIs), a "
        "generic start; the paper's ROIs are HCP-MMP1 areas from V1 to prefrontal cortex",
        ("nsd",),
        lambda ds: ds["nsd"]["rois"],
    ),
    Deviation(
        "datasets.<name>.nsd.labels",
        "ROIs kept from the label files",
        None,
        list(PAPER_HCP_ROIS),
        "null keeps every labelled ROI; the paper names V1, V2, MT, VMV2, FFC, 44, 45, IFSa and IFSp among its "
        "15, the other six (V3, V4, MST, LO2, PIT, TE2p) are brainprop's reading of 'posterior occipital to "
        "prefrontal'",
        ("nsd",),
        lambda ds: ds["nsd"]["labels"],
    ),
    Deviation(
        "datasets.<name>.roi_levels",
        "ROI levels of the fMRI E rows (where the signal predicts)",
        {},
        "early / intermediate / high / prefrontal levels of the 15 ROIs (config/paper_nsd.yaml)",
        "levels depend on the atlas, so there is no default; without them there are no fMRI E rows",
        ("nsd",),
        lambda ds: ds["roi_levels"],
        lambda levels: bool(levels),
    ),
    Deviation(
        "datasets.<name>.things_meg.route",
        "THINGS-MEG source: the published preprocessed epochs or the raw recordings",
        "epochs",
        "bids",
        "the published epochs are the derivative most users download and read in minutes, but they cover "
        "only -0.1 to 1.3 s (0.1-40 Hz at 200 Hz, then low-passed at 20 Hz and resampled to 30 Hz); the "
        "raw BIDS route gives the paper's 0.1-20 Hz, -0.5 to 3 s",
        ("things_meg",),
        lambda ds: ds["things_meg"]["route"],
    ),
    Deviation(
        "datasets.<name>.meg_windows",
        "MEG windows of the E rows",
        {},
        PAPER_MEG_WINDOWS,
        "windows depend on the epoch, so there is no default; without them there are no MEG E rows",
        ("things_meg",),
        lambda ds: ds["meg_windows"],
        lambda windows: sorted(map(list, windows.values())) == sorted(PAPER_MEG_WINDOWS.values()),
    ),
    Deviation(
        "",
        "the loss of self-supervised models (DINOv3, MAE, CLIP, SigLIP 2, OWL-ViT)",
        "self_distillation (a fixed, seeded prototype head)",
        "each model's training loss",
        "the public DINOv3 checkpoints ship without their DINO/iBOT heads (and CLIP, SigLIP 2 and OWL-ViT "
        "without a text side in timm), so no config rebuilds the training loss; self_distillation is a "
        "documented stand-in (docs/features.md, Losses)",
        (),
        lambda c: sorted(a for a, m in c["models"].items() if m["loss"] == "self_distillation"),
        lambda aliases: not aliases,
    ),
)


def _has(config: dict, kinds: tuple[str, ...]) -> list[tuple[str, dict]]:
    """(name, entry) of the datasets whose kind (or modality) is among `kinds`."""
    from .brain.datasets import modality

    out = []
    for name, ds in config["datasets"].items():
        kind = ds["kind"]
        modalities = {"fmri", "meg"} if kind == "simulated" else {modality(kind)}
        if kind in kinds or modalities & set(kinds):
            out.append((name, ds))
    return out


def run_deviations(config: dict) -> pd.DataFrame:
    """The entries of `DEVIATIONS` a validated config departs on, one row per key (and dataset).

    Columns `DEVIATION_COLUMNS`: key (with the dataset's name), choice, value (this run's), paper,
    why; values as text.
    """
    rows = []
    for dev in DEVIATIONS:
        if dev.key.startswith("datasets.<name>."):
            for name, ds in _has(config, dev.kinds):
                value = dev.get(ds)
                if not dev.is_paper(value):
                    rows.append((dev.key.replace("<name>", name), dev.choice, value, dev.paper, dev.why))
        elif not dev.kinds or _has(config, dev.kinds):
            value = dev.get(config)
            if not dev.is_paper(value):
                rows.append((dev.key, dev.choice, value, dev.paper, dev.why))
    table = pd.DataFrame(rows, columns=list(DEVIATION_COLUMNS))
    for column in ("value", "paper"):
        table[column] = table[column].map(_text)
    return table


def deviations_table() -> pd.DataFrame:
    """Every entry of `DEVIATIONS` with its default (the docs' table): key, choice, default, paper, why."""
    rows = [(d.key, d.choice, _text(d.default), _text(d.paper), d.why) for d in DEVIATIONS]
    return pd.DataFrame(rows, columns=["key", "choice", "default", "paper", "why"])


def _text(value: object) -> str:
    """A config value as the YAML reader writes it (null, true, [0.0, null])."""
    import json

    return value if isinstance(value, str) else json.dumps(value)
