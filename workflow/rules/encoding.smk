# The encoding stage: the dataset's outer folds (identical for every layer, signal and subject), then
# cross-validated ridge from one layer's features to one subject's targets, and the joint
# models: one layer's gradients fitted together with a reference (the forward stack: every
# layer's activations and the model output; or the layer's own activations) by banded ridge (one
# penalty per band), giving the gradients' unique variance for the E test.


rule folds:
    input:
        manifest=lambda wc: rules.stimuli.output.manifest.format(
            imageset=RUN.imageset_of(wc.dataset)
        ),
    output:
        folds=RUN.path(encoding_files.FOLDS),
    log:
        f"{LOGS}/folds/{{dataset}}.log",
    benchmark:
        f"{BENCH}/folds/{{dataset}}.tsv"
    conda:
        "../../envs/brainprop.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=runtime(5),
    params:
        folds=config["encoding"]["folds"],
        group_folds=config["encoding"]["group_folds"],
        seed=config["seed"],
    script:
        "../scripts/run.py"


rule encode:
    input:
        features=dataset_features,
        layers=rules.layers.output.layers,
        folds=rules.folds.output.folds,
        Y=rules.brain.output.Y,
        targets=rules.brain.output.targets,
        samples=rules.brain.output.samples,
    output:
        scores=RUN.path(encoding_files.SCORES),
        summary=RUN.path(encoding_files.SUMMARY),
    log:
        f"{LOGS}/encode/{{dataset}}/{{model}}/{{signal}}/{{layer}}/{{subject}}.log",
    benchmark:
        f"{BENCH}/encode/{{dataset}}/{{model}}/{{signal}}/{{layer}}/{{subject}}.tsv"
    wildcard_constraints:
        dataset=_choice(set(DATASETS) - set(RUN.shared)),
    conda:
        "../../envs/brainprop.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(10),
        gpu=encode_gpu(),
    params:
        identity=lambda wc: {
            "dataset": wc.dataset,
            "model": wc.model,
            "timm_name": model_label(MODELS[wc.model]),
            "signal": wc.signal,
            "subject": wc.subject,
        },
        layer=lambda wc: int(wc.layer),
        encoding=lambda wc: encode_params(wc.model),
        null=target_null_params(),
    script:
        "../scripts/run.py"


# Subjects who saw the same images in one order (THINGS-MEG): one job per layer fits them all,
# one decomposition per fold, and writes the same per-subject files as `encode`.
for shared_dataset in RUN.shared:

    rule:
        name:
            f"encode_shared_{shared_dataset}"
        input:
            features=rules.extract.output.features.format(
                model="{model}", imageset=RUN.imageset_of(shared_dataset)
            ),
            layers=rules.layers.output.layers,
            folds=rules.folds.output.folds.format(dataset=shared_dataset),
            Y=subject_files(shared_dataset, rules.brain.output.Y),
            targets=subject_files(shared_dataset, rules.brain.output.targets),
            samples=subject_files(shared_dataset, rules.brain.output.samples),
        output:
            scores=subject_files(shared_dataset, rules.encode.output.scores),
            summary=subject_files(shared_dataset, rules.encode.output.summary),
        log:
            f"{LOGS}/encode/{shared_dataset}/{{model}}/{{signal}}/{{layer}}/shared.log",
        benchmark:
            f"{BENCH}/encode/{shared_dataset}/{{model}}/{{signal}}/{{layer}}/shared.tsv"
        conda:
            "../../envs/brainprop.yaml"
        threads: 1
        resources:
            mem_mb=mem_mb(2000 * len(DATASETS[shared_dataset]["subjects"])),
            runtime=runtime(10 * len(DATASETS[shared_dataset]["subjects"])),
            gpu=encode_gpu(),
        params:
            identity=lambda wc, ds=shared_dataset: {
                "dataset": ds,
                "model": wc.model,
                "timm_name": model_label(MODELS[wc.model]),
                "signal": wc.signal,
            },
            layer=lambda wc: int(wc.layer),
            encoding=lambda wc: encode_params(wc.model),
            null=target_null_params(),
            subjects=DATASETS[shared_dataset]["subjects"],
        script:
            "../scripts/run.py"


rule joint:
    input:
        features=dataset_features,
        layers=rules.layers.output.layers,
        folds=rules.folds.output.folds,
        Y=rules.brain.output.Y,
        targets=rules.brain.output.targets,
        samples=rules.brain.output.samples,
    output:
        summary=RUN.path(encoding_files.JOINT),
    log:
        f"{LOGS}/joint/{{dataset}}/{{model}}/{{layer}}/{{subject}}.log",
    benchmark:
        f"{BENCH}/joint/{{dataset}}/{{model}}/{{layer}}/{{subject}}.tsv"
    wildcard_constraints:
        dataset=_choice(set(DATASETS) - set(RUN.shared)),
    conda:
        "../../envs/brainprop.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(3000),
        runtime=runtime(20),
    params:
        identity=lambda wc: {
            "dataset": wc.dataset,
            "model": wc.model,
            "subject": wc.subject,
        },
        layer=lambda wc: int(wc.layer),
        joint=lambda wc: joint_params(wc.model),
    script:
        "../scripts/run.py"


# As encode_shared: one job per model x layer fits every subject's targets in one banded fit.
for shared_dataset in RUN.shared:

    rule:
        name:
            f"joint_shared_{shared_dataset}"
        input:
            features=rules.extract.output.features.format(
                model="{model}", imageset=RUN.imageset_of(shared_dataset)
            ),
            layers=rules.layers.output.layers,
            folds=rules.folds.output.folds.format(dataset=shared_dataset),
            Y=subject_files(shared_dataset, rules.brain.output.Y),
            targets=subject_files(shared_dataset, rules.brain.output.targets),
            samples=subject_files(shared_dataset, rules.brain.output.samples),
        output:
            summary=subject_files(shared_dataset, rules.joint.output.summary),
        log:
            f"{LOGS}/joint/{shared_dataset}/{{model}}/{{layer}}/shared.log",
        benchmark:
            f"{BENCH}/joint/{shared_dataset}/{{model}}/{{layer}}/shared.tsv"
        conda:
            "../../envs/brainprop.yaml"
        threads: 1
        resources:
            mem_mb=mem_mb(3000 * len(DATASETS[shared_dataset]["subjects"])),
            runtime=runtime(20 * len(DATASETS[shared_dataset]["subjects"])),
        params:
            identity=lambda wc, ds=shared_dataset: {"dataset": ds, "model": wc.model},
            layer=lambda wc: int(wc.layer),
            joint=lambda wc: joint_params(wc.model),
            subjects=DATASETS[shared_dataset]["subjects"],
        script:
            "../scripts/run.py"
