"""The answer first: each test's finding and one verdict per dataset × model × signal (`brainprop summary`).

`findings_table` lists, per dataset × model × signal, each test's effect with its bootstrap
interval, p_fdr, p_min, the prevalence (subjects whose own test is significant, of the subjects)
and the null (`method`). `verdicts` applies the rules the README states ("Reading the tests",
"The verdict line") to the hierarchy tests of every learning signal:

- a test counts **for** backpropagation when it is significant in the predicted direction:
  p_fdr < alpha where the group test can reach alpha (p_min < alpha); where it cannot (3-4
  subjects), when more than half of the subjects' own tests are significant (T2 has no
  per-subject test, so it then counts for nothing);
- a test counts **against** when its interval (over at least 3 subjects) lies wholly on the
  other side of zero;
- tests whose modality fails the forward check (the activations' T1 or S1a, tested for a
  hierarchy in the forward direction by the same rule) are set aside: there the data show no
  hierarchy to compare with;
- the verdict is **rejected** when any remaining test counts against, **supported** when every
  remaining test counts for, **undecided** otherwise (also when no test remains).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .registry import SCORE_TESTS, TESTS

__all__ = [
    "FINDING_COLUMNS",
    "VERDICTS",
    "evidence",
    "findings_table",
    "format_summary",
    "summary_rst",
    "verdicts",
]

VERDICTS = ("supported", "rejected", "undecided")
# A bootstrap interval over fewer subjects is a point or two: it cannot count against a prediction.
MIN_SUBJECTS_AGAINST = 3
FINDING_COLUMNS = (
    "dataset", "model", "signal", "test", "level", "measure", "alternative", "effect", "ci_low", "ci_high",
    "p_fdr", "p_min", "prevalence", "method", "evidence",
)  # fmt: skip
_REQUIRED = (
    "dataset", "modality", "model", "signal", "test", "level", "method", "alternative", "effect", "ci_low",
    "ci_high", "p", "p_min", "p_fdr", "n_subjects", "n_significant_subjects",
)  # fmt: skip


def _significant(row: pd.Series, alpha: float) -> bool:
    """Significant in the row's direction: group p_fdr where p_min allows it, else a majority of subjects."""
    if row["p_min"] < alpha:
        return bool(row["p_fdr"] < alpha)
    n, k = int(row["n_subjects"]), int(row["n_significant_subjects"])
    return k >= 0 and n > 0 and k > n / 2


def evidence(row: pd.Series, alpha: float) -> str:
    """'for', 'against' or 'neither' backpropagation's prediction (the row's `alternative`); E rows: ''."""
    if row["test"] not in SCORE_TESTS:
        return ""
    if _significant(row, alpha):
        return "for"
    low, high = float(row["ci_low"]), float(row["ci_high"])
    other_side = {"less": low > 0, "greater": high < 0}.get(row["alternative"], False)
    return "against" if other_side and int(row["n_subjects"]) >= MIN_SUBJECTS_AGAINST else "neither"


def _check(tests: pd.DataFrame) -> None:
    missing = [c for c in _REQUIRED if c not in tests.columns]
    if missing:
        raise ValueError(
            f"tests table lacks columns {missing}; expected the contract's tests table (tables/tests.parquet)"
        )


def _prevalence(row: pd.Series) -> str:
    k = int(row["n_significant_subjects"])
    return f"{k}/{int(row['n_subjects'])}" if k >= 0 else "-"


