"""Tests of the simulated subjects: planted truth, determinism, noise ceiling, recovery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainprop.brain import simulate as S
from brainprop.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DEMO = load_config(ROOT / "config" / "config.yaml", check_models=False)
SOURCE = DEMO["models"][DEMO["datasets"]["sim_backprop"]["simulation"]["source_model"]]
DEPTHS = np.linspace(0, 1, SOURCE["layers"]["n"])  # the demo source model's layers
DEFAULTS = S.params_from_config(DEMO["datasets"]["sim_backprop"])
MEG = DEFAULTS["meg"]


def _params(scenario: str = "backprop", **over) -> dict:
    params = dict(DEFAULTS, scenario=scenario, meg=dict(MEG))
    params.update(over)
    return params


def _sensors(n: int = 30) -> pd.DataFrame:
    return S.ctf275_sensors().iloc[:: 275 // n].reset_index(drop=True)


def _random_features(seed: int, n_images: int = 60) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n_images, 8 * 16)).astype(np.float32) for _ in DEPTHS]


def test_truth_table_schema_and_order():
    truth = S.planted_truth("sim", ["sub-01", "sub-02"], "resnet18", "backprop", DEPTHS, MEG, 0)
    assert list(truth.columns) == ["dataset", "subject", "source_model", "kind", "roi", "signal", "depth", "latency_s"]
    assert set(truth["kind"]) == {"roi", "layer"}
    layer = truth[(truth.kind == "layer") & (truth.subject == "sub-01")]
    act, grad = layer[layer.signal == "act"], layer[layer.signal == "grad"]
    assert np.all(np.diff(act.sort_values("depth").latency_s) > 0)
    assert np.all(np.diff(grad.sort_values("depth").latency_s) < 0)
    assert grad.latency_s.min() > act.latency_s.max()
    roi = truth[(truth.kind == "roi") & (truth.signal == "act") & (truth.subject == "sub-01")].set_index("roi")
    dist = S.roi_geometry(pd.DataFrame([(r, *c) for r, c in S.SIM_ROIS.items()], columns=["roi", "x", "y", "z"]))
    assert np.corrcoef(roi.loc[list(S.SIM_ROIS), "depth"], [dist[r] for r in S.SIM_ROIS])[0, 1] > 0.9
    forward = S.planted_truth("sim", ["sub-01"], "resnet18", "forward", DEPTHS, MEG, 0)
    assert set(forward["signal"]) == {"act"}


def test_shuffled_permutes_gradient_latencies_per_subject():
    plans = [S.plan_subject("shuffled", DEPTHS, MEG, 0, "sim", f"sub-{i:02d}") for i in range(1, 6)]
    lat = np.stack([p.grad_latency for p in plans])
    assert np.allclose(np.sort(lat, axis=1), np.sort(S._backward_latency(DEPTHS, MEG)))
    assert len({tuple(row) for row in lat}) > 1


def test_smooth_null_is_smooth_in_depth_and_has_no_order():
    """smooth_null (METHOD.md §7): latencies and ROI gradient layers are smooth random functions of depth.

    Neighbouring layers' latencies are alike (lag-1 correlation rising with the length-scale),
    yet across subjects their correlation with depth is centred on 0, and the ROIs' gradient
    layers vary between subjects.
    """
    depths = np.linspace(0, 1, 22)
    t0, t1 = MEG["backward_window"]
    lag1, order = {}, {}
    for length in (1.0, 4.0):
        plans = [S.plan_subject("smooth_null", depths, MEG, 0, "sim", f"sub-{i:03d}", length) for i in range(200)]
        lat = np.stack([p.grad_latency for p in plans])
        assert ((lat >= t0) & (lat <= t1)).all()
        lag1[length] = np.mean([np.corrcoef(row[:-1], row[1:])[0, 1] for row in lat])
        order[length] = np.array([np.corrcoef(depths, row)[0, 1] for row in lat])
        assert abs(order[length].mean()) < 0.1
        layers = {tuple(p.roi_grad_layer[r] for r in S.SIM_ROIS) for p in plans}
        assert len(layers) > 100
    assert 0.5 < lag1[1.0] < lag1[4.0]
    # a smooth profile correlates with depth by chance more often than an exchangeable one
    assert np.std(order[4.0]) > np.std(order[1.0]) > 0.3
    # the planted truth reads the same length-scale; the other scenarios ignore it
    truth = S.planted_truth("sim", ["sub-001"], "m", "smooth_null", depths, MEG, 0, 4.0)
    grad = truth[(truth.kind == "layer") & (truth.signal == "grad")]
    np.testing.assert_allclose(grad["latency_s"], plans[1].grad_latency)
    same = S.plan_subject("backprop", depths, MEG, 0, "sim", "sub-001", 4.0)
    default = S.plan_subject("backprop", depths, MEG, 0, "sim", "sub-001")
    np.testing.assert_array_equal(same.grad_latency, default.grad_latency)


def test_smooth_profile_rejects_a_bad_length_scale():
    with pytest.raises(ValueError, match="length_scale=0"):
        S.smooth_profile(5, 0, np.random.default_rng(0))


def test_unknown_scenario_raises():
    with pytest.raises(ValueError, match="scenario 'nope' unknown"):
        S.plan_subject("nope", DEPTHS, MEG, 0, "sim", "sub-01")


def test_simulation_is_deterministic_per_seed_and_subject():
    act, grad = _random_features(0), _random_features(1)
    sensors = _sensors()
    y1, t1 = S.simulate_subject(act, grad, DEPTHS, _params(), 3, "sim", "sub-01", sensors)
    y2, t2 = S.simulate_subject(act, grad, DEPTHS, _params(), 3, "sim", "sub-01", sensors)
    y3, _ = S.simulate_subject(act, grad, DEPTHS, _params(), 3, "sim", "sub-02", sensors)
    assert y1.dtype == np.float32 and y1.shape == (60, len(t1))
    np.testing.assert_array_equal(y1, y2)
    pd.testing.assert_frame_equal(t1, t2)
    assert not np.allclose(y1, y3)
    assert list(t1.columns) == [
        "target",
        "modality",
        "atlas",
        "roi",
        "hemi",
        "x",
        "y",
        "z",
        "roi_distance_mm",
        "sensor",
        "time",
        "noise_ceiling",
    ]
    n_fmri = len(S.SIM_ROIS) * 2 * DEFAULTS["vertices_per_roi"]
    assert (t1.modality == "fmri").sum() == n_fmri and (t1.modality == "meg").sum() == len(sensors) * MEG["n_times"]


def test_coarse_part_equals_torch_average_pooling():
    torch = pytest.importorskip("torch")
    fmap = torch.randn(5, 3, 8, 8)
    fine = torch.nn.functional.adaptive_avg_pool2d(fmap, 4).flatten(1).numpy()
    coarse_ref = torch.nn.functional.adaptive_avg_pool2d(fmap, 2).flatten(1).numpy()
    coarse, detail = S._coarse_and_detail(fine, 4, 2)
    np.testing.assert_allclose(coarse, coarse_ref, rtol=1e-5, atol=1e-6)
    assert detail.shape == fine.shape
    np.testing.assert_allclose(detail.reshape(5, 3, 2, 2, 2, 2).sum(axis=(3, 5)), 0, atol=1e-5)
    with pytest.raises(ValueError, match="latent_grid=3"):
        S._coarse_and_detail(fine, 4, 3)


def test_noise_ceiling_matches_closed_form():
    rng = np.random.default_rng(0)
    n_rep, n_img = 4, 20000
    signal_sd = np.array([1.0, 0.5, 0.0])
    noise_sd = 1.0
    reps = rng.standard_normal((n_img, 3)) * signal_sd + rng.standard_normal((n_rep, n_img, 3)) * noise_sd
    expected = signal_sd**2 / (signal_sd**2 + noise_sd**2 / n_rep)
    np.testing.assert_allclose(S.noise_ceiling_from_repetitions(reps), expected, atol=0.02)


def _cv_r(X: np.ndarray, Y: np.ndarray, folds) -> np.ndarray:
    from brainprop.encoding._ridge import ridge_cv

    X = X[:, X.std(0) > 0]
    return ridge_cv(X, Y, folds, np.logspace(0, 8, 10)).r


@pytest.fixture(scope="module")
def resnet_features(tmp_path_factory):
    """The demo's source model and image set, as the demo config gives them."""
    torch = pytest.importorskip("torch")
    from brainprop.encoding.folds import make_folds
    from brainprop.features.extract import extract_features
    from brainprop.features.layers import select_layers
    from brainprop.features.models import image_transform, load_model, model_info
    from brainprop.stimuli.demo import make_demo_images
    from brainprop.stimuli.files import load_images, write_manifest

    spec = DEMO["models"][DEMO["datasets"]["sim_backprop"]["simulation"]["source_model"]]
    images = DEMO["stimuli"]["demo"]
    out = tmp_path_factory.mktemp("demo")
    manifest = make_demo_images(out, images["n_images"], images["size"], DEMO["seed"])
    write_manifest(out / "manifest.parquet", manifest)
    model = load_model(spec, DEMO["seed"])  # any source and weights the demo config names
    transform = image_transform(model)
    x = torch.stack([transform(im) for _, im in load_images(out / "manifest.parquet")])
    names = [name for name, _ in select_layers(model_info(model).blocks(), spec["layers"]["n"])]
    assert len(names) == len(DEPTHS)
    signals = ("act", "grad", "fa", "dfa")
    plant = extract_features(model, x, names, {"mode": "grid", "grid": 4}, "cross_entropy", 60, signals=signals)
    analysis = extract_features(model, x, names, spec["pooling"], "cross_entropy", 60, signals=signals)
    folds = make_folds(len(manifest), manifest["group"].to_numpy(), 5, 0)
    return plant, analysis, folds


