# Encoding: the dataset's outer folds (identical for every layer, signal and subject), then
# cross-validated ridge from one layer's features to one subject's targets.


rule folds:
    input:
        manifest=lambda wc: manifest_of(DATASETS[wc.dataset]["imageset"]),
    output:
        folds=f"{OUT}/encoding/{{dataset}}/folds.parquet",
    params:
        folds=config["encoding"]["folds"],
        group_folds=config["encoding"]["group_folds"],
        seed=config["seed"],
    log:
        f"{LOGS}/folds/{{dataset}}.log",
    benchmark:
        f"{BENCH}/folds/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=runtime(5),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/folds.py"


rule encode:
    input:
        features=lambda wc: rules.extract.output.features.format(
            model=wc.model, imageset=DATASETS[wc.dataset]["imageset"]
        ),
        layers=rules.layers.output.layers,
        folds=rules.folds.output.folds,
        Y=rules.brain.output.Y,
        targets=rules.brain.output.targets,
        samples=rules.brain.output.samples,
    output:
        scores=f"{OUT}/encoding/{{dataset}}/{{model}}/{{signal}}/{{layer}}/{{subject}}.targets.parquet",
        summary=f"{OUT}/encoding/{{dataset}}/{{model}}/{{signal}}/{{layer}}/{{subject}}.summary.parquet",
    params:
        encoding=encode_params(),
        timm_name=lambda wc: MODELS[wc.model]["timm_name"],
    log:
        f"{LOGS}/encode/{{dataset}}/{{model}}/{{signal}}/{{layer}}/{{subject}}.log",
    benchmark:
        f"{BENCH}/encode/{{dataset}}/{{model}}/{{signal}}/{{layer}}/{{subject}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(10),
        gpu=encode_gpu(),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/encode.py"