def findings_table(tests: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """One row per test row of `tests` (columns `FINDING_COLUMNS`), ordered by dataset, model, signal, test."""
    _check(tests)
    order = {t: i for i, t in enumerate(TESTS)}
    rows = tests.assign(_order=tests["test"].map(order)).sort_values(
        ["dataset", "model", "signal", "_order", "level"], kind="mergesort"
    )
    out = rows.assign(
        measure=rows["measure"] if "measure" in rows.columns else "",
        prevalence=[_prevalence(r) for _, r in rows.iterrows()],
        evidence=[evidence(r, alpha) for _, r in rows.iterrows()],
    )
    return out[list(FINDING_COLUMNS)].reset_index(drop=True)


def _forward_ok(tests: pd.DataFrame, dataset: str, model: str, modality: str, alpha: float) -> bool | None:
    """Whether the activations pass the forward check of `modality` (None where it was not tested)."""
    rows = tests[
        (tests["dataset"] == dataset)
        & (tests["model"] == model)
        & (tests["signal"] == "act")
        & (tests["modality"] == modality)
        & tests["test"].isin([t for t in SCORE_TESTS if TESTS[t].forward])
    ]
    if not len(rows):
        return None
    return all(_significant(r, alpha) for _, r in rows.iterrows())


def verdicts(tests: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """The verdict (supported | rejected | undecided) per dataset × model × learning signal, with its reason.

    Columns: dataset, model, signal, verdict, reason (the tests counted for, against, neither and set aside).
    """
    _check(tests)
    score = tests[(tests["signal"] != "act") & tests["test"].isin(SCORE_TESTS)]
    rows = []
    for (dataset, model, signal), part in score.groupby(["dataset", "model", "signal"], sort=True):
        counted: dict[str, list[str]] = {"for": [], "against": [], "neither": [], "set aside": []}
        for _, row in part.iterrows():
            ok = _forward_ok(tests, dataset, model, row["modality"], alpha)
            kind = "set aside" if ok is False else evidence(row, alpha)
            counted[kind].append(row["test"])
        remaining = counted["for"] + counted["against"] + counted["neither"]
        if counted["against"]:
            verdict = "rejected"
        elif remaining and len(counted["for"]) == len(remaining):
            verdict = "supported"
        else:
            verdict = "undecided"
        why = {"set aside": " (the activations show no hierarchy in that modality)"}
        reason = "; ".join(f"{k}: {', '.join(v)}{why.get(k, '')}" for k, v in counted.items() if v)
        rows.append((dataset, model, signal, verdict, reason or "no hierarchy test ran"))
    return pd.DataFrame(rows, columns=["dataset", "model", "signal", "verdict", "reason"])


def _number(value: float) -> str:
    return "nan" if not np.isfinite(value) else f"{value:.3g}"


def _finding_line(row: pd.Series) -> str:
    level = f" {row['level']}" if row["level"] else ""
    measure = f" ({row['measure']})" if row["measure"] else ""
    interval = f"[{_number(row['ci_low'])}, {_number(row['ci_high'])}]"
    mark = f"  <- {row['evidence']}" if row["evidence"] else ""
    return (
        f"  {row['test']}{level}{measure}: effect {_number(row['effect'])} {interval}, p_fdr {_number(row['p_fdr'])}, "
        f"p_min {_number(row['p_min'])}, {row['prevalence']} subjects significant, null {row['method']}{mark}"
    )


def format_summary(tests: pd.DataFrame, alpha: float = 0.05, deviations: pd.DataFrame | None = None) -> str:
    """The findings and verdicts as text, one block per dataset × model × signal; then the deviations."""
    findings = findings_table(tests, alpha)
    verdict = verdicts(tests, alpha).set_index(["dataset", "model", "signal"])
    lines = [f"brainprop summary (alpha {alpha:g}; verdict rules: README, 'The verdict line')"]
    for key, part in findings.groupby(["dataset", "model", "signal"], sort=False):
        lines.append(f"\n{' / '.join(key)}")
        lines += [_finding_line(row) for _, row in part.iterrows()]
        if key in verdict.index:
            v = verdict.loc[key]
            lines.append(f"  backprop signature: {v['verdict'].upper()} ({v['reason']})")
        elif key[2] == "act":
            lines.append("  forward check of the activations (T1, S1a: a hierarchy in the forward direction)")
    if deviations is not None:
        lines.append("\nwhere this run departs from the reference study (docs/deviations.md):")
        if not len(deviations):
            lines.append("  nowhere")
        for _, d in deviations.iterrows():
            key = d["key"] or "(no config key)"
            lines.append(f"  {key}: {d['value']} (paper: {d['paper']}); {d['why']}")
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    """A table cell as RST text (no line breaks, backslashes and asterisks escaped)."""
    text = _number(value) if isinstance(value, float) else str(value)
    return " ".join(text.split()).replace("\\", "\\\\").replace("*", "\\*").replace("`", "'") or " "


def _list_table(title: str, header: list[str], rows: list[list[object]]) -> list[str]:
    lines = [f".. list-table:: {title}", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        lines.append(f"   * - {_cell(row[0])}")
        lines += [f"     - {_cell(c)}" for c in row[1:]]
    return lines + [""]


def summary_rst(tests: pd.DataFrame, alpha: float = 0.05, deviations: pd.DataFrame | None = None) -> str:
    """The verdicts, the findings and the deviations as reStructuredText (the report's opening page)."""
    findings = findings_table(tests, alpha)
    verdict = verdicts(tests, alpha)
    lines = ["Findings", "--------", ""]
    lines += [
        f"Verdicts by the rules of the README ('The verdict line'), at alpha = {alpha:g}; the tests table",
        "(``tables/tests.parquet``) has every column.",
        "",
    ]
    lines += _list_table(
        "The backprop signature per dataset, model and signal",
        ["dataset", "model", "signal", "verdict", "reason"],
        verdict.to_numpy().tolist(),
    )
    lines += _list_table(
        "Each test: effect [interval], p_fdr, p_min, prevalence, null",
        ["dataset", "model", "signal", "test", "level", "effect", "interval", "p_fdr", "p_min", "prevalence", "null"],
        [
            [
                r["dataset"],
                r["model"],
                r["signal"],
                r["test"],
                " ".join(filter(None, [r["level"], r["measure"]])),
                r["effect"],
                f"[{_number(r['ci_low'])}, {_number(r['ci_high'])}]",
                r["p_fdr"],
                r["p_min"],
                r["prevalence"],
                r["method"],
            ]  # fmt: skip
            for _, r in findings.iterrows()
        ],
    )
    if deviations is not None:
        lines += ["Deviations from the reference study", "-----------------------------------", ""]
        if len(deviations):
            lines += _list_table(
                "Where this run departs from the reference study (docs/deviations.md)",
                ["config key", "choice", "this run", "paper", "why"],
                [
                    [d["key"] or "(no config key)", d["choice"], d["value"], d["paper"], d["why"]]
                    for _, d in deviations.iterrows()
                ],
            )
        else:
            lines += ["This run departs from the reference study nowhere.", ""]
    return "\n".join(lines) + "\n"
