from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.stats.compare import run_compare

    run_compare(snakemake.input, snakemake.output.comparisons, snakemake.params.compare)
