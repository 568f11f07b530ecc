# Joint models: activations and gradients of one layer fitted together by banded ridge (one
# penalty per signal), giving each signal's unique variance per target for the E test.


rule joint:
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
        scores=f"{OUT}/joint/{{dataset}}/{{model}}/{{layer}}/{{subject}}.targets.parquet",
        summary=f"{OUT}/joint/{{dataset}}/{{model}}/{{layer}}/{{subject}}.summary.parquet",
    params:
        joint={"alphas": config["joint"]["alphas"]},
    log:
        f"{LOGS}/joint/{{dataset}}/{{model}}/{{layer}}/{{subject}}.log",
    benchmark:
        f"{BENCH}/joint/{{dataset}}/{{model}}/{{layer}}/{{subject}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(3000),
        runtime=runtime(20),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/joint.py"
