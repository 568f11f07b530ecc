from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.hierarchy.scores import run_hierarchy

    i = snakemake.input
    run_hierarchy(i.summaries, snakemake.output, snakemake.params.hierarchy, i.scores, i.targets)
