from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.features.layers import resolve_layers
    from brainprop.io import write_table

    p = snakemake.params
    layers = resolve_layers(p.timm_name, p.layers, p.pooling, p.input_size, p.timm_kwargs)
    log.info("%s: %d layers selected\n%s", p.timm_name, len(layers), layers.to_string())
    write_table(snakemake.output.layers, layers, {"timm_name": p.timm_name})
