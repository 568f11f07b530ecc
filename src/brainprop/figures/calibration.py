"""Calibration figures: rejection rates of the gradients' tests against SNR (power and type I error)."""

from __future__ import annotations

import pandas as pd

from ..stats.registry import SCORE_TESTS

__all__ = ["power_figure"]

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
