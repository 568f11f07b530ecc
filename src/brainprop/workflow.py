"""Glue for Snakemake `script:` entry points: route logging and warnings to the rule's log."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["rule_log"]


@contextmanager
def rule_log(path: str | Path) -> Iterator[logging.Logger]:
    """Send logging, warnings and uncaught errors of a rule's script to its log file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        old_stderr = sys.stderr
        sys.stderr = fh
        logging.captureWarnings(True)
        try:
            yield logging.getLogger("brainprop")
        except Exception:
            logging.getLogger("brainprop").exception("rule failed")
            raise
        finally:
            sys.stderr = old_stderr
            root.removeHandler(handler)
            logging.captureWarnings(False)
            warnings.resetwarnings()
