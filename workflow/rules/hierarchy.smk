# Hierarchy: per subject, best layers (per ROI and per fMRI target), T_max and the spatial and
# temporal scores of every signal. Datasets whose subjects share their fits (encode_shared_*) get
# one job per model for all subjects (hierarchy_shared_*: the same files; their encode jobs rewrite
# every subject's scores anyway); the others one job per subject.


rule hierarchy:
    input:
        unpack(hierarchy_inputs),
    output:
        encoding=RUN.path(hierarchy_files.ENCODING),
        best_layers=RUN.path(hierarchy_files.BEST_LAYERS),
        tmax=RUN.path(hierarchy_files.TMAX),
        hierarchy=RUN.path(hierarchy_files.HIERARCHY),
        target_depths=RUN.path(hierarchy_files.TARGET_DEPTHS),
    log:
        f"{LOGS}/hierarchy/{{dataset}}/{{model}}/{{subject}}.log",
    benchmark:
        f"{BENCH}/hierarchy/{{dataset}}/{{model}}/{{subject}}.tsv"
    wildcard_constraints:
        dataset=_choice(set(DATASETS) - set(RUN.shared)),
    conda:
        "../../envs/brainprop.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(10),
    params:
        hierarchy=lambda wc: hierarchy_params(wc.dataset),
    script:
        "../scripts/run.py"


for shared_dataset in RUN.shared:

    rule:
        name:
            f"hierarchy_shared_{shared_dataset}"
        input:
            unpack(lambda wc, ds=shared_dataset: hierarchy_shared_inputs(ds, wc.model)),
        output:
            **{
                kind: subject_files(
                    shared_dataset,
                    RUN.path(getattr(hierarchy_files, kind.upper())),
                )
                for kind in (
                    "encoding",
                    "best_layers",
                    "tmax",
                    "hierarchy",
                    "target_depths",
                )
            },
        log:
            f"{LOGS}/hierarchy/{shared_dataset}/{{model}}/shared.log",
        benchmark:
            f"{BENCH}/hierarchy/{shared_dataset}/{{model}}/shared.tsv"
        conda:
            "../../envs/brainprop.yaml"
        threads: 1
        resources:
            mem_mb=mem_mb(2000),
            runtime=runtime(2 * len(DATASETS[shared_dataset]["subjects"])),
        params:
            hierarchy=hierarchy_params(shared_dataset),
            subjects=DATASETS[shared_dataset]["subjects"],
        script:
            "../scripts/run.py"
