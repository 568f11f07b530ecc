"""Snakemake with two of its per-job costs computed once, to measure what an upstream fix would give.

Not used by the workflow: benchmarks/workflow.py runs both the full study and the trivial
Snakefile through it, beside the stock Snakemake, to show how much of the dry-run ratio sits in
these two places of Snakemake 9.27:

1. `snakemake.common.get_function_params` calls `inspect.signature` at every call of an input,
   params or resource function, once per job and function (for resources also on Snakemake's
   own bound `Resource.evaluate`, which no workflow can precompute). Here it is cached per
   function.
2. `ScriptProcessor.process_job` formats and looks up the `script:` file of every job in the
   source cache (smart_open's `parse_uri` builds a namedtuple class per call). Here it is
   checked once per rule and script, as long as the path has no wildcards (brainprop's have none).

Usage: python benchmarks/snakemake_upstream.py <snakemake arguments>
"""

from __future__ import annotations

import sys

import snakemake.api
import snakemake.common
import snakemake.dag
import snakemake.jobs
import snakemake.rules

_PARAMS: dict = {}
_stock_params = snakemake.common.get_function_params


def get_function_params(func):
    """The parameters of `func`, computed once per function."""
    key = getattr(func, "__func__", func)
    if key not in _PARAMS:
        _PARAMS[key] = _stock_params(func)
    return _PARAMS[key]


_CHECKED: set = set()
_stock_process_job = snakemake.dag.ScriptProcessor.process_job


def process_job(self, job) -> None:
    """Check a rule's script once, not once per job."""
    key = (job.rule.name, str(job.rule.script))
    if key not in _CHECKED:
        _stock_process_job(self, job)
        _CHECKED.add(key)


snakemake.common.get_function_params = get_function_params
snakemake.rules.get_function_params = get_function_params
snakemake.jobs.get_function_params = get_function_params
snakemake.dag.ScriptProcessor.process_job = process_job

if __name__ == "__main__":
    from snakemake.cli import main

    sys.argv[0] = "snakemake"
    sys.exit(main())
