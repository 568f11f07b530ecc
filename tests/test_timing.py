"""Latencies survive brainprop's low-pass and resampling: a pulse's peak stays within 2 ms of its true latency.

Geometries are the published epochs (docs/datasets.md, "Timing"): THINGS-MEG's preprocessed
epochs (−0.1…1.3 s, 200 Hz, low-pass 20 Hz, 30 Hz), the raw BIDS route's epochs (−0.5…3 s at
1200 Hz → 30 Hz) and THINGS-EEG2's (−0.2…0.79 s at 100 Hz, when resampled). The peak is that of
the band-limited interpolation of the output (fixtures/timing.py), which resolves 0.33 ms at 30 Hz;
a time-weighted centroid was rejected because the epoch edge truncates it (a 50 ms pulse at
0.1 s in an epoch from −0.1 s reads 3.8 ms late with no timing error at all).
"""

import numpy as np
import pytest
from fixtures.datasets import dataset_entry, pulse, write_things_eeg2, write_things_meg, write_things_meg_bids
from fixtures.timing import peak_latency, reference_resample

from brainprop.brain import datasets as D
from brainprop.brain.datasets import timing

BAR = 0.002  # s
MEG_LATENCIES = (0.1, 0.15, 0.3, 0.8)
EEG_LATENCIES = (0.1, 0.15, 0.3, 0.6)
# name -> tmin, tmax (s), sampling rate, low-pass (Hz or None), new rate, latencies (s)
GEOMETRIES = {
    "things_meg_epochs": (-0.1, 1.3, 200.0, 20.0, 30.0, MEG_LATENCIES),
    "things_meg_bids": (-0.5, 3.0, 1200.0, None, 30.0, MEG_LATENCIES),  # band-passed before epoching
    "things_eeg2_30hz": (-0.2, 0.79, 100.0, None, 30.0, EEG_LATENCIES),
    "things_eeg2_lowpass_50hz": (-0.2, 0.79, 100.0, 20.0, 50.0, EEG_LATENCIES),
}


def _epoch(tmin: float, tmax: float, sfreq: float) -> np.ndarray:
    return tmin + np.arange(int(round((tmax - tmin) * sfreq)) + 1) / sfreq


@pytest.mark.parametrize("sd", [0.005, 0.02, 0.05])
@pytest.mark.parametrize("name", GEOMETRIES)
def test_pulse_peak_within_2ms_of_its_latency(name, sd):
    tmin, tmax, sfreq, cutoff, new, latencies = GEOMETRIES[name]
    times = _epoch(tmin, tmax, sfreq)
    data = np.stack([pulse(times, latency, sd) for latency in latencies])[None]
    out, rate = timing.preprocess(data, sfreq, cutoff=cutoff, new_sfreq=new)
    assert rate == new and out.shape[-1] == int(round(len(times) * new / sfreq))
    out_times = tmin + np.arange(out.shape[-1]) / rate
    shifts = [peak_latency(out_times, course) - latency for latency, course in zip(latencies, out[0])]
    assert np.abs(shifts).max() < BAR, dict(zip(latencies, np.round(np.array(shifts) * 1e3, 2)))


def test_mne_default_padding_moves_the_pulse_on_the_published_epochs():
    """Why timing.py exists: MNE's Epochs.resample(npad='auto') moves a 0.15 s pulse 10 ms late (MNE 1.13)."""
    import mne

    times = _epoch(-0.1, 1.3, 200.0)
    epochs = mne.EpochsArray(
        pulse(times, 0.15)[None, None], mne.create_info(1, 200.0, "mag"), tmin=-0.1, verbose="error"
    )
    course = epochs.resample(30.0, verbose="error").get_data()[0, 0]
    assert peak_latency(epochs.times, course) - 0.15 > 0.008


@pytest.mark.parametrize("name", GEOMETRIES)
def test_resampling_equals_scipy_on_the_exact_grid(name):
    tmin, tmax, sfreq, _, new, _ = GEOMETRIES[name]
    data = np.random.default_rng(0).standard_normal((2, 3, len(_epoch(tmin, tmax, sfreq))))
    np.testing.assert_allclose(timing.resample(data, sfreq, new), reference_resample(data, sfreq, new), atol=1e-10)


def test_resampled_sinusoid_matches_its_closed_form_at_the_output_times():
    """A 3 Hz cosine through the THINGS-MEG route equals cos(2π·3·t + φ) at tmin + j/30 away from the edges."""
    times = _epoch(-0.1, 1.3, 200.0)
    out, rate = timing.preprocess(np.cos(2 * np.pi * 3 * times + 0.4)[None, None], 200.0, cutoff=20.0, new_sfreq=30.0)
    out_times = -0.1 + np.arange(out.shape[-1]) / rate
    inner = (out_times > 0.1) & (out_times < 1.1)
    # a 10 ms shift would be a phase error of 0.19 rad: errors up to 0.19
    np.testing.assert_allclose(out[0, 0, inner], np.cos(2 * np.pi * 3 * out_times[inner] + 0.4), atol=0.01)


