"""The reference study one config away: the presets' choices, `brainprop check` and `plan` on them,
the deviations table (registry, docs and run), and the verdict rules of `brainprop summary`."""

from __future__ import annotations

import copy
import os
import re
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import yaml
from fixtures.datasets import write_nsd, write_things_meg_bids

from brainprop.cli import main
from brainprop.config import load_config, validate_config
from brainprop.deviations import DEVIATIONS, deviations_table, run_deviations
from brainprop.stats.summary import findings_table, format_summary, verdicts

ROOT = Path(__file__).resolve().parents[1]
NSD, MEG = ROOT / "config" / "paper_nsd.yaml", ROOT / "config" / "paper_things_meg.yaml"
# METHOD.md §1 / config/models.yaml: DINOv3 and the seven comparison families.
PAPER_FAMILIES = {"dinov3", "resnet", "convnext", "vit_mae", "vit", "clip", "siglip2", "owlvit"}
NAMED_ROIS = {"V1", "V2", "MT", "VMV2", "FFC", "44", "45", "IFSa", "IFSp"}  # the ones the paper names


@pytest.mark.parametrize("path", [NSD, MEG])
def test_presets_state_the_papers_choices(path):
    config = load_config(path, check_models=False)
    assert {m["family"] for m in config["models"].values()} == PAPER_FAMILIES
    assert all(m["layers"] == {"n": 22} and m["signals"] == ["act", "grad"] for m in config["models"].values())
    dinov3 = config["models"]["dinov3_vit7b16"]
    assert dinov3["name"] == "vit_7b_patch16_dinov3.lvd1689m" and dinov3["weights"] == "pretrained"
    owl = config["models"]["owlvit_b32"]
    assert owl["source"] == "python" and owl["name"].endswith("example_factory:owlvit_image_encoder")
    assert config["encoding"]["folds"] == 5 and not config["encoding"]["group_folds"]
    assert config["encoding"]["alphas"] == {"log10_min": 0, "log10_max": 8, "n": 10}
    assert config["hierarchy"]["tmax_threshold"] == 0.95
    (ds,) = config["datasets"].values()
    if ds["kind"] == "nsd":
        labels = ds["nsd"]["labels"]
        assert ds["nsd"]["rois"] == ["HCP_MMP1"] and len(labels) == 15 and set(labels) >= NAMED_ROIS
        assert sorted(r for level in ds["roi_levels"].values() for r in level) == sorted(labels)
        assert config["hierarchy"]["spatial_unit"] == "target" and ds["nsd"]["space"] == "fsaverage"
        assert len(ds["subjects"]) == 8
    else:
        opts = ds["things_meg"]
        assert opts["route"] == "bids" and (opts["bids"]["highpass"], opts["lowpass"], opts["sfreq"]) == (0.1, 20, 30)
        assert (opts["bids"]["tmin"], opts["bids"]["tmax"]) == (-0.5, 3.0) and opts["zscore"]
        assert sorted(ds["meg_windows"].values()) == [[0.08, 0.13], [0.13, 0.18], [0.5, 0.55]]
        assert len(ds["subjects"]) == 4


def test_presets_depart_from_the_paper_only_where_documented():
    nsd, meg = (run_deviations(load_config(p, check_models=False)) for p in (NSD, MEG))
    assert nsd["key"].tolist() == [""]  # the training losses, which no key restores
    assert meg["key"].tolist() == ["hierarchy.tmax_window", ""]
    demo = run_deviations(load_config(ROOT / "config" / "nsd.yaml", check_models=False))
    assert {"hierarchy.spatial_unit", "datasets.nsd.nsd.rois", "datasets.nsd.roi_levels"} <= set(demo["key"])
    things = run_deviations(load_config(ROOT / "config" / "things_meg.yaml", check_models=False))
    assert {"datasets.things_meg.things_meg.route", "datasets.things_meg.meg_windows"} <= set(things["key"])


def test_every_deviation_is_in_the_docs_with_its_default():
    from brainprop.config import _schema

    page = (ROOT / "docs" / "deviations.md").read_text()
    for row in deviations_table().itertuples():
        assert f"`{row.key}`" in page if row.key else "(no config key)" in page, row.key
        assert f"`{row.default}`" in page if row.key else True, (row.key, row.default)
    schema = _schema()["properties"]
    assert schema["hierarchy"]["properties"]["spatial_unit"]["default"] == DEVIATIONS[0].default
    assert schema["hierarchy"]["properties"]["tmax_window"]["default"] == DEVIATIONS[1].default
    assert schema["encoding"]["properties"]["group_folds"]["default"] == DEVIATIONS[2].default


def _fixture_preset(path: Path, tmp: Path) -> Path:
    """A preset with its root (and subjects, sessions, images, FIF) pointed at a fixture root."""
    config = yaml.safe_load(path.read_text())
    ((name, ds),) = config["datasets"].items()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if ds["kind"] == "nsd":
            write_nsd(tmp / "root")
            ds |= {"root": str(tmp / "root"), "subjects": ["subj01"]}
            ds["nsd"]["sessions"] = [1, 2]
        else:
            write_things_meg_bids(tmp / "root")
            ds |= {"root": str(tmp / "root"), "subjects": ["P1"]}
            ds["things_meg"] |= {"images": "object_images"}
            ds["things_meg"]["bids"]["extension"] = ".fif"
    out = tmp / path.name
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


