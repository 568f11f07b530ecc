# Stimuli: the ordered image set every feature and brain matrix is indexed by.


rule stimuli:
    input:
        unpack(imageset_inputs),
    output:
        manifest=f"{OUT}/stimuli/{{imageset}}/manifest.parquet",
    params:
        spec=lambda wc: imageset_spec(wc.imageset),
        seed=config["seed"],
    log:
        f"{LOGS}/stimuli/{{imageset}}.log",
    benchmark:
        f"{BENCH}/stimuli/{{imageset}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(10),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/stimuli.py"
