# Features: the selected layers of each model, then activations and gradients of every layer
# from one tracked forward and one backward pass per batch.


checkpoint layers:
    output:
        layers=f"{OUT}/features/{{model}}/layers.parquet",
    params:
        model=lambda wc: {k: MODELS[wc.model][k] for k in ("source", "name", "kwargs")},
        input_size=lambda wc: MODELS[wc.model]["input_size"],
        layers=lambda wc: MODELS[wc.model]["layers"],
        pooling=lambda wc: MODELS[wc.model]["pooling"],
    log:
        f"{LOGS}/layers/{{model}}.log",
    benchmark:
        f"{BENCH}/layers/{{model}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(10),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/layers.py"


rule extract:
    input:
        manifest=lambda wc: manifest_of(wc.imageset),
        layers=rules.layers.output.layers,
    output:
        features=directory(f"{OUT}/features/{{model}}/{{imageset}}/extract"),
    params:
        model=lambda wc: model_spec(wc.model),
        pooling=lambda wc: MODELS[wc.model]["pooling"],
        seed=config["seed"],
        storage_dtype=config["extraction"]["storage_dtype"],
    log:
        f"{LOGS}/extract/{{model}}/{{imageset}}.log",
    benchmark:
        f"{BENCH}/extract/{{model}}/{{imageset}}.tsv"
    threads: 2
    resources:
        mem_mb=extract_mem_mb,
        runtime=extract_runtime,
        # Not params: batch size does not change the features, so it must not trigger a rerun.
        extract_batch=lambda wc, attempt: extract_batch_size(wc.model, attempt),
        **gpu_resources(2),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/extract.py"


rule cka:
    input:
        features=rules.extract.output.features,
        layers=rules.layers.output.layers,
    output:
        cka=f"{OUT}/features/{{model}}/{{imageset}}/cka.parquet",
    params:
        signals=lambda wc: MODELS[wc.model]["signals"],
    log:
        f"{LOGS}/cka/{{model}}/{{imageset}}.log",
    benchmark:
        f"{BENCH}/cka/{{model}}/{{imageset}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime(10),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/cka.py"
