# Figures: drawn from the run's tables (and, for brain maps and topomaps, the encode rule's
# per-target scores), registered in the Snakemake report with captions.


rule figures:
    input:
        tables=expand(f"{OUT}/tables/{{name}}.parquet", name=TABLE_NAMES),
        truth=[f"{OUT}/truth/{ds}.parquet" for ds in SIMULATED],
    output:
        figures=figure_outputs(),
        tests=report(
            f"{OUT}/report/tests.html",
            caption="../report/tests.rst",
            category="tests",
            labels={"table": "T1, T2, S1a, S1b, E"},
        ),
    params:
        formats=config["figures"]["formats"],
        roi_levels={name: ds["roi_levels"] for name, ds in DATASETS.items()},
        truth=lambda wc, input: dict(zip(SIMULATED, input.truth)),
        alpha=config["stats"]["alpha"],
        tables_dir=lambda wc, input: Path(input.tables[0]).parent,
        out_dir=lambda wc, output: Path(output.figures[0]).parent,
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


rule brain_map:
    input:
        unpack(map_inputs),
    output:
        figures=expand(
            f"{OUT}/figures/{{kind}}_{{{{dataset}}}}_{{{{model}}}}.{{fmt}}",
            kind=["brain_map", "glass_brain"],
            fmt=config["figures"]["formats"],
        ),
    params:
        formats=config["figures"]["formats"],
        fdr=config["stats"]["map_fdr"],
        radius_mm=config["figures"]["map_radius_mm"],
        out_dir=lambda wc, output: Path(output.figures[0]).parent,
    log:
        f"{LOGS}/brain_map/{{dataset}}/{{model}}.log",
    benchmark:
        f"{BENCH}/brain_map/{{dataset}}/{{model}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime(20),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/maps.py"


rule meg_topomaps:
    input:
        unpack(map_inputs),
    output:
        figures=expand(
            f"{OUT}/figures/meg_topomaps_{{{{dataset}}}}_{{{{model}}}}.{{fmt}}",
            fmt=config["figures"]["formats"],
        ),
    params:
        formats=config["figures"]["formats"],
        out_dir=lambda wc, output: Path(output.figures[0]).parent,
    log:
        f"{LOGS}/meg_topomaps/{{dataset}}/{{model}}.log",
    benchmark:
        f"{BENCH}/meg_topomaps/{{dataset}}/{{model}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime(10),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/maps.py"