def test_rates_without_a_small_ratio_are_refused():
    assert timing.resampling_ratio(200.0, 30.0) == (3, 20)
    assert timing.resampling_ratio(1200.0, 30.0) == (1, 40)
    with pytest.raises(ValueError, match="ratio 1/2003"):
        timing.resampling_ratio(2003.0, 1.0)
    with pytest.raises(ValueError, match="Nyquist"):
        timing.preprocess(np.zeros((1, 1, 10)), 100.0, cutoff=60.0)


def _assert_within_bar(Y: np.ndarray, targets, latencies: tuple[float, ...], half_window: float = 0.3) -> None:
    """Sensor k's mean over images peaks within the bar of latencies[k % len], searched ± half_window s."""
    mean = Y.mean(axis=0)
    for k, (_, part) in enumerate(targets.groupby("sensor", sort=False)):
        latency = latencies[k % len(latencies)]
        window = (latency - half_window, latency + half_window)
        found = peak_latency(part["time"].to_numpy(), mean[part.index.to_numpy()], window)
        assert abs(found - latency) < BAR, (k, latency, found)


def test_things_meg_reader_keeps_latencies(tmp_path):
    write_things_meg(tmp_path / "root", n_channels=4, latencies=MEG_LATENCIES)
    ds = dataset_entry("things_meg", tmp_path / "root", ["P1"], zscore=False)
    manifest = D.build_manifest(tmp_path / "out", ds, "d")
    _, Y, targets, _ = D.reader("things_meg").read_subject(tmp_path / "root", ds, "P1", manifest["image_id"].tolist())
    assert targets["time"].nunique() == 42
    _assert_within_bar(Y, targets, MEG_LATENCIES)


def test_things_meg_bids_route_keeps_latencies(tmp_path):
    """Band-pass 0.1–20 Hz on the continuous 1200 Hz recording, epochs −0.5…3 s, 30 Hz."""
    write_things_meg_bids(tmp_path / "root", n_channels=4, sfreq=1200.0, latencies=MEG_LATENCIES)
    ds = dataset_entry("things_meg", tmp_path / "root", ["P1"], zscore=False, route="bids", bids={"extension": ".fif"})
    manifest = D.build_manifest(tmp_path / "out", ds, "d")
    _, Y, targets, _ = D.reader("things_meg").read_subject(tmp_path / "root", ds, "P1", manifest["image_id"].tolist())
    assert targets["time"].min() == pytest.approx(-0.5)
    _assert_within_bar(Y, targets, MEG_LATENCIES)  # the next trial's pulses sit 1.5 s later, outside ±0.3 s


def test_things_eeg2_reader_keeps_latencies_when_resampling(tmp_path):
    write_things_eeg2(tmp_path / "root", latencies=EEG_LATENCIES)
    ds = dataset_entry("things_eeg2", tmp_path / "root", ["sub-01"], zscore=False, lowpass=20.0, sfreq=30.0)
    manifest = D.build_manifest(tmp_path / "out", ds, "d")
    _, Y, targets, _ = D.reader("things_eeg2").read_subject(
        tmp_path / "root", ds, "sub-01", manifest["image_id"].tolist()
    )
    assert targets["time"].nunique() == 30 and targets["time"].iloc[1] == pytest.approx(-0.2 + 1 / 30)
    _assert_within_bar(Y, targets, EEG_LATENCIES)


def _mne_default(data: np.ndarray, sfreq: float, cutoff: float | None, new: float) -> np.ndarray:
    """The route before timing.py: MNE's Epochs.filter and Epochs.resample with their defaults."""
    import mne

    epochs = mne.EpochsArray(data, mne.create_info(data.shape[1], sfreq, "mag"), verbose="error")
    if cutoff:
        epochs.filter(None, cutoff, verbose="error")
    return epochs.resample(new, verbose="error").get_data()


def shift_table(sd: float = 0.01) -> list[tuple[str, float, float, float]]:
    """(geometry, latency, shift with MNE's defaults, shift with timing.py) in ms, for docs/datasets.md."""
    rows = []
    for name, (tmin, tmax, sfreq, cutoff, new, latencies) in GEOMETRIES.items():
        times = _epoch(tmin, tmax, sfreq)
        data = np.stack([pulse(times, latency, sd) for latency in latencies])[None]
        before = _mne_default(data, sfreq, cutoff, new)[0]
        after = timing.preprocess(data, sfreq, cutoff=cutoff, new_sfreq=new)[0][0]
        out_times = tmin + np.arange(after.shape[-1]) / new
        for latency, b, a in zip(latencies, before, after):
            rows.append(
                (
                    name,
                    latency,
                    1e3 * (peak_latency(out_times, b) - latency),
                    1e3 * (peak_latency(out_times, a) - latency),
                )
            )
    return rows


if __name__ == "__main__":  # python tests/test_timing.py: the shifts documented in docs/datasets.md
    for name, latency, before, after in shift_table():
        print(f"{name:26s} {latency:.2f} s  MNE defaults {before:+6.1f} ms  brainprop {after:+5.1f} ms")
