"""The figure catalog: what a run draws, named without the drawing libraries."""

from __future__ import annotations

import subprocess
import sys

from brainprop.figures import catalog, maps
from brainprop.figures.catalog import FIGURES, figure_entries
from brainprop.stats.registry import RULE_PREDICTIONS


def test_catalog_imports_no_drawing_library():
    # The Snakefile imports it at every Snakemake start, cluster jobs included.
    code = (
        "import sys, brainprop.figures.catalog; "
        "print(sorted(m for m in ('matplotlib', 'scipy', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_learning_signals_are_every_signal_but_act():
    # figure_entries draws the rule signatures for any signal but act: exactly the predicted ones.
    from brainprop.features.extract import SIGNALS

    assert set(RULE_PREDICTIONS) == set(SIGNALS) - {"act"}
    with_grad = catalog.figure_names({"d": {"fmri"}}, ("png",), models=["m"], signals=["act", "grad"])
    act_only = catalog.figure_names({"d": {"fmri"}}, ("png",), models=["m"], signals=["act"])
    assert set(with_grad) - set(act_only) == {"rule_signatures_d.png"}


def test_drawing_modules_use_the_catalog():
    assert figure_entries is catalog.figure_entries and FIGURES is catalog.FIGURES
    assert maps.map_names is catalog.map_names and maps.MAP_FIGURES is catalog.MAP_FIGURES
