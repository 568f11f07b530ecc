# Hierarchy: per subject, best layers (per ROI and per fMRI target), T_max and the spatial and
# temporal scores of every signal.


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
