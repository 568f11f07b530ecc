from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.stats.tables import run_tables

    # The whole config goes into the tables' provenance but is not a param: settings that change
    # no number (batch size, device, workers) must not rerun the tables.
    provenance = {**snakemake.params.provenance, "config": dict(snakemake.config)}
    run_tables(snakemake.input, snakemake.output, provenance)
