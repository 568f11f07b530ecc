# Figures: drawn from the run's tables, registered in the Snakemake report with captions.


rule figures:
    input:
        tables=expand(f"{OUT}/tables/{{name}}.parquet", name=TABLE_NAMES),
    output:
        figure_outputs(),
    params:
        formats=config["figures"]["formats"],
        roi_levels={name: ds["roi_levels"] for name, ds in DATASETS.items()},
        tables_dir=lambda wc, input: Path(input.tables[0]).parent,
        out_dir=lambda wc, output: Path(output[0]).parent,
    log:
        f"{LOGS}/figures/figures.log",
    benchmark:
        f"{BENCH}/figures/figures.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime(10),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/figures.py"
