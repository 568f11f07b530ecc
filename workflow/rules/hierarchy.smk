# Hierarchy: per subject, best layers (per ROI and per fMRI target), T_max and the spatial/temporal
# scores; then the group tests per dataset x model, and the run's tables.


rule hierarchy:
    input:
        summaries=lambda wc: encode_outputs(wc.dataset, wc.model, wc.subject),
        scores=lambda wc: encode_outputs(wc.dataset, wc.model, wc.subject, "targets"),
        targets=rules.brain.output.targets,
    output:
        encoding=f"{OUT}/hierarchy/{{dataset}}/{{model}}/{{subject}}/encoding.parquet",
        best_layers=f"{OUT}/hierarchy/{{dataset}}/{{model}}/{{subject}}/best_layers.parquet",
        tmax=f"{OUT}/hierarchy/{{dataset}}/{{model}}/{{subject}}/tmax.parquet",
        hierarchy=f"{OUT}/hierarchy/{{dataset}}/{{model}}/{{subject}}/hierarchy.parquet",
        target_depths=f"{OUT}/hierarchy/{{dataset}}/{{model}}/{{subject}}/target_depths.parquet",
    params:
        hierarchy=lambda wc: hierarchy_params(wc.dataset),
    log:
        f"{LOGS}/hierarchy/{{dataset}}/{{model}}/{{subject}}.log",
    benchmark:
        f"{BENCH}/hierarchy/{{dataset}}/{{model}}/{{subject}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(10),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/hierarchy.py"


rule group:
    input:
        encoding=lambda wc: subject_outputs(wc.dataset, wc.model, "encoding"),
        best_layers=lambda wc: subject_outputs(wc.dataset, wc.model, "best_layers"),
        tmax=lambda wc: subject_outputs(wc.dataset, wc.model, "tmax"),
        hierarchy=lambda wc: subject_outputs(wc.dataset, wc.model, "hierarchy"),
        joint=lambda wc: joint_outputs(wc.dataset, wc.model),
    output:
        tests=f"{OUT}/group/{{dataset}}/{{model}}/tests.parquet",
        subjects=f"{OUT}/group/{{dataset}}/{{model}}/subjects.parquet",
    params:
        group=lambda wc: {
            **hierarchy_params(wc.dataset),
            "seed": config["seed"],
            "n_permutations": config["stats"]["n_permutations"],
            "n_boot": config["stats"]["n_boot"],
            "alpha": config["stats"]["alpha"],
            "roi_levels": DATASETS[wc.dataset]["roi_levels"],
            "meg_windows": DATASETS[wc.dataset]["meg_windows"],
            "variant": variant_of(MODELS, wc.model),
        },
    log:
        f"{LOGS}/group/{{dataset}}/{{model}}.log",
    benchmark:
        f"{BENCH}/group/{{dataset}}/{{model}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(20),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/group.py"


rule tables:
    input:
        encoding=hierarchy_outputs("encoding"),
        best_layers=hierarchy_outputs("best_layers"),
        tmax=hierarchy_outputs("tmax"),
        hierarchy=hierarchy_outputs("hierarchy"),
        tests=expand(f"{OUT}/group/{{dataset}}/{{model}}/tests.parquet", dataset=DATASETS, model=MODELS),
        cka=sorted(
            {
                rules.cka.output.cka.format(model=m, imageset=ds["imageset"])
                for m in MODELS
                for ds in DATASETS.values()
            }
        ),
        comparisons=expand(rules.compare.output.comparisons, dataset=DATASETS),
        sensitivity=expand(rules.sensitivity.output.sensitivity, dataset=DATASETS, model=BASE_MODELS),
    output:
        **{name: f"{OUT}/tables/{name}.parquet" for name in TABLE_NAMES},
    params:
        provenance={
            "seed": config["seed"],
            "models": {a: {"timm_name": model_label(m), "weights": m["weights"]} for a, m in MODELS.items()},
        },
    log:
        f"{LOGS}/tables/tables.log",
    benchmark:
        f"{BENCH}/tables/tables.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime(10),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/tables.py"
