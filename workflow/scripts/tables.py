from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.tables import run_tables

    run_tables(snakemake.input, snakemake.output, snakemake.params.provenance)
