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
    wildcard_constraints:
        dataset=_choice(set(DATASETS) - set(SHARED_FITS)),
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
        timm_name=lambda wc: model_label(MODELS[wc.model]),
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


# Subjects who saw the same images in one order (THINGS-MEG): one job per layer fits them all,
# one decomposition per fold, and writes the same per-subject files as `encode`.
for _dataset in SHARED_FITS:

    rule:
        name:
            f"encode_shared_{_dataset}"
        input:
            features=rules.extract.output.features.format(
                model="{model}", imageset=DATASETS[_dataset]["imageset"]
            ),
            layers=rules.layers.output.layers,
            folds=rules.folds.output.folds.format(dataset=_dataset),
            Y=subject_files(_dataset, rules.brain.output.Y),
            targets=subject_files(_dataset, rules.brain.output.targets),
            samples=subject_files(_dataset, rules.brain.output.samples),
        output:
            scores=subject_files(_dataset, rules.encode.output.scores),
            summary=subject_files(_dataset, rules.encode.output.summary),
        params:
            encoding=encode_params(),
            timm_name=lambda wc: model_label(MODELS[wc.model]),
            dataset=_dataset,
            subjects=DATASETS[_dataset]["subjects"],
        log:
            f"{LOGS}/encode/{_dataset}/{{model}}/{{signal}}/{{layer}}/shared.log",
        benchmark:
            f"{BENCH}/encode/{_dataset}/{{model}}/{{signal}}/{{layer}}/shared.tsv"
        threads: 1
        resources:
            mem_mb=mem_mb(2000 * len(DATASETS[_dataset]["subjects"])),
            runtime=runtime(10 * len(DATASETS[_dataset]["subjects"])),
            gpu=encode_gpu(),
        conda:
            "../../envs/brainprop.yaml"
        script:
            "../scripts/encode_shared.py"
