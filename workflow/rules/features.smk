# Features: the selected layers of each model, then activations and gradients of every layer
# from one tracked forward and one backward pass per batch, and their layer x layer CKA.
# `prefetch` (not part of `rule all`) downloads the pretrained weights on a node with internet.


checkpoint layers:
    output:
        layers=RUN.path(features_files.LAYERS),
    log:
        f"{LOGS}/layers/{{model}}.log",
    benchmark:
        f"{BENCH}/layers/{{model}}.tsv"
    conda:
        "../../envs/brainprop.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(10),
    params:
        model=lambda wc: {k: MODELS[wc.model][k] for k in ("source", "name", "kwargs")},
        input_size=lambda wc: MODELS[wc.model]["input_size"],
        layers=lambda wc: MODELS[wc.model]["layers"],
        pooling=lambda wc: MODELS[wc.model]["pooling"],
    script:
        "../scripts/run.py"


rule extract:
    input:
        manifest=rules.stimuli.output.manifest,
        layers=rules.layers.output.layers,
        weights=lambda wc: weight_files(wc.model),
    output:
        features=directory(RUN.path(features_files.EXTRACT)),
    log:
        f"{LOGS}/extract/{{model}}/{{imageset}}.log",
    benchmark:
        f"{BENCH}/extract/{{model}}/{{imageset}}.tsv"
    conda:
        "../../envs/brainprop.yaml"
    threads: 2
    resources:
        **gpu_resources(2),
        mem_mb=extract_mem_mb,
        runtime=extract_runtime,
        # Not params: batch size does not change the features, so it must not trigger a rerun.
        extract_batch=lambda wc, attempt: extract_batch_size(wc.model, attempt),
    params:
        model=lambda wc: RUN.feature_spec(wc.model),
        pooling=lambda wc: MODELS[wc.model]["pooling"],
        seed=config["seed"],
        storage_dtype=config["extraction"]["storage_dtype"],
    script:
        "../scripts/run.py"


rule cka:
    input:
        features=rules.extract.output.features,
        layers=rules.layers.output.layers,
    output:
        cka=RUN.path(features_files.CKA),
    log:
        f"{LOGS}/cka/{{model}}/{{imageset}}.log",
    benchmark:
        f"{BENCH}/cka/{{model}}/{{imageset}}.tsv"
    conda:
        "../../envs/brainprop.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime(10),
    params:
        signals=lambda wc: MODELS[wc.model]["signals"],
        model=lambda wc: wc.model,
        imageset=lambda wc: wc.imageset,
    script:
        "../scripts/run.py"


localrules:
    prefetch,


rule prefetch:
    output:
        table=RUN.path(features_files.PREFETCH),
    log:
        f"{LOGS}/prefetch/prefetch.log",
    benchmark:
        f"{BENCH}/prefetch/prefetch.tsv"
    conda:
        "../../envs/brainprop.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(120),
    params:
        models={
            alias: {k: m[k] for k in ("source", "name", "kwargs", "weights")}
            for alias, m in MODELS.items()
            if m["weights"] == "pretrained"
        },
    script:
        "../scripts/run.py"
