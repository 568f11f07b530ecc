"""Calibration figures: rejection rates of the gradients' tests against SNR (power and type I error) and,
null beside null, the per-subject tests' type I error against the smooth_null length-scale."""

from __future__ import annotations

import pandas as pd

from ..stats.registry import SCORE_TESTS

__all__ = ["calibration_figures", "null_figure", "power_figure"]

_TESTS = SCORE_TESTS


def power_figure(rates: pd.DataFrame, path: str, alpha: float, title: str) -> None:
    """Rejection rates of the gradients' tests against fMRI SNR, backprop (power) and shuffled (size).

    Top row: the group test (exact Wilcoxon p < alpha); bottom row: the per-subject
    layer-order permutation tests (share of subjects with p < alpha; T2 has none), which is
    what a 3–4-subject dataset can show.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grad = rates[rates["signal"] == "grad"]
    fig, axes = plt.subplots(2, len(_TESTS), figsize=(3.2 * len(_TESTS), 5.6), sharey=True, squeeze=False)
    for row, (column, label) in enumerate(
        (("group_rate", f"group: Wilcoxon p < {alpha:g}"), ("subject_rate", f"subjects: permutation p < {alpha:g}"))
    ):
        for ax, test in zip(axes[row], _TESTS):
            if grad.loc[grad["test"] == test, column].isna().all():
                ax.text(0.5, 0.5, "no per-subject test", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
                continue
            for (scenario, n), part in grad[grad["test"] == test].groupby(["scenario", "n_subjects"], sort=True):
                style = "-o" if scenario == "backprop" else "--s"
                ax.plot(part["snr_fmri"], part[column], style, label=f"{scenario}, {n} subjects")
            ax.axhline(alpha, color="grey", lw=0.8, ls=":")
            ax.axhline(0.8, color="grey", lw=0.8)
            ax.set_xscale("log")
            snrs = sorted(set(grad["snr_fmri"]))
            ax.set_xticks(snrs, [f"{v:g}" for v in snrs])
            ax.minorticks_off()
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(test if row == 0 else "")
            if row == 1:
                ax.set_xlabel("fMRI SNR (MEG SNR scales with it)")
        axes[row][0].set_ylabel(f"rejection rate\n({label})")
    axes[0][-1].legend(fontsize=7, loc="center right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


# Tests with a per-subject null, drawn in the null figure.
_SUBJECT_TESTS = ("T1", "S1a", "S1b")


def _interval(size: float, trials: int) -> tuple[float, float]:
    from scipy import stats

    low, high = stats.binom.interval(0.95, max(int(trials), 1), size)
    return low / max(trials, 1), high / max(trials, 1)


def null_figure(rates: pd.DataFrame, path: str, alpha: float, title: str, power: pd.DataFrame | None = None) -> None:
    """Per-subject type I error against the smooth_null length-scale, one panel per null, and power against SNR.

    `rates` holds `brainprop.stats.calibration.rejection_rates` rows of the gradients with columns
    scenario, length_scale, null, test, subject_rate, n_subject_tests: `shuffled` rows are drawn
    at length-scale 0 (exchangeable layers), `smooth_null` rows at theirs; the grey band is the
    binomial 95 % interval of alpha for the number of per-subject tests, so a null above it
    rejects a true null too often. `power` (optional: rows with snr_fmri, null, test,
    subject_rate, group_rate of the backprop scenario) adds a last panel: the per-subject
    rejection rate against fMRI SNR, one colour per test and one line style per null (wide pale
    lines: the group test, the same under every null).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grad = rates[(rates["signal"] == "grad") & rates["test"].isin(_SUBJECT_TESTS)]
    grad = grad[grad["scenario"].isin(["shuffled", "smooth_null"])]
    grad = grad.assign(x=grad["length_scale"].where(grad["scenario"] == "smooth_null", 0.0).fillna(0.0))
    from ..stats.nulls import NULLS

    nulls = sorted(set(grad["null"]), key=lambda n: NULLS.index(n) if n in NULLS else len(NULLS))
    n_panels = len(nulls) + (power is not None)
    fig, axes = plt.subplots(1, n_panels, figsize=(3.6 * n_panels, 3.4), squeeze=False)
    top = max(0.2, float(grad["subject_rate"].max()) * 1.1) if len(grad) else 0.2
    for ax, null in zip(axes[0], nulls):
        part = grad[grad["null"] == null]
        trials = int(part["n_subject_tests"].min()) if len(part) else 1
        low, high = _interval(alpha, trials)
        xs = sorted(set(part["x"]))
        ax.fill_between([min(xs, default=0), max(xs, default=4)], low, high, color="0.85", lw=0)
        ax.axhline(alpha, color="grey", lw=0.8, ls=":")
        for test in _SUBJECT_TESTS:
            line = part[part["test"] == test].sort_values("x")
            ax.plot(line["x"], line["subject_rate"], "-o", ms=4, label=test)
        ax.set_xticks(xs, ["shuffled" if x == 0 else f"{x:g}" for x in xs])
        ax.set_ylim(0, top)
        ax.set_xlabel("smooth_null length-scale (layers)")
        ax.set_title(f"null: {null}", fontsize=9)
    axes[0][0].set_ylabel(f"per-subject rejection rate (p < {alpha:g})")
    axes[0][0].legend(fontsize=7, loc="upper left")
    if power is not None:
        ax = axes[0][-1]
        styles = ("-", "--", ":", "-.")
        for i, null in enumerate(nulls):
            for j, test in enumerate(_SUBJECT_TESTS):
                line = power[(power["null"] == null) & (power["test"] == test)].sort_values("snr_fmri")
                label = f"{test}, {null}" if len(line) else None
                style = {"ls": styles[i % 4], "color": f"C{j}", "marker": "o", "ms": 3}
                ax.plot(line["snr_fmri"], line["subject_rate"], **style, label=label)
        groups = power[power["test"].isin(_SUBJECT_TESTS)].drop_duplicates(["test", "snr_fmri"])
        for j, test in enumerate(_SUBJECT_TESTS):
            line = groups[groups["test"] == test].sort_values("snr_fmri")
            ax.plot(line["snr_fmri"], line["group_rate"], "-", color=f"C{j}", lw=3, alpha=0.25)
        ax.axhline(0.8, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("SNR (wide pale lines: group Wilcoxon)")
        ax.set_title("power on backprop", fontsize=9)
        ax.legend(fontsize=6, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def calibration_figures(
    rates: pd.DataFrame, alpha: float, dataset: str, calibration: dict, power_path: str, nulls_path: str
) -> None:
    """The calibration rule's two figures from its `rejection_rates`.

    `power_path`: `power_figure` of shuffled and backprop under the first null of
    `calibration['nulls']`; `nulls_path`: `null_figure` of every null at the highest SNR and
    subject count, with the power of backprop against SNR.
    """
    n_seeds, first = calibration["n_seeds"], calibration["nulls"][0]
    legend = f"solid: backprop = power; dashed: shuffled = type I error; per-subject null {first}"
    shown = rates[(rates["null"] == first) & rates["scenario"].isin(["shuffled", "backprop"])]
    power_figure(shown, power_path, alpha, f"{dataset}: gradient tests, {n_seeds} seeds per point ({legend})")
    snr, n_max = rates["snr_fmri"].max(), int(rates["n_subjects"].max())
    top = rates[(rates["snr_fmri"] == snr) & (rates["n_subjects"] == n_max)]
    power = rates[(rates["scenario"] == "backprop") & (rates["n_subjects"] == n_max) & (rates["signal"] == "grad")]
    title = f"{dataset}: per-subject nulls, {n_seeds} seeds, {n_max} subjects, fMRI SNR {snr:g}"
    null_figure(top, nulls_path, alpha, title, power)
