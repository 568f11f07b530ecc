from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.features.prefetch import prefetch_models
    from brainprop.io import write_table

    table = prefetch_models(snakemake.params.models)
    for row in table.itertuples():
        log.info("prefetch: %s (%s) %s %s", row.model, row.timm_name, row.status, row.path)
    write_table(snakemake.output.table, table)
