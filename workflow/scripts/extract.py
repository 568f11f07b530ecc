from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.features.rules import run_extract

    p, res = snakemake.params, snakemake.resources
    # Device, batch size, workers and the cache location change how, not what, is computed:
    # they come from the config and resources, not params, so changing them reruns nothing.
    # A retry (e.g. after running out of memory) has half the batch and twice the memory: see
    # extract_batch_size and extract_mem_mb in workflow/rules/common.smk. 0 means auto.
    batch_size = getattr(res, "extract_batch", 0)
    log.info("batch size %s, mem_mb %s", batch_size or "auto", getattr(res, "mem_mb", None))
    options = snakemake.config["extraction"]
    run_extract(
        snakemake.input.manifest,
        snakemake.input.layers,
        snakemake.output.features,
        p.model,
        p.pooling,
        seed=p.seed,
        device=snakemake.config["device"],
        batch_size=batch_size or "auto",
        signals=p.model["signals"],
        threads=snakemake.threads,
        cache_dir=options["cache_dir"],
        shard_size=options["shard_size"],
        workers=options["workers"],
        storage_dtype=p.storage_dtype,
        progress_every_s=options["progress_every_s"],
    )
