"""The workflow on one model per source (tests/configs/tiny_sources.yaml): layers, extract (with the
fa and dfa signals and a shuffled-loss control), cka and `brainprop plan` treat every source alike."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, snakemake

from brainprop.config import load_config
from brainprop.features.files import load_features, load_layers
from brainprop.plan import plan_run

CONFIG = ROOT / "tests" / "configs" / "tiny_sources.yaml"
MODELS = ("lite0", "mobilenet", "mobilenet__shuffled_loss", "tiny")


@pytest.mark.workflow
def test_every_source_runs_through_layers_extract_and_cka(tmp_path, trained_weights):
    out = "results/tiny_sources/features"
    targets = [f"{out}/{m}/demo/cka.parquet" for m in MODELS]
    done = snakemake(tmp_path, CONFIG, "--rerun-incomplete", *targets)  # a flag ends --configfile
    assert done.returncode == 0, done.stderr[-5000:]
    plan = plan_run(load_config(CONFIG))
    for model in MODELS:
        folder = tmp_path / out / model / "demo" / "extract"
        layers = load_layers(tmp_path / out / model / "layers.parquet")
        assert list(layers["layer"]) == list(plan.layers[model]["layer"])
        signals = sorted(p.name for p in folder.iterdir() if p.is_dir())
        written = sum(np.load(p, mmap_mode="r").nbytes for p in folder.rglob("*.npy"))
        assert plan.feature_bytes[(model, "demo")] == written > 0, model
        for signal in signals:
            for k, dim in zip(layers["layer_index"], layers["dim"]):
                x = load_features(folder, signal, int(k))
                assert x.shape == (24, dim) and np.isfinite(x).all() and np.ptp(x, axis=0).any(), (model, signal, k)
        cka = pd.read_parquet(tmp_path / out / model / "demo" / "cka.parquet")
        assert set(cka["signal"]) == set(signals)
    assert sorted(p.name for p in (tmp_path / out / "lite0" / "demo" / "extract").iterdir() if p.is_dir()) == [
        "act",
        "dfa",
        "fa",
        "grad",
    ]
    # The shuffled-loss control of a trained network changes its gradients (its labels differ).
    own = load_features(tmp_path / out / "mobilenet" / "demo" / "extract", "grad", 0)
    shuffled = load_features(tmp_path / out / "mobilenet__shuffled_loss" / "demo" / "extract", "grad", 0)
    assert not np.allclose(own, shuffled)
