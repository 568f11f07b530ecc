# Statistics beyond the per-model tests: model comparisons per dataset, the sensitivity of the
# tests to the open choices per dataset x model, and (off by default) the calibration of the
# tests on simulated subjects.


rule compare:
    input:
        subjects=lambda wc: expand(
            f"{OUT}/group/{wc.dataset}/{{model}}/subjects.parquet", model=list(MODELS)
        ),
    output:
        comparisons=f"{OUT}/compare/{{dataset}}/comparisons.parquet",
    params:
        compare={"seed": config["seed"], "n_boot": config["stats"]["n_boot"], "alpha": config["stats"]["alpha"]},
    log:
        f"{LOGS}/compare/{{dataset}}.log",
    benchmark:
        f"{BENCH}/compare/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(10),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/compare.py"


rule sensitivity:
    input:
        encoding=lambda wc: subject_outputs(wc.dataset, wc.model, "encoding"),
        variants=lambda wc: [
            f"{OUT}/group/{wc.dataset}/{alias}/tests.parquet" for _, alias in sensitivity_variants(wc.model)
        ],
    output:
        sensitivity=f"{OUT}/sensitivity/{{dataset}}/{{model}}.parquet",
    params:
        sensitivity=lambda wc: {
            "model": wc.model,
            "variant_labels": [label for label, _ in sensitivity_variants(wc.model)],
            "choices": {k: config["sensitivity"][k] for k in ("tmax_threshold", "exclude")},
            "group": {
                **hierarchy_params(wc.dataset),
                "seed": config["seed"],
                "n_permutations": config["stats"]["n_permutations"],
                "n_boot": config["stats"]["n_boot"],
                "alpha": config["stats"]["alpha"],
            },
        },
    log:
        f"{LOGS}/sensitivity/{{dataset}}/{{model}}.log",
    benchmark:
        f"{BENCH}/sensitivity/{{dataset}}/{{model}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(20),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/sensitivity.py"


rule calibration:
    input:
        plant=rules.plant.output.features,
        features=lambda wc: rules.extract.output.features.format(
            model=source_model(wc.dataset), imageset=DATASETS[wc.dataset]["imageset"]
        ),
        layers=lambda wc: rules.layers.output.layers.format(model=source_model(wc.dataset)),
        folds=rules.folds.output.folds,
    output:
        calibration=f"{OUT}/calibration/{{dataset}}/calibration.parquet",
        figure=f"{OUT}/figures/power_{{dataset}}.png",
    params:
        simulation=lambda wc: simulation_params(wc.dataset),
        calibration=config["calibration"],
        group=lambda wc: {
            **hierarchy_params(wc.dataset),
            "seed": config["seed"],
            "n_boot": 100,
            "alpha": config["stats"]["alpha"],
            "n_permutations": config["calibration"]["n_permutations"],
        },
        encoding=encode_params(),
        seed=config["seed"],
    log:
        f"{LOGS}/calibration/{{dataset}}.log",
    benchmark:
        f"{BENCH}/calibration/{{dataset}}.tsv"
    threads: 2
    resources:
        mem_mb=mem_mb(8000),
        runtime=runtime(240),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/calibration.py"
