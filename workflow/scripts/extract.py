from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.features.extract import run_extract

    p = snakemake.params
    run_extract(
        snakemake.input.manifest, snakemake.input.layers, snakemake.output.features, p.model, p.pooling,
        seed=p.seed, device=p.device, batch_size=p.model["batch_size"], signals=p.model["signals"],
        threads=snakemake.threads,
    )
