# Prefetch: download the pretrained models' weights into the Hugging Face cache on a node with
# internet (`snakemake prefetch` on a login node), so offline extract jobs find them.
# Not part of `rule all`: run it explicitly before a cluster run.


localrules:
    prefetch,


rule prefetch:
    output:
        table=f"{OUT}/prefetch.parquet",
    params:
        models={
            alias: {k: m[k] for k in ("source", "name", "kwargs", "weights")}
            for alias, m in MODELS.items()
            if m["weights"] == "pretrained"
        },
    log:
        f"{LOGS}/prefetch/prefetch.log",
    benchmark:
        f"{BENCH}/prefetch/prefetch.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(120),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/prefetch.py"
