"""Test figures: model comparison rows and each learning rule's predicted signs beside the group effects."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..stats.registry import RULE_PREDICTIONS
from .labels import PREDICTION_TEXT, RULE_NAMES, SCORE_TEST_OF, ci_name
from .style import RC, REFERENCE_COLOR, check_table, select_dataset, signal_styles

__all__ = ["TESTS_COLUMNS", "plot_model_comparison", "plot_rule_signatures", "prediction_matched"]

TESTS_COLUMNS = ("dataset", "model", "signal", "test", "effect", "ci_low", "ci_high", "p_fdr", "n_subjects")


def _comparison_rows(tests: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Spatial (S1a) and temporal (T1) score rows of `dataset`: score, model, signal, effect, CI, p_fdr."""
    rows = select_dataset(tests, "tests", dataset)
    rows = rows[rows["test"].isin(SCORE_TEST_OF.values())]
    if rows.empty:
        raise ValueError(f"tests table has no {sorted(SCORE_TEST_OF.values())} rows for dataset {dataset!r}")
    score = {test: name for name, test in SCORE_TEST_OF.items()}
    return rows.assign(score=rows["test"].map(score))


def _comparison_rows_y(part: pd.DataFrame, models: list[str], signals: list[str]) -> dict[tuple[str, str], float]:
    """y of each (model, signal) row: models sorted by the activations' effect (best on top), a gap between them."""
    key = part[part["signal"] == "act"].set_index("model")["effect"]
    order = sorted(models, key=lambda m: (-key.get(m, -np.inf), m))  # best first
    y_of, y = {}, 0.0
    for model in order[::-1]:  # drawn from the bottom up
        present = [s for s in signals if ((part["model"] == model) & (part["signal"] == s)).any()]
        for signal in present[::-1]:  # act on top within a model
            y_of[model, signal] = y
            y += 1.0
        y += 0.5
    return dict(sorted(y_of.items(), key=lambda item: item[1]))


def plot_model_comparison(tests: pd.DataFrame, dataset: str, *, alpha: float = 0.05) -> Figure:
    """Every model's spatial and temporal score per signal with its bootstrap CI, one panel each.

    Values are the group effects of the S1a (spatial) and T1 (temporal) rows of the tests table:
    the mean score over subjects. Each model × signal is a labelled row; models are sorted by
    the activations' score (highest on top), their signals grouped beneath; filled markers have
    p_fdr < `alpha` in the direction the test checks, open ones do not. The CI's level is
    1 − `alpha`, as the group stage computes it.
    """
    check_table(tests, "tests", TESTS_COLUMNS)
    rows = _comparison_rows(tests, dataset)
    scores = [s for s in SCORE_TEST_OF if (rows["score"] == s).any()]
    styles = signal_styles(rows["signal"].unique())
    models = sorted(rows["model"].unique())
    with plt.rc_context(RC):
        fig, axes = plt.subplots(
            1,
            len(scores),
            squeeze=False,
            layout="constrained",
            figsize=(2.2 + 3.4 * len(scores), 1.6 + 0.3 * len(models) * (len(styles) + 0.5)),
        )
        for ax, score in zip(axes[0], scores):
            part = rows[rows["score"] == score]
            y_of = _comparison_rows_y(part, models, list(styles))
            for signal, style in styles.items():
                curve = part[part["signal"] == signal]
                if curve.empty:
                    continue
                ys = curve["model"].map(lambda m, s=signal, y_of=y_of: y_of[m, s]).to_numpy(dtype="float64")
                x = curve["effect"].to_numpy(dtype="float64")
                err = np.abs(
                    np.vstack(
                        [x - curve["ci_low"].to_numpy(dtype="float64"), curve["ci_high"].to_numpy(dtype="float64") - x]
                    )
                )
                bars = ax.errorbar(
                    x,
                    ys,
                    xerr=np.nan_to_num(err),
                    color=style["color"],
                    marker="none",
                    linestyle="none",
                    capsize=2,
                    elinewidth=1,
                )
                for coll in bars.lines[2]:
                    coll.set_gid(f"{signal}:ci")
                significant = curve["p_fdr"].to_numpy(dtype="float64") < alpha
                ax.plot(
                    x,
                    ys,
                    linestyle="none",
                    marker=style["marker"],
                    color=style["color"],
                    markerfacecolor="none",
                    markersize=6,
                    label=signal,
                    gid=f"{signal}:mean",
                )
                ax.plot(
                    x[significant],
                    ys[significant],
                    linestyle="none",
                    marker=style["marker"],
                    color=style["color"],
                    markersize=6,
                    gid=f"{signal}:significant",
                )
            ax.axvline(0.0, color="0.6", linewidth=0.6, zorder=0)
            ax.set_yticks(list(y_of.values()), [f"{m} · {s}" for m, s in y_of])
            for k, label in enumerate(ax.get_yticklabels()):
                label.set_color(styles[list(y_of)[k][1]]["color"])
            ax.set_ylim(-0.6, max(y_of.values()) + 0.6)
            ax.set_xlim(-1.05, 1.05)
            test = SCORE_TEST_OF[score]
            ax.set_xlabel(f"{score} score (Pearson r, mean over subjects)")
            ax.set_title(f"{score} score ({test} row), {ci_name(alpha)}")
        handles = [plt.Line2D([], [], color=s["color"], marker=s["marker"], linestyle="none") for s in styles.values()]
        handles.append(plt.Line2D([], [], color="0.3", marker="o", markerfacecolor="none", linestyle="none"))
        fig.legend(
            handles, [*styles, f"open: p_fdr ≥ {alpha}"], loc="outside lower center", ncols=len(handles), frameon=False
        )
        fig.suptitle(f"{dataset}: hierarchy scores of every model")
    return fig


