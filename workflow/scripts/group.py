from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.stats.group import run_group

    run_group(snakemake.input, snakemake.output, snakemake.params.group)