def _cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two (n_images, dims) feature sets."""
    x = np.asarray(x, np.float64) - np.mean(x, 0)
    y = np.asarray(y, np.float64) - np.mean(y, 0)
    return float(np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def _scores(Y, table, feats, folds) -> tuple[np.ndarray, np.ndarray]:
    fm = (table.modality == "fmri").to_numpy()
    R = np.stack([_cv_r(X, Y, folds) for X in feats])
    ft = table[fm]
    best = np.array([np.argmax(R[:, ft.index[ft.roi == roi]].mean(1)) for roi in S.SIM_ROIS])
    times = np.sort(table.time.dropna().unique())
    rt = R[:, ~fm].reshape(len(feats), -1, len(times)).mean(1)
    tmax = np.array([times[r / r.max() >= 0.95].mean() for r in rt])
    return best, tmax


def test_planted_hierarchy_is_recovered(resnet_features):
    """Act best layers and T_max follow the plant (mean over subjects); gradient T_max falls with depth."""
    from scipy.stats import spearmanr

    plant, analysis, folds = resnet_features
    sensors = _sensors(60)
    spatial, temporal, grad_temporal = [], [], []
    for subject in ("sub-01", "sub-02", "sub-03"):
        Y, table = S.simulate_subject(
            plant["act"], plant["grad"], DEPTHS, _params(), 0, "sim_backprop", subject, sensors
        )
        plan = S.plan_subject("backprop", DEPTHS, MEG, 0, "sim_backprop", subject)
        best, tmax = _scores(Y, table, analysis["act"], folds)
        spatial.append(spearmanr(best, [plan.roi_act_layer[r] for r in S.SIM_ROIS])[0])
        temporal.append(spearmanr(tmax, DEPTHS)[0])
        _, gtmax = _scores(Y, table, analysis["grad"], folds)
        grad_temporal.append(np.corrcoef(DEPTHS, gtmax)[0, 1])
    print(
        f"act spatial {np.round(spatial, 2)}, act temporal {np.round(temporal, 2)}, "
        f"grad temporal {np.round(grad_temporal, 2)}"
    )
    assert np.mean(spatial) >= 0.7
    # 60 of 275 sensors keep this test fast, so T_max is noisier than in the demo (0.72 there).
    assert np.mean(temporal) >= 0.4
    assert max(grad_temporal) < 0


def test_dfa_plan_has_one_latency_for_all_layers():
    plan = S.plan_subject("dfa", DEPTHS, MEG, 0, "sim", "sub-01")
    assert np.all(plan.grad_latency == MEG["backward_window"][0])
    truth = S.planted_truth("sim", ["sub-01"], "resnet18", "fa", DEPTHS, MEG, 0)
    assert set(truth["signal"]) == {"act", "fa"}  # the truth names the error by its signal
    with pytest.raises(ValueError, match="scenario 'hebb' unknown"):
        S.error_signal("hebb")


def test_learning_rules_are_told_apart(resnet_features):
    """Each rule's planted timing signature is recovered from its own signal, and DFA data reject the others'.

    Printed: the confusion tables of planted scenario (rows) x analysed signal (columns): the
    correlation of late T_max with depth (backprop and fa predict -1: errors travel down the
    hierarchy), the spread of late T_max over layers (dfa predicts 0: all layers at once), and
    the mean cross-validated r in the backward window. By content, backprop and fa are told
    apart; dfa is not (docs/simulation.md): every layer's dfa is a fixed projection of the one
    output error, which the deepest grad layer carries too. On the demo's trained MobileNetV2 the
    dfa layers are less alike than on random weights (CKA to the last 0.83-1.0, against > 0.99)
    but the deepest grad layer still explains dfa-planted data at least as well as dfa itself.
    """
    plant, analysis, folds = resnet_features
    sensors = _sensors(30)
    lo, hi = MEG["backward_window"]
    rules = {"backprop": "grad", "fa": "fa", "dfa": "dfa"}
    order, spread, mean_r = {}, {}, {}
    for scenario, planted in rules.items():
        Y, targets = S.simulate_subject(
            plant["act"], plant[planted], DEPTHS, _params(scenario), 0, "sim", "sub-01", sensors
        )
        meg = (targets.modality == "meg").to_numpy()
        times = np.sort(targets.time[meg].unique())
        late = times > MEG["forward_window"][1] + 0.05
        window = targets.time[meg].between(lo - 0.05, hi + 0.05).to_numpy()
        for signal in rules.values():
            R = np.stack([_cv_r(X, Y[:, meg], folds) for X in analysis[signal]])
            rt = R.reshape(len(DEPTHS), -1, len(times)).mean(1)[:, late]
            tmax = np.array([times[late][r / r.max() >= 0.95].mean() for r in rt])
            order[scenario, signal] = np.corrcoef(DEPTHS, tmax)[0, 1] if np.ptp(tmax) > 0 else 0.0
            spread[scenario, signal] = float(np.ptp(tmax))
            mean_r[scenario, signal] = float(R[:, window].mean())
    for name, values in (
        ("late T_max vs depth", order),
        ("late T_max spread (s)", spread),
        ("mean r in the backward window", mean_r),
    ):
        table = pd.Series(values).unstack()[list(rules.values())]
        print(f"\n{name} (rows: planted rule, columns: analysed signal)\n{table.round(3).to_string()}")
    assert order["backprop", "grad"] < -0.8 and order["fa", "fa"] < -0.8  # errors travel down the hierarchy
    # DFA: every layer at once, so its own signal shows no reversed order and a narrower spread.
    assert order["dfa", "dfa"] > -0.5 and spread["dfa", "dfa"] < spread["backprop", "grad"]
    # By content, backprop and feedback alignment (same timing) are told apart: each explains its own data best.
    assert mean_r["backprop", "grad"] > 1.5 * mean_r["backprop", "fa"]
    assert mean_r["fa", "fa"] > 1.5 * mean_r["fa", "grad"]
    # Why dfa is not: its layers carry one signal (projections of the output error), as does grad's last layer.
    dfa = analysis["dfa"]
    alike = [_cka(dfa[k], dfa[-1]) for k in range(len(dfa))]
    print(
        "CKA of each dfa layer with the last:",
        np.round(alike, 3),
        "grad last vs dfa last:",
        _cka(analysis["grad"][-1], dfa[-1]),
    )
    assert min(alike) > 0.75 and _cka(analysis["grad"][-1], dfa[-1]) > 0.85
