# Statistics: the tests per dataset x model (T1, T2, S1a, S1b, E; per subject and across
# subjects), the model comparisons per dataset, the sensitivity of the tests to the open choices,
# (off by default) their calibration on simulated subjects, and the run's tables.


rule group:
    input:
        unpack(group_inputs),
    output:
        tests=RUN.path(stats_files.TESTS),
        subjects=RUN.path(stats_files.SUBJECT_STATS),
    log:
        f"{LOGS}/group/{{dataset}}/{{model}}.log",
    benchmark:
        f"{BENCH}/group/{{dataset}}/{{model}}.tsv"
    conda:
        "../../envs/brainprop.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(20),
    params:
        group=lambda wc: {
            **group_params(
                wc.dataset,
                config["stats"]["n_boot"],
                config["stats"]["n_permutations"],
            ),
            "roi_levels": DATASETS[wc.dataset]["roi_levels"],
            "meg_windows": DATASETS[wc.dataset]["meg_windows"],
            "reference": config["joint"]["reference"],
            "variant": variant_of(MODELS, wc.model),
        },
    script:
        "../scripts/run.py"


rule compare:
    input:
        subjects=lambda wc: expand(
            rules.group.output.subjects, dataset=wc.dataset, model=list(MODELS)
        ),
    output:
        comparisons=RUN.path(stats_files.COMPARISONS),
    log:
        f"{LOGS}/compare/{{dataset}}.log",
    benchmark:
        f"{BENCH}/compare/{{dataset}}.tsv"
    conda:
        "../../envs/brainprop.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(10),
    params:
        compare={
            "seed": config["seed"],
            "n_boot": config["stats"]["n_boot"],
            "alpha": config["stats"]["alpha"],
        },
    script:
        "../scripts/run.py"


rule sensitivity:
    input:
        encoding=lambda wc: subject_tables(wc.dataset, wc.model, "encoding"),
        target_depths=lambda wc: subject_tables(wc.dataset, wc.model, "target_depths"),
        variants=lambda wc: [
            rules.group.output.tests.format(dataset=wc.dataset, model=alias)
            for _, alias in RUN.sensitivity_variants(wc.model)
        ],
        joint=lambda wc: paths(
            rules.joint.output.summary, RUN.joint_keys(wc.dataset, wc.model)
        ),
    output:
        sensitivity=RUN.path(stats_files.SENSITIVITY),
    log:
        f"{LOGS}/sensitivity/{{dataset}}/{{model}}.log",
    benchmark:
        f"{BENCH}/sensitivity/{{dataset}}/{{model}}.tsv"
    conda:
        "../../envs/brainprop.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(20),
    params:
        sensitivity=lambda wc: {
            "model": wc.model,
            "variant_labels": [
                label for label, _ in RUN.sensitivity_variants(wc.model)
            ],
            "choices": {
                **{k: config["sensitivity"][k] for k in ("tmax_threshold", "exclude")},
                "reference": RUN.joint_references(wc.model)[1:],
            },
            "group": {
                **group_params(
                    wc.dataset,
                    config["stats"]["n_boot"],
                    config["stats"]["n_permutations"],
                ),
                "roi_levels": DATASETS[wc.dataset]["roi_levels"],
                "meg_windows": DATASETS[wc.dataset]["meg_windows"],
                "reference": config["joint"]["reference"],
            },
        },
    script:
        "../scripts/run.py"


rule calibration:
    input:
        plant=rules.plant.output.features,
        features=lambda wc: rules.extract.output.features.format(
            model=RUN.source_model(wc.dataset), imageset=RUN.imageset_of(wc.dataset)
        ),
        layers=source_layers,
        folds=rules.folds.output.folds,
    output:
        calibration=RUN.path(stats_files.CALIBRATION),
        figure=RUN.path(catalog.POWER),
        nulls=RUN.path(catalog.NULLS),
    log:
        f"{LOGS}/calibration/{{dataset}}.log",
    benchmark:
        f"{BENCH}/calibration/{{dataset}}.tsv"
    conda:
        "../../envs/brainprop.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb(8000),
        runtime=runtime(240),
    params:
        simulation=lambda wc: simulation_params(wc.dataset),
        calibration=config["calibration"],
        group=lambda wc: group_params(
            wc.dataset,
            config["calibration"]["n_boot"],
            config["calibration"]["n_permutations"],
        ),
        encoding=encode_params(),
        seed=config["seed"],
        dataset=lambda wc: wc.dataset,
    script:
        "../scripts/run.py"


rule tables:
    input:
        **{
            kind: [
                p
                for ds in DATASETS
                for m in MODELS
                for p in subject_tables(ds, m, kind)
            ]
            for kind in ("encoding", "best_layers", "tmax", "hierarchy")
        },
        tests=expand(rules.group.output.tests, dataset=DATASETS, model=MODELS),
        cka=sorted(set(paths(rules.cka.output.cka, RUN.extract_keys()))),
        comparisons=expand(rules.compare.output.comparisons, dataset=DATASETS),
        sensitivity=expand(
            rules.sensitivity.output.sensitivity,
            dataset=DATASETS,
            model=RUN.base_models,
        ),
    output:
        **{name: RUN.path(stats_files.TABLE.format(name=name)) for name in TABLE_NAMES},
    log:
        f"{LOGS}/tables/tables.log",
    benchmark:
        f"{BENCH}/tables/tables.tsv"
    conda:
        "../../envs/brainprop.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime(10),
    params:
        provenance={
            "seed": config["seed"],
            "models": {
                a: {"timm_name": model_label(m), "weights": m["weights"]}
                for a, m in MODELS.items()
            },
        },
    script:
        "../scripts/run.py"