@pytest.mark.parametrize("path", [NSD, MEG])
def test_presets_pass_check_on_fixture_roots(path, tmp_path, capsys):
    preset = _fixture_preset(path, tmp_path)
    assert main(["check", "--config", str(preset)]) == 0, capsys.readouterr().out
    printed = capsys.readouterr().out
    assert "every file found as expected" in printed
    if "nsd" in path.name:
        assert "all 15 of nsd.labels" in printed
    config = yaml.safe_load(preset.read_text())
    (ds,) = config["datasets"].values()
    if ds["kind"] == "nsd":  # a label no table holds is named by the check
        ds["nsd"]["labels"] = [*ds["nsd"]["labels"], "NotAnArea"]
        preset.write_text(yaml.safe_dump(config, sort_keys=False))
        assert main(["check", "--config", str(preset)]) == 1
        assert "nsd.labels ['NotAnArea'] are in none of these tables" in capsys.readouterr().out


def test_presets_plan(tmp_path):
    """Both presets plan; to stay fast, with two of their models (a timm CNN and OWL-ViT through the python
    source), whose layers resolve on the meta device (all 8 take about 9 s of CPU: README, "The paper's setup")."""
    from brainprop.plan import plan_run

    for path in (NSD, MEG):
        config = yaml.safe_load(path.read_text())
        config["models"] = {k: config["models"][k] for k in ("resnet50", "owlvit_b32")}
        plan = plan_run(validate_config(copy.deepcopy(config)))
        layers = {m: len(t) for m, t in plan.layers.items()}
        assert layers["owlvit_b32"] == 12 and layers["resnet50"] == 16  # every block when a model has fewer than 22
        ((name, ds),) = config["datasets"].items()
        # one hierarchy job per subject, or one for every subject where the fits are shared (THINGS-MEG)
        shared = plan.jobs.get(f"hierarchy_shared_{name}", 0)
        per_subject = plan.jobs.get("hierarchy", 0) // len(ds["subjects"]) + shared
        assert per_subject == len(plan.layers)  # the two models and their control copies
        assert plan.total_feature_bytes > 0


def _tests_row(**over) -> dict:
    row = {"dataset": "d", "modality": "meg", "model": "m", "signal": "grad", "test": "T1", "level": "",
           "measure": "", "method": "wilcoxon", "alternative": "less", "effect": -0.5, "ci_low": -0.8,
           "ci_high": -0.2, "p": 0.01, "p_min": 0.004, "p_fdr": 0.02, "n_subjects": 8,
           "n_significant_subjects": 6}  # fmt: skip
    return row | over


def _forward(modality: str, test: str, significant: bool) -> dict:
    p = 0.01 if significant else 0.5
    return _tests_row(signal="act", modality=modality, test=test, alternative="greater", p=p, p_fdr=p)


def test_verdict_rules():
    forward = [_forward("meg", "T1", True), _forward("fmri", "S1a", True)]
    greater = {"alternative": "greater", "effect": 0.5, "ci_low": 0.2, "ci_high": 0.8}
    supported = [
        _tests_row(),
        _tests_row(test="T2", **greater, n_significant_subjects=-1),
        _tests_row(test="S1a", modality="fmri", **greater),
        _tests_row(test="S1b", modality="fmri", **greater),
    ]
    table = pd.DataFrame(forward + supported)
    assert verdicts(table)["verdict"].tolist() == ["supported"]
    # One test whose interval lies wholly on the other side: rejected.
    against = copy.deepcopy(supported)
    against[2] |= {"effect": -0.4, "ci_low": -0.6, "ci_high": -0.1, "p_fdr": 0.9}
    assert verdicts(pd.DataFrame(forward + against))["verdict"].tolist() == ["rejected"]
    # Not significant, interval across zero: undecided.
    unclear = copy.deepcopy(supported)
    unclear[0] |= {"p_fdr": 0.3, "ci_high": 0.1}
    assert verdicts(pd.DataFrame(forward + unclear))["verdict"].tolist() == ["undecided"]
    # 4 subjects: p_min 1/16 cannot reach 0.05, so the subjects' own tests decide (T2, without one, cannot).
    few = [r | {"n_subjects": 4, "p_min": 0.0625, "p": 0.0625, "p_fdr": 0.0625} for r in supported]
    few[0] |= {"n_significant_subjects": 3}
    few = [r | {"n_significant_subjects": 3} if r["test"] != "T2" else r for r in few]
    v = verdicts(pd.DataFrame(forward + few)).iloc[0]
    assert v["verdict"] == "undecided" and "neither: T2" in v["reason"]
    # The activations show no MEG hierarchy: T1 and T2 are set aside.
    flat = [_forward("meg", "T1", False), _forward("fmri", "S1a", True)]
    v = verdicts(pd.DataFrame(flat + supported)).iloc[0]
    assert v["verdict"] == "supported" and "set aside: T1, T2" in v["reason"]
    text = format_summary(pd.DataFrame(forward + supported), 0.05)
    assert "backprop signature: SUPPORTED" in text
    findings = findings_table(pd.DataFrame(forward + supported))
    assert findings.loc[findings["test"] == "T2", "prevalence"].tolist() == ["-"]
    assert re.search(r"6/8 subjects significant, null wilcoxon", text)
    assert np.isfinite(findings["effect"]).all()
