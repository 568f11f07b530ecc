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
        truth={ds: f"{OUT}/truth/{ds}.parquet" for ds in SIMULATED},
        alpha=config["stats"]["alpha"],
        tables_dir=f"{OUT}/tables",
        out_dir=f"{OUT}/figures",
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


def _map_rule_input(wc):
    """Per-target scores of every signal × layer × subject, the subjects' target tables and the tables."""
    return {
        "scores": target_score_outputs(wc.dataset, wc.model),
        "targets": [
            rules.brain.output.targets.format(dataset=wc.dataset, subject=s)
            for s in DATASETS[wc.dataset]["subjects"]
        ],
        "encoding": f"{OUT}/tables/encoding.parquet",
        "tmax": f"{OUT}/tables/tmax.parquet",
    }


rule brain_map:
    input:
        unpack(_map_rule_input),
    output:
        figures=expand(
            f"{OUT}/figures/brain_map_{{{{dataset}}}}_{{{{model}}}}.{{fmt}}", fmt=config["figures"]["formats"]
        ),
    params:
        formats=config["figures"]["formats"],
        fdr=config["stats"]["map_fdr"],
        radius_mm=config["figures"]["map_radius_mm"],
        tables_dir=f"{OUT}/tables",
        out_dir=f"{OUT}/figures",
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
        unpack(_map_rule_input),
    output:
        figures=expand(
            f"{OUT}/figures/meg_topomaps_{{{{dataset}}}}_{{{{model}}}}.{{fmt}}",
            fmt=config["figures"]["formats"],
        ),
    params:
        formats=config["figures"]["formats"],
        tables_dir=f"{OUT}/tables",
        out_dir=f"{OUT}/figures",
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