# The tests each learning rule makes a prediction for (columns), and their x axes.
_RULE_TESTS: dict[str, str] = {
    "T1": "T1 temporal score\n(Pearson r, depth vs T_max)",
    "T2": "T2 lag after the forward sweep\n(s, earliest T_max − act's last)",
    "S1a": "S1a spatial score\n(Pearson r, depth vs ROI distance)",
    "S1b": "S1b alignment with act\n(Pearson r of best depths)",
}


_PREDICTION_COLOR = "0.85"


# Half-width of the 'zero' prediction's band, as a fraction of the axis span: a visual mark of 0;
# the match criterion is that the CI covers 0 (`prediction_matched`).
_ZERO_BAND = 0.05


def prediction_matched(prediction: str, ci_low: float, ci_high: float) -> bool:
    """Whether a CI lies in the predicted region: above 0 ('greater'), below ('less') or around it ('zero')."""
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return False
    return {"greater": ci_low > 0, "less": ci_high < 0, "zero": ci_low <= 0 <= ci_high}[prediction]


def _rule_rows(tests: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """T1, T2, S1a and S1b rows of `dataset`'s learning signals; ValueError for a signal with no prediction."""
    rows = select_dataset(tests, "tests", dataset)
    rows = rows[rows["test"].isin(_RULE_TESTS) & (rows["signal"] != "act")]
    unknown = sorted(set(rows["signal"]) - set(RULE_PREDICTIONS))
    if unknown:
        raise ValueError(
            f"tests table has signal(s) {unknown} for dataset {dataset!r} with no predicted "
            f"signature; known: {sorted(RULE_PREDICTIONS)} (brainprop.stats.registry.RULE_PREDICTIONS)"
        )
    if rows.empty:
        raise ValueError(
            f"tests table has no {list(_RULE_TESTS)} rows of a learning signal "
            f"{sorted(RULE_PREDICTIONS)} for dataset {dataset!r}"
        )
    return rows


def _rule_limits(rows: pd.DataFrame, test: str) -> tuple[float, float]:
    """x limits of a test's column: [-1.05, 1.05] for correlations, symmetric around 0 for T2 (s)."""
    if test != "T2":
        return -1.05, 1.05
    values = np.abs(rows[["effect", "ci_low", "ci_high"]].to_numpy(dtype="float64"))
    values = values[np.isfinite(values)]
    half = 1.15 * max(float(values.max()) if values.size else 0.0, 0.05)
    return -half, half


def _prediction_span(ax: Axes, prediction: str, lim: tuple[float, float], gid: str) -> None:
    """Shade the region a rule predicts for a test's effect: x > 0, x < 0, or a narrow band at 0."""
    half = _ZERO_BAND * (lim[1] - lim[0])
    x0, x1 = {"greater": (0.0, lim[1]), "less": (lim[0], 0.0), "zero": (-half, half)}[prediction]
    ax.axvspan(
        x0,
        x1,
        facecolor=_PREDICTION_COLOR,
        edgecolor="0.55",
        linewidth=0,
        zorder=0,
        gid=gid,
        hatch="///" if prediction == "zero" else None,
    )


def _rule_cell(
    ax: Axes, part: pd.DataFrame, signal: str, test: str, y_of: dict[str, int], style: dict, alpha: float
) -> str:
    """One signal's effect ± CI per model on one test's axis; return how many CIs match the prediction."""
    part = part.assign(_y=part["model"].map(y_of)).sort_values("_y")
    x = part["effect"].to_numpy(dtype="float64")
    ys = part["_y"].to_numpy(dtype="float64")
    low, high = part["ci_low"].to_numpy(dtype="float64"), part["ci_high"].to_numpy(dtype="float64")
    bars = ax.errorbar(
        x,
        ys,
        xerr=np.nan_to_num(np.abs(np.vstack([x - low, high - x]))),
        color=style["color"],
        marker="none",
        linestyle="none",
        capsize=2,
        elinewidth=1,
    )
    for coll in bars.lines[2]:
        coll.set_gid(f"{signal}:{test}:ci")
    significant = part["p_fdr"].to_numpy(dtype="float64") < alpha
    ax.plot(
        x,
        ys,
        linestyle="none",
        marker=style["marker"],
        color=style["color"],
        markerfacecolor="none",
        markersize=6,
        gid=f"{signal}:{test}:mean",
    )
    ax.plot(
        x[significant],
        ys[significant],
        linestyle="none",
        marker=style["marker"],
        color=style["color"],
        markersize=6,
        gid=f"{signal}:{test}:significant",
    )
    prediction = RULE_PREDICTIONS[signal][test]
    finite = int(np.count_nonzero(np.isfinite(low) & np.isfinite(high)))
    if finite == 0:
        return "no finite CI"
    matched = sum(prediction_matched(prediction, lo, hi) for lo, hi in zip(low, high))
    return f"{matched}/{finite} CI in region"


def plot_rule_signatures(tests: pd.DataFrame, dataset: str, *, alpha: float = 0.05) -> Figure:
    """Each learning rule's predicted sign of T1, T2, S1a and S1b (shaded) beside the observed group effects.

    Rows are the dataset's learning signals (grad, fa, sign, dfa: `RULE_PREDICTIONS`), columns
    the tests present; each cell shows every model's group effect with its bootstrap CI (level
    1 − `alpha`), filled when p_fdr < `alpha` in the row's tested direction (`alternative`).
    The shaded region is what the rule predicts (a hatched band at 0 where it predicts no
    order); a cell's corner counts the models whose CI lies in it.
    """
    check_table(tests, "tests", TESTS_COLUMNS)
    rows = _rule_rows(tests, dataset)
    signals = [s for s in RULE_PREDICTIONS if (rows["signal"] == s).any()]
    columns = [t for t in _RULE_TESTS if (rows["test"] == t).any()]
    models = sorted(rows["model"].unique())
    y_of = {m: len(models) - 1 - i for i, m in enumerate(models)}  # first model on top
    styles = signal_styles(signals)
    with plt.rc_context(RC):
        fig, axes = plt.subplots(
            len(signals),
            len(columns),
            squeeze=False,
            sharey=True,
            layout="constrained",
            figsize=(1.8 + 2.6 * len(columns), 1.4 + (1.0 + 0.3 * len(models)) * len(signals)),
        )
        for j, test in enumerate(columns):
            lim = _rule_limits(rows[rows["test"] == test], test)
            for i, signal in enumerate(signals):
                ax, prediction = axes[i, j], RULE_PREDICTIONS[signal][test]
                _prediction_span(ax, prediction, lim, f"prediction:{signal}:{test}")
                ax.axvline(0.0, color=REFERENCE_COLOR, linewidth=0.6, zorder=1)
                part = rows[(rows["signal"] == signal) & (rows["test"] == test)]
                note = _rule_cell(ax, part, signal, test, y_of, styles[signal], alpha) if len(part) else "no rows"
                ax.text(
                    0.98,
                    0.97,
                    f"predicts {PREDICTION_TEXT[prediction]}\n{note}",
                    transform=ax.transAxes,
                    ha="right",
                    va="top",
                    fontsize=7,
                    color="0.25",
                    gid=f"verdict:{signal}:{test}",
                )
                ax.set_xlim(*lim)
                ax.set_ylim(-0.6, len(models) - 0.4 + 0.6)  # headroom for the note
                if i == 0:
                    ax.set_title(test)
                if i == len(signals) - 1:
                    ax.set_xlabel(_RULE_TESTS[test])
            for i, signal in enumerate(signals):
                axes[i, 0].set_yticks([y_of[m] for m in models], models)
                axes[i, 0].set_ylabel(f"{signal}\n({RULE_NAMES[signal]})")
        handles = [
            plt.Rectangle((0, 0), 1, 1, color=_PREDICTION_COLOR),
            plt.Line2D([], [], color="0.3", marker="o", linestyle="none"),
            plt.Line2D([], [], color="0.3", marker="o", markerfacecolor="none", linestyle="none"),
        ]
        labels = ["predicted sign", f"p_fdr < {alpha}", f"p_fdr ≥ {alpha}"]
        if any(RULE_PREDICTIONS[s][t] == "zero" for s in signals for t in columns):
            handles.insert(1, plt.Rectangle((0, 0), 1, 1, facecolor=_PREDICTION_COLOR, hatch="///", edgecolor="0.5"))
            labels.insert(1, "predicted ≈ 0 (CI should cover 0)")
        fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), frameon=False)
        fig.suptitle(
            f"{dataset}: each rule's predicted signature (shaded) and the group effect per model, {ci_name(alpha)}"
        )
    return fig
