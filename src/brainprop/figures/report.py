"""The report's opening pages: the findings and deviations first (RST for the main text, HTML for the tests page).

`write_summary_rst` writes `report/summary.rst`, which `workflow/report/workflow.rst` includes at
the top of the report's main text: the verdict per dataset × model × signal, each test's finding
(`brainprop.stats.summary`) and where the run departs from the reference study
(`brainprop.deviations`). The tests page (`write_tests_html`) opens with the same tables, then the
full tests table.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import atomic_path
from .comparison import TESTS_COLUMNS
from .style import check_table

__all__ = ["tests_html", "write_summary_rst", "write_tests_html"]


def _html(table: pd.DataFrame, css: str) -> str:
    return table.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0, classes=css)


def tests_html(tests: pd.DataFrame, alpha: float = 0.05, deviations: pd.DataFrame | None = None) -> str:
    """The tests page: verdicts, findings and deviations first, then the tests table (dataset, model, signal, test)."""
    from ..stats.summary import findings_table, verdicts

    check_table(tests, "tests", TESTS_COLUMNS)
    order = {t: i for i, t in enumerate(("T1", "T2", "S1a", "S1b", "E"))}
    rows = tests.assign(_order=tests["test"].map(order).fillna(len(order)))
    rows = rows.sort_values(["dataset", "model", "signal", "_order", *(["level"] if "level" in rows else [])])
    columns = [
        c
        for c in (
            "dataset",
            "modality",
            "model",
            "signal",
            "test",
            "level",
            "alternative",
            "effect",
            "ci_low",
            "ci_high",
            "p",
            "p_min",
            "p_fdr",
            "n_subjects",
            "n_significant_subjects",
        )
        if c in rows.columns
    ]
    findings = findings_table(tests, alpha).drop(columns=["alternative"])
    parts = [
        f"<h2>Verdicts (README, 'The verdict line'; alpha {alpha:g})</h2>",
        _html(verdicts(tests, alpha), "tests"),
        "<h2>Findings</h2>",
        _html(findings, "tests"),
    ]
    if deviations is not None:
        parts += ["<h2>Deviations from the reference study (docs/deviations.md)</h2>"]
        parts += [_html(deviations, "tests") if len(deviations) else "<p>None.</p>"]
    parts += ["<h2>Tests</h2>", _html(rows[columns], "tests")]
    style = (
        "body{font-family:sans-serif;font-size:13px} table.tests{border-collapse:collapse}"
        "table.tests th,table.tests td{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>brainprop tests</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def write_tests_html(
    tests: pd.DataFrame, path: Path, alpha: float = 0.05, deviations: pd.DataFrame | None = None
) -> None:
    """Write the report's tests page (findings, deviations, the tests table) as HTML to `path`, atomically."""
    html = tests_html(tests, alpha, deviations)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(html, encoding="utf-8")


def write_summary_rst(
    tests: pd.DataFrame, path: Path, alpha: float = 0.05, deviations: pd.DataFrame | None = None
) -> None:
    """Write the report's opening text (verdicts, findings, deviations; `summary_rst`) to `path`, atomically."""
    from ..stats.summary import summary_rst

    with atomic_path(path) as tmp:
        Path(tmp).write_text(summary_rst(tests, alpha, deviations), encoding="utf-8")
