"""Glue between Snakemake and the stages: each rule's entry point, its log, and its speed-ups.

Every rule's `script:` is `workflow/scripts/run.py`, which calls `run_rule(snakemake)`: the
rule's log receives logging, warnings and uncaught errors, and the stage's
`run_<rule>(*, inputs, outputs, params)` does the work (plus `runtime`, for the rules whose
work depends on how, not what, they compute). Stage code never sees the `snakemake` object.

Planning speed (README, "Scale"): Snakemake inspects the signature of every input, params and
resource function at each of its calls, once per job, and CPython's garbage collector rescans
the growing DAG again and again; `speed_up_planning` takes both off a large dry run.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import inspect
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ENTRY_POINTS", "entry_point", "mem_mb", "rule_log", "run_rule", "runtime", "speed_up_planning"]

# rule -> "module:function" of its stage (per-dataset rules `<rule>_<dataset>` take their rule's).
ENTRY_POINTS: dict[str, str] = {
    "stimuli": "brainprop.stimuli.rules:run_stimuli",
    "layers": "brainprop.features.rules:run_layers",
    "extract": "brainprop.features.rules:run_extract",
    "cka": "brainprop.features.rules:run_cka",
    "prefetch": "brainprop.features.rules:run_prefetch",
    "check": "brainprop.brain.rules:run_check",
    "plant": "brainprop.features.rules:run_extract",
    "brain": "brainprop.brain.rules:run_brain",
    "truth": "brainprop.brain.rules:run_truth",
    "folds": "brainprop.encoding.rules:run_folds",
    "encode": "brainprop.encoding.rules:run_encode",
    "encode_shared": "brainprop.encoding.rules:run_encode_shared",
    "joint": "brainprop.encoding.rules:run_joint",
    "joint_shared": "brainprop.encoding.rules:run_joint_shared",
    "hierarchy": "brainprop.hierarchy.rules:run_hierarchy",
    "hierarchy_shared": "brainprop.hierarchy.rules:run_hierarchy_shared",
    "group": "brainprop.stats.rules:run_group",
    "compare": "brainprop.stats.rules:run_compare",
    "sensitivity": "brainprop.stats.rules:run_sensitivity",
    "calibration": "brainprop.stats.rules:run_calibration",
    "tables": "brainprop.stats.rules:run_tables",
    "figures": "brainprop.figures.rules:run_figures",
    "brain_map": "brainprop.figures.rules:run_brain_map",
    "meg_topomaps": "brainprop.figures.rules:run_meg_topomaps",
}


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


def entry_point(rule: str) -> Callable:
    """The stage function a rule calls: its own entry, else that of the rule it is a per-dataset copy of."""
    name = (
        rule
        if rule in ENTRY_POINTS
        else max((k for k in ENTRY_POINTS if rule.startswith(f"{k}_")), key=len, default="")
    )
    if not name:
        raise KeyError(f"rule {rule!r} has no entry point; expected one of {sorted(ENTRY_POINTS)}")
    module, _, function = ENTRY_POINTS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def run_rule(smk) -> None:
    """Run the stage entry point of the rule a Snakemake `script:` job belongs to, logging to its log."""
    with rule_log(smk.log[0]):
        function = entry_point(smk.rule)
        extra = {}
        if "runtime" in inspect.signature(function).parameters:
            extra["runtime"] = {
                "threads": smk.threads,
                "resources": {k: v for k, v in smk.resources.items() if not k.startswith("_")},
                "device": smk.config["device"],
                "extraction": smk.config["extraction"],
                "config": dict(smk.config),
                "wildcards": dict(smk.wildcards.items()),  # to name config keys in messages
            }
        function(inputs=smk.input, outputs=smk.output, params=smk.params, **extra)


def _precomputed(func: Callable) -> Callable:
    """`func` with its signature computed once (Snakemake asks for it at every call)."""
    func.__signature__ = inspect.signature(func)
    return func


def mem_mb(base: int) -> Callable:
    """A memory request (MB) that grows with each retry."""
    return _precomputed(lambda wildcards, attempt: base * attempt)


def runtime(base: int) -> Callable:
    """A runtime request (minutes) that grows with each retry."""
    return _precomputed(lambda wildcards, attempt: base * attempt)


def speed_up_planning(rules) -> None:
    """Signatures of the rules' input and params functions computed once; the GC out of the DAG's way.

    Snakemake inspects a function's signature every time it calls it, once per job: on a full
    study (25k jobs) that was 2 s of the dry run. A full study's DAG is millions of small objects
    that live until Snakemake exits; CPython's default collector thresholds rescan them again and
    again (8 s of a 60 s dry run), so the objects alive now (imports, config) are frozen out of
    collection and the thresholds raised. Measured effect: 48.2 s -> 37.8 s on the full study
    (benchmarks/workflow.py).
    """
    for rule in rules:
        for item in [*rule.input, *rule.params]:
            if inspect.isfunction(item):
                _precomputed(item)
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    _remember_input_sizes()


def _remember_input_sizes() -> None:
    """Let Snakemake's scheduler stat each ready job's input once, not at every job selection.

    Before each selection, Snakemake 9's `JobScheduler.update_input_sizes` stats every input file
    of every ready job again (the sizes weigh its choice of the next job). A ready job's inputs
    are finished outputs whose size does not change, so a size already known is kept. On the
    demo this was half of the Snakemake process's CPU time, about 0.4 s per job on 2 cores
    (py-spy; benchmarks/demo.py). Only paths still missing (size None) are asked again.
    Skipped, unchanged, when the Snakemake version has no such method.
    """
    try:
        from snakemake.scheduling.job_scheduler import JobScheduler
    except ImportError:
        return
    original = getattr(JobScheduler, "update_input_sizes", None)
    if original is None or getattr(original, "_brainprop", False):
        return

    async def size(path) -> tuple:
        return path, await path.size() if await path.exists() else None

    async def update_input_sizes(self, jobs) -> None:
        known = self._input_sizes
        paths = {path for job in jobs for path in job.input if known.get(path) is None}
        if paths:
            known.update(await asyncio.gather(*[size(path) for path in paths]))

    update_input_sizes._brainprop = True
    JobScheduler.update_input_sizes = update_input_sizes
