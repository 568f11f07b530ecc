from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.features.layers import resolve_layers
    from brainprop.io import write_table

    p = snakemake.params
    layers = resolve_layers(p.model, p.layers, p.pooling, p.input_size)
    log.info("%s: %d layers selected\n%s", p.model["name"], len(layers), layers.to_string())
    write_table(snakemake.output.layers, layers, {"model": p.model})
