from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.brain.datasets import run_check

    run_check(snakemake.params.entry, snakemake.wildcards.dataset, snakemake.output.report)
