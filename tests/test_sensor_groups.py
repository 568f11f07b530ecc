"""MEG and EEG sensor groups: the naming rules, the encoding rows per group, T_max and temporal scores per group.

A planted occipital effect at a known latency (CTF names, as THINGS-MEG's 271 sensors) must show
in the occipital group's rows at that latency, where the mean over all sensors dilutes it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainprop.brain.sensors import STANDARD_GROUPS, check_sensor_groups, grouped_sensors, sensor_groups
from brainprop.encoding.encode import encode
from brainprop.encoding.folds import make_folds
from brainprop.hierarchy.scores import all_sensors, subject_hierarchy, tmax

CTF = {"MLO11-1609": "occipital", "MRO22-1609": "occipital", "MZO01-1609": "occipital", "MLT14-1609": "temporal",
       "MRP31-1609": "parietal", "MZC02-1609": "central", "MLF41-1609": "frontal", "BG1-1609": ""}  # fmt: skip
EEG = {"O1": "occipital", "Oz": "occipital", "POz": "occipital", "PO7": "occipital", "Iz": "occipital",
       "P7": "parietal", "Pz": "parietal", "CP1": "parietal", "C3": "central", "FC5": "central", "Cz": "central",
       "T7": "temporal", "TP9": "temporal", "FT8": "temporal", "Fp1": "frontal", "AF3": "frontal", "F7": "frontal",
       "Fz": "frontal", "EOG": ""}  # fmt: skip


def test_standard_groups_read_ctf_and_10_20_names():
    names = list(CTF) + list(EEG)
    assert sensor_groups(names).tolist() == list(CTF.values()) + list(EEG.values())
    assert list(STANDARD_GROUPS) == ["occipital", "temporal", "parietal", "central", "frontal"]
    assert sensor_groups(names, "none").tolist() == [""] * len(names)


def test_custom_groups_and_their_errors():
    spec = {"left": ["ML.*"], "back": [r"M.O.*"]}
    with pytest.raises(ValueError, match="'MLO11-1609' matches the sensor groups"):
        sensor_groups(["MLO11-1609"], spec)
    assert sensor_groups(["MLT14-1609", "MRO22-1609"], spec).tolist() == ["left", "back"]
    assert check_sensor_groups({"g": ["("]}, "datasets.d.sensor_groups")[0].startswith(
        "config key datasets.d.sensor_groups.g: '(' is not a regular expression"
    )
    assert "unknown" in check_sensor_groups("lobes", "k")[0]


def _planted(latency: float = 0.15, n_images: int = 120, seed: int = 0):
    """Features X and responses Y of 30 CTF sensors x 25 times: the 6 occipital sensors carry
    X[:, 0] as a pulse at `latency`, every other sensor and time is noise."""
    rng = np.random.default_rng(seed)
    times = np.round(-0.1 + np.arange(25) / 40.0, 6)
    names = [f"M{'LR'[k % 2]}{'OTPCF'[k % 5]}{k:02d}-1609" for k in range(30)]
    X = rng.standard_normal((n_images, 8))
    pulse = np.exp(-((times - latency) ** 2) / (2 * 0.02**2))
    occipital = np.array([n[2] == "O" for n in names])
    signal = X[:, :1, None] * pulse[None, None, :] * occipital[None, :, None]  # (n, sensors, times)
    Y = (signal + 0.2 * rng.standard_normal((n_images, len(names), len(times)))).reshape(n_images, -1)
    targets = pd.DataFrame(
        {
            "target": np.arange(Y.shape[1]), "modality": "meg", "atlas": "", "hemi": "", "roi_distance_mm": np.nan,
            "sensor": np.repeat(names, len(times)), "time": np.tile(times, len(names)), "noise_ceiling": np.nan,
        }
    )  # fmt: skip
    targets["roi"] = grouped_sensors(targets["sensor"].to_numpy())
    return X, Y, targets, times


def test_a_planted_occipital_effect_is_recovered_in_the_occipital_rows_at_its_latency():
    X, Y, targets, times = _planted(0.15)
    _, summary, _ = encode(X, Y, targets, make_folds(len(X), None, 5, 0), alphas=[1.0, 10.0, 100.0])
    assert summary["roi"].drop_duplicates().tolist() == ["", "occipital", "temporal", "parietal", "central", "frontal"]
    assert (summary.groupby("roi")["time"].count() == len(times)).all()  # a row per group and time
    at = summary[np.isclose(summary["time"], 0.15)].set_index("roi")["r"]
    print("r at 0.15 s per group:", at.round(3).to_dict())
    assert at["occipital"] > 0.9 and at[""] < 0.4  # all sensors dilute it (6 of 30 carry it)
    assert at.drop(["", "occipital"]).abs().max() < 0.2
    enc = summary.assign(
        dataset="d", model="m", signal="act", subject="s", layer_index=0, depth=0.0, timm_name="", layer="l"
    )
    tm = tmax(enc, 0.95)
    occ = tm[tm["roi"] == "occipital"].iloc[0]
    assert occ["t_max_s"] == pytest.approx(0.15, abs=0.013) and occ["peak_r"] > 0.9
    assert set(tm["roi"]) == {"", "occipital", "temporal", "parietal", "central", "frontal"}
    assert all_sensors(tm, "tmax")["roi"].tolist() == [""]


def test_temporal_scores_per_group_and_the_fig_3f_variant():
    # Two layers whose occipital peaks are at 0.1 s (shallow) and 0.2 s (deep), three layers in all.
    times = np.round(np.arange(-0.1, 0.41, 0.025), 6)
    rows = []
    for k, (depth, peak) in enumerate([(0.0, 0.1), (0.5, 0.15), (1.0, 0.2)]):
        for roi, scale in (("", 0.3), ("occipital", 1.0)):
            r = scale * np.exp(-((times - peak) ** 2) / (2 * 0.02**2))
            r[times < 0] = scale * 0.99  # a baseline artefact the default window leaves out
            rows += [
                {
                    "dataset": "d",
                    "modality": "meg",
                    "model": "m",
                    "signal": "act",
                    "subject": "s",
                    "roi": roi,
                    "layer_index": k,
                    "depth": depth,
                    "time": t,
                    "r": v,
                    "atlas": "",
                    "hemi": "",
                    "roi_distance_mm": np.nan,
                }  # fmt: skip
                for t, v in zip(times, r)
            ]
    enc = pd.DataFrame(rows)
    _, tm, hier = subject_hierarchy(enc, "x", 0.95, 3, window=[0.0, None])
    occ = tm[tm["roi"] == "occipital"].sort_values("layer_index")
    np.testing.assert_allclose(occ["t_max_s"], [0.1, 0.15, 0.2], atol=1e-9)
    _, whole, _ = subject_hierarchy(enc, "x", 0.95, 3)  # no window: the baseline artefact wins
    assert (whole.loc[whole["roi"] == "occipital", "t_max_s"] < 0).all()
    layer = hier[(hier["unit"] == "layer")].set_index("roi")["value"]
    assert layer["occipital"] == pytest.approx(1.0) and layer[""] == pytest.approx(1.0)
    # Fig. 3F: best layer per time point against time, over the times after onset with a positive best r.
    time_rows = hier[hier["unit"] == "time"].set_index("roi")
    occ_enc = enc[(enc["roi"] == "occipital") & (enc["time"] >= 0)]
    best = occ_enc.sort_values(["time", "r", "layer_index"], ascending=[True, False, True]).drop_duplicates("time")
    expected = np.corrcoef(best["time"], best["depth"])[0, 1]
    assert time_rows.loc["occipital", "value"] == pytest.approx(expected, abs=1e-12)
    assert time_rows.loc["occipital", "n_used"] == len(best)
