# Brain: per subject, the target matrix aligned to the manifest, its target table and noise
# ceiling. Simulated datasets are planted from their source model's features under a finer
# pooling than the analysis reads (METHOD.md §7). Real datasets are first checked (`check`:
# what is present, missing or not in the published format) before anything heavy runs.


rule check:
    output:
        report=RUN.path(brain_files.CHECK),
    log:
        f"{LOGS}/check/{{dataset}}.log",
    benchmark:
        f"{BENCH}/check/{{dataset}}.tsv"
    conda:
        "../../envs/brainprop.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(10),
    params:
        entry=lambda wc: dict(DATASETS[wc.dataset]),
        dataset=lambda wc: wc.dataset,
    script:
        "../scripts/run.py"


rule plant:
    input:
        manifest=lambda wc: rules.stimuli.output.manifest.format(
            imageset=RUN.imageset_of(wc.dataset)
        ),
        layers=source_layers,
        weights=lambda wc: weight_files(RUN.source_model(wc.dataset)),
    output:
        features=directory(RUN.path(brain_files.PLANT)),
    log:
        f"{LOGS}/plant/{{dataset}}.log",
    benchmark:
        f"{BENCH}/plant/{{dataset}}.tsv"
    conda:
        "../../envs/brainprop.yaml"
    threads: 2
    resources:
        **gpu_resources(2),
        mem_mb=mem_mb(4000),
        runtime=runtime(60),
        extract_batch=lambda wc, attempt: extract_batch_size(
            RUN.source_model(wc.dataset), attempt
        ),
    params:
        model=lambda wc: plant_spec(wc.dataset),
        pooling=lambda wc: DATASETS[wc.dataset]["simulation"]["plant_pooling"],
        seed=config["seed"],
        storage_dtype="float32",
    script:
        "../scripts/run.py"


rule brain:
    input:
        unpack(brain_inputs),
    output:
        Y=RUN.path(brain_files.Y),
        targets=RUN.path(brain_files.TARGETS),
        samples=RUN.path(brain_files.SAMPLES),
    log:
        f"{LOGS}/brain/{{dataset}}/{{subject}}.log",
    benchmark:
        f"{BENCH}/brain/{{dataset}}/{{subject}}.tsv"
    conda:
        "../../envs/brainprop.yaml"
    threads: 1
    resources:
        mem_mb=brain_mem_mb,
        runtime=brain_runtime,
    params:
        spec=lambda wc: brain_params(wc.dataset),
        seed=config["seed"],
        dataset=lambda wc: wc.dataset,
        subject=lambda wc: wc.subject,
    script:
        "../scripts/run.py"


rule truth:
    input:
        layers=source_layers,
    output:
        truth=RUN.path(brain_files.TRUTH),
    log:
        f"{LOGS}/truth/{{dataset}}.log",
    benchmark:
        f"{BENCH}/truth/{{dataset}}.tsv"
    conda:
        "../../envs/brainprop.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=runtime(5),
    params:
        simulation=lambda wc: simulation_params(wc.dataset),
        subjects=lambda wc: DATASETS[wc.dataset]["subjects"],
        seed=config["seed"],
        dataset=lambda wc: wc.dataset,
    script:
        "../scripts/run.py"
