from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.hierarchy import run_hierarchy

    run_hierarchy(snakemake.input.summaries, snakemake.output, snakemake.params.hierarchy)
