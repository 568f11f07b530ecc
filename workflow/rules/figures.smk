# Figures: drawn from the run's tables (and, for brain maps and topomaps, the per-target scores
# and the hierarchy stage's per-subject tables), registered in the Snakemake report with captions.


rule figures:
    input:
        **{name: rules.tables.output[name] for name in catalog.FIGURE_TABLES},
        truth=paths(rules.truth.output.truth, [{"dataset": ds} for ds in RUN.simulated]),
    output:
        figures=figure_outputs(),
        tests=report(
            RUN.path(catalog.TESTS_PAGE),
            caption="../report/tests.rst",
            category="tests",
            labels={"table": "T1, T2, S1a, S1b, E"},
        ),
        summary=report(
            RUN.path(catalog.SUMMARY_PAGE),
            caption="../report/summary.rst",
            category="tests",
            labels={"table": "findings and deviations"},
        ),
    log:
        f"{LOGS}/figures/figures.log",
    benchmark:
        f"{BENCH}/figures/figures.tsv"
    conda:
        "../../envs/brainprop.yaml"
    # The run's last job: its figures are drawn by two processes, so the demo's tail uses both cores.
    threads: 2
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime(10),
    params:
        formats=config["figures"]["formats"],
        roi_levels={name: ds["roi_levels"] for name, ds in DATASETS.items()},
        simulated=RUN.simulated,
        alpha=config["stats"]["alpha"],
        spatial_unit=config["hierarchy"]["spatial_unit"],
        deviations=run_deviations(config).to_dict("records"),
    script:
        "../scripts/run.py"


rule brain_map:
    input:
        unpack(map_inputs),
    output:
        figures=expand(
            RUN.path(catalog.FIGURE.format(name="{kind}_{{dataset}}_{{model}}.{fmt}")),
            kind=["brain_map", "glass_brain"],
            fmt=config["figures"]["formats"],
        ),
    log:
        f"{LOGS}/brain_map/{{dataset}}/{{model}}.log",
    benchmark:
        f"{BENCH}/brain_map/{{dataset}}/{{model}}.tsv"
    conda:
        "../../envs/brainprop.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime(20),
    params:
        formats=config["figures"]["formats"],
        fdr=config["stats"]["map_fdr"],
        radius_mm=config["figures"]["map_radius_mm"],
        dataset=lambda wc: wc.dataset,
        model=lambda wc: wc.model,
        subjects=lambda wc: DATASETS[wc.dataset]["subjects"],
    script:
        "../scripts/run.py"


rule meg_topomaps:
    input:
        unpack(map_inputs),
    output:
        figures=expand(
            RUN.path(
                catalog.FIGURE.format(name="meg_topomaps_{{dataset}}_{{model}}.{fmt}")
            ),
            fmt=config["figures"]["formats"],
        ),
    log:
        f"{LOGS}/meg_topomaps/{{dataset}}/{{model}}.log",
    benchmark:
        f"{BENCH}/meg_topomaps/{{dataset}}/{{model}}.tsv"
    conda:
        "../../envs/brainprop.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime(10),
    params:
        formats=config["figures"]["formats"],
        dataset=lambda wc: wc.dataset,
        model=lambda wc: wc.model,
        subjects=lambda wc: DATASETS[wc.dataset]["subjects"],
    script:
        "../scripts/run.py"
