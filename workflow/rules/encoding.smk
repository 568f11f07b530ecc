# Encoding: cross-validated ridge from one layer's features to one subject's targets.


rule encode:
    input:
        features=lambda wc: rules.extract.output.features.format(
            model=wc.model, imageset=DATASETS[wc.dataset]["imageset"]
        ),
        layers=rules.layers.output.layers,
        Y=rules.brain.output.Y,
        targets=rules.brain.output.targets,
        samples=rules.brain.output.samples,
    output:
        scores=f"{OUT}/encoding/{{dataset}}/{{model}}/{{signal}}/{{layer}}/{{subject}}.targets.parquet",
        summary=f"{OUT}/encoding/{{dataset}}/{{model}}/{{signal}}/{{layer}}/{{subject}}.summary.parquet",
    params:
        encoding=config["encoding"],
        seed=config["seed"],
        timm_name=lambda wc: MODELS[wc.model]["timm_name"],
    log:
        f"{LOGS}/encode/{{dataset}}/{{model}}/{{signal}}/{{layer}}/{{subject}}.log",
    benchmark:
        f"{BENCH}/encode/{{dataset}}/{{model}}/{{signal}}/{{layer}}/{{subject}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(10),
    script:
        "../scripts/encode.py"
