# Brain: per subject, the target matrix aligned to the manifest, its target table and noise
# ceiling. Simulated datasets are planted from their source model's features under a finer
# pooling than the analysis reads (METHOD.md §7).


rule plant:
    input:
        manifest=lambda wc: manifest_of(DATASETS[wc.dataset]["imageset"]),
        layers=lambda wc: rules.layers.output.layers.format(model=source_model(wc.dataset)),
    output:
        features=directory(f"{OUT}/brain/{{dataset}}/plant"),
    params:
        model=lambda wc: model_spec(source_model(wc.dataset)),
        pooling=lambda wc: DATASETS[wc.dataset]["simulation"]["plant_pooling"],
        seed=config["seed"],
        device=config["device"],
    log:
        f"{LOGS}/plant/{{dataset}}.log",
    benchmark:
        f"{BENCH}/plant/{{dataset}}.tsv"
    threads: 2
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime(60),
        extract_batch=extract_batch(lambda wc: source_model(wc.dataset)),
        **gpu_resources(2),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/extract.py"


rule brain:
    input:
        plant=rules.plant.output.features,
        layers=lambda wc: rules.layers.output.layers.format(model=source_model(wc.dataset)),
    output:
        Y=f"{OUT}/brain/{{dataset}}/{{subject}}/Y.npy",
        targets=f"{OUT}/brain/{{dataset}}/{{subject}}/targets.parquet",
        samples=f"{OUT}/brain/{{dataset}}/{{subject}}/samples.parquet",
    params:
        simulation=lambda wc: simulation_params(wc.dataset),
        seed=config["seed"],
    log:
        f"{LOGS}/brain/{{dataset}}/{{subject}}.log",
    benchmark:
        f"{BENCH}/brain/{{dataset}}/{{subject}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(10),
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
