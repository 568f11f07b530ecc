# Stimuli: the ordered image set every feature and brain matrix is indexed by.


rule stimuli:
    input:
        unpack(imageset_inputs),
    output:
        manifest=RUN.path(stimuli_files.MANIFEST),
    log:
        f"{LOGS}/stimuli/{{imageset}}.log",
    benchmark:
        f"{BENCH}/stimuli/{{imageset}}.tsv"
    conda:
        "../../envs/brainprop.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(10),
    params:
        spec=lambda wc: imageset_spec(wc.imageset),
        seed=config["seed"],
    script:
        "../scripts/run.py"
