# Figures: drawn from the run's tables, registered in the Snakemake report with captions.
from brainprop.figures import FIGURES


def figure_outputs():
    """Every figure file; PNGs are registered in the report with their kind's caption."""
    paths = []
    for name in figure_names(dataset_modalities(), config["figures"]["formats"]):
        path = f"{OUT}/figures/{name}"
        kind = next(k for k in FIGURES if name.startswith(k + "_"))
        if name.endswith(".png"):
            path = report(path, caption=f"../report/{kind}.rst", category="figures", subcategory=kind)
        paths.append(path)
    return paths


rule figures:
    input:
        tables=expand(f"{OUT}/tables/{{name}}.parquet", name=TABLE_NAMES),
    output:
        figure_outputs(),
    params:
        formats=config["figures"]["formats"],
        roi_levels={name: ds["roi_levels"] for name, ds in DATASETS.items()},
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
    script:
        "../scripts/figures.py"
