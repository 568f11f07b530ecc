"""The report's tests page: the run's tests table as HTML."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import atomic_path
from .comparison import TESTS_COLUMNS
from .style import check_table

__all__ = ["tests_html", "write_tests_html"]


def tests_html(tests: pd.DataFrame) -> str:
    """The tests table as a small HTML page for the report, rows ordered by dataset, model, signal, test."""
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
    table = rows[columns].to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0, classes="tests")
    style = (
        "body{font-family:sans-serif;font-size:13px} table.tests{border-collapse:collapse}"
        "table.tests th,table.tests td{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>brainprop tests</title>"
        f"<style>{style}</style></head><body>{table}</body></html>\n"
    )


def write_tests_html(tests: pd.DataFrame, path: Path) -> None:
    """Write the run's tests table as HTML to `path`, atomically."""
    html = tests_html(tests)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(html, encoding="utf-8")
