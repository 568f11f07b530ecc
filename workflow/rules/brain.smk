# Brain: per subject, the target matrix aligned to the manifest, its target table and noise
# ceiling. Simulated datasets are planted from their source model's features under a finer
# pooling than the analysis reads (METHOD.md §7). Real datasets are first checked (`check`:
# what is present, missing or not in the published format) before anything heavy runs.


rule check:
    output:
        report=f"{OUT}/brain/{{dataset}}/check.parquet",
    params:
        entry=lambda wc: real_dataset_entry(wc.dataset),
    log:
        f"{LOGS}/check/{{dataset}}.log",
    benchmark:
        f"{BENCH}/check/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(10),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/check.py"


rule plant:
    input:
        manifest=lambda wc: manifest_of(DATASETS[wc.dataset]["imageset"]),
        layers=lambda wc: rules.layers.output.layers.format(model=source_model(wc.dataset)),
    output:
        features=directory(f"{OUT}/brain/{{dataset}}/plant"),
    params:
        model=lambda wc: plant_spec(wc.dataset),
        pooling=lambda wc: DATASETS[wc.dataset]["simulation"]["plant_pooling"],
        seed=config["seed"],
        storage_dtype="float32",
    log:
        f"{LOGS}/plant/{{dataset}}.log",
    benchmark:
        f"{BENCH}/plant/{{dataset}}.tsv"
    threads: 2
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime(60),
        extract_batch=lambda wc, attempt: extract_batch_size(source_model(wc.dataset), attempt),
        **gpu_resources(2),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/extract.py"


rule brain:
    input:
        unpack(brain_inputs),
    output:
        Y=f"{OUT}/brain/{{dataset}}/{{subject}}/Y.npy",
        targets=f"{OUT}/brain/{{dataset}}/{{subject}}/targets.parquet",
        samples=f"{OUT}/brain/{{dataset}}/{{subject}}/samples.parquet",
    params:
        spec=lambda wc: brain_params(wc.dataset),
        seed=config["seed"],
    log:
        f"{LOGS}/brain/{{dataset}}/{{subject}}.log",
    benchmark:
        f"{BENCH}/brain/{{dataset}}/{{subject}}.tsv"
    threads: 1
    resources:
        mem_mb=brain_mem_mb,
        runtime=brain_runtime,
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/brain.py"


rule truth:
    input:
        layers=lambda wc: rules.layers.output.layers.format(model=source_model(wc.dataset)),
    output:
        truth=f"{OUT}/truth/{{dataset}}.parquet",
    params:
        simulation=lambda wc: simulation_params(wc.dataset),
        subjects=lambda wc: DATASETS[wc.dataset]["subjects"],
        seed=config["seed"],
    log:
        f"{LOGS}/truth/{{dataset}}.log",
    benchmark:
        f"{BENCH}/truth/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=runtime(5),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/truth.py"
