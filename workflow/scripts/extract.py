from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.features.extract import run_extract

    p, res = snakemake.params, snakemake.resources
    # A retry (e.g. after running out of memory) has half the batch and twice the memory: see
    # extract_batch and extract_mem_mb in workflow/rules/common.smk.
    batch_size = res.get("extract_batch", p.model["batch_size"])
    log.info("batch size %d (configured %d), mem_mb %s", batch_size, p.model["batch_size"], res.get("mem_mb"))
    run_extract(
        snakemake.input.manifest, snakemake.input.layers, snakemake.output.features, p.model, p.pooling,
        seed=p.seed, device=p.device, batch_size=batch_size, signals=p.model["signals"],
        threads=snakemake.threads,
    )
