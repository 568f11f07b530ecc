"""Low-pass filtering and resampling of epochs that keep every latency where it was (docs/datasets.md, "Timing").

MNE's `Epochs.resample` defaults (`npad="auto"`) pad an epoch to a power of two and round both the
padded length and the left pad to whole output samples. On the published THINGS-MEG epochs
(281 samples at 200 Hz → 30 Hz) the output's first sample then lies 9.8 ms before the epoch's
`tmin` while it is labelled `tmin`, and its spacing is 33.25 ms instead of 33.33 ms: every
latency moves 10 to 12 ms later. Here an epoch is padded with its edge values (MNE's `Epochs`
default mode), at least half an epoch on each side, so that the left pad is a whole number of
output samples and the padded length resamples to a whole number of samples; MNE's FFT
resampler (`mne.filter.resample`, boxcar window: a brick-wall at the new Nyquist frequency) then
runs without padding of its own, and output sample j lies exactly at `tmin + j / new_sfreq`.
The low-pass is MNE's zero-phase FIR (firwin design, Hamming window, automatic length and
transition band) with edge padding. Edge padding was measured against filtering and resampling
the continuous signal before cutting the epoch: it beats odd or even reflection and zeros at the
epoch's ends (docs/datasets.md).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

__all__ = ["MAX_DENOMINATOR", "lowpass", "preprocess", "resample", "resampled_length", "resampling_ratio"]

# Largest q of the rate ratio p/q: the left pad and the padded length are multiples of q input samples.
MAX_DENOMINATOR = 2_000


def resampling_ratio(sfreq: float, new_sfreq: float) -> tuple[int, int]:
    """new_sfreq / sfreq as the reduced fraction (p, q), from rates given to 1e-6 Hz."""
    ratio = Fraction(float(new_sfreq)).limit_denominator(10**6) / Fraction(float(sfreq)).limit_denominator(10**6)
    if ratio.denominator > MAX_DENOMINATOR or ratio <= 0:
        raise ValueError(
            f"resampling {sfreq} Hz to {new_sfreq} Hz: the ratio {ratio.numerator}/{ratio.denominator} "
            f"needs a positive ratio with denominator <= {MAX_DENOMINATOR}; choose a rate such as "
            f"{float(sfreq) / round(float(sfreq) / float(new_sfreq)):g} Hz"
        )
    return ratio.numerator, ratio.denominator


def resampled_length(n_times: int, sfreq: float, new_sfreq: float) -> int:
    """Samples after resampling n_times samples: round(n_times · ratio), MNE's convention."""
    p, q = resampling_ratio(sfreq, new_sfreq)
    return max(int(round(n_times * p / q)), 1)


def resample(data: np.ndarray, sfreq: float, new_sfreq: float) -> np.ndarray:
    """FFT-resample the last axis (n_times) to new_sfreq; output sample j at the input's first time + j / new_sfreq.

    Parameters
    ----------
    data : array of shape (..., n_times), float64 or float32 (computed in float64)

    Returns
    -------
    array of shape (..., resampled_length(n_times, sfreq, new_sfreq)), float64
    """
    import mne

    p, q = resampling_ratio(sfreq, new_sfreq)
    data = np.asarray(data, dtype=np.float64)
    n = data.shape[-1]
    if p == q:
        return data.copy()
    if n < 2:
        raise ValueError(f"resampling needs at least 2 time samples per epoch, got {n}")
    least = max(n // 2, 1)  # at least half an epoch of padding on each side
    left = -(-least // q) * q  # a whole number of output samples: left · p / q is an integer
    right = least + (-(left + n + least)) % q  # padded length a multiple of q
    width = [(0, 0)] * (data.ndim - 1) + [(left, right)]
    padded = np.pad(data, width, mode="edge")
    out = mne.filter.resample(padded, up=p, down=q, npad=0, window="boxcar", method="fft", verbose="error")
    start = left * p // q
    return out[..., start : start + resampled_length(n, sfreq, new_sfreq)]


def lowpass(data: np.ndarray, sfreq: float, cutoff: float) -> np.ndarray:
    """Zero-phase FIR low-pass of the last axis (MNE's `filter_data`, firwin, edge padding); float64."""
    import mne

    return mne.filter.filter_data(
        np.asarray(data, dtype=np.float64),
        sfreq,
        None,
        cutoff,
        method="fir",
        phase="zero",
        fir_window="hamming",
        fir_design="firwin",
        filter_length="auto",
        h_trans_bandwidth="auto",
        pad="edge",
        verbose="error",
    )


def preprocess(
    data: np.ndarray, sfreq: float, *, cutoff: float | None = None, new_sfreq: float | None = None
) -> tuple[np.ndarray, float]:
    """Low-pass at `cutoff` (None: no filter), then resample to `new_sfreq` (None: keep); (data, its rate).

    Parameters
    ----------
    data : array of shape (n_epochs, n_channels, n_times)

    Returns
    -------
    (array of shape (n_epochs, n_channels, n_times_out) float64, sampling rate of that array in Hz)
    """
    out = np.asarray(data, dtype=np.float64)
    if cutoff:
        if not 0 < cutoff < sfreq / 2:
            raise ValueError(f"low-pass {cutoff} Hz: expected a frequency between 0 and Nyquist ({sfreq / 2} Hz)")
        out = lowpass(out, sfreq, cutoff)
    if new_sfreq and not np.isclose(new_sfreq, sfreq):
        out = resample(out, sfreq, new_sfreq)
        sfreq = float(new_sfreq)
    return out, float(sfreq)
