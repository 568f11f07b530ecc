from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.features.cka import cka_table
    from brainprop.io import write_table

    table = cka_table(snakemake.input.features, snakemake.input.layers, snakemake.params.signals)
    table.insert(0, "model", snakemake.wildcards.model)
    table.insert(1, "imageset", snakemake.wildcards.imageset)
    write_table(snakemake.output.cka, table)
