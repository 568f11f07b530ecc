# Real datasets (docs/datasets.md): the data check that runs before anything heavy, and the
# input functions that route image sets and subjects of real kinds to their readers.


def is_real(dataset):
    return DATASETS[dataset]["kind"] != "simulated"


def real_dataset_entry(dataset):
    """What a real dataset's check, manifest and subjects depend on: its whole config entry."""
    return dict(DATASETS[dataset])


def imageset_dataset(imageset):
    """The real dataset an image set of kind `dataset` belongs to, else None."""
    spec = config["stimuli"][imageset]
    return spec["dataset"] if spec["kind"] == "dataset" else None


def imageset_spec(imageset):
    """The stimuli rule's parameters: the image set entry, plus the dataset entry for kind `dataset`."""
    spec = dict(config["stimuli"][imageset])
    dataset = imageset_dataset(imageset)
    if dataset is not None:
        spec = {"kind": "dataset", "dataset": dataset, "entry": real_dataset_entry(dataset)}
    return spec


def imageset_inputs(wildcards):
    """A real dataset's image set waits for its data check."""
    dataset = imageset_dataset(wildcards.imageset)
    return {"check": rules.check.output.report.format(dataset=dataset)} if dataset else {}


def brain_inputs(wildcards):
    """Simulated subjects need the plant features; real subjects the manifest and the data check."""
    ds = wildcards.dataset
    if is_real(ds):
        return {"manifest": manifest_of(DATASETS[ds]["imageset"]),
                "check": rules.check.output.report.format(dataset=ds)}
    return {"plant": rules.plant.output.features,
            "layers": rules.layers.output.layers.format(model=source_model(ds))}


def brain_params(dataset):
    """A subject's parameters: the simulation of a simulated dataset, or a real dataset's entry."""
    if is_real(dataset):
        return {"entry": real_dataset_entry(dataset)}
    return {"simulation": simulation_params(dataset)}


rule check:
    output:
        report=f"{OUT}/brain/{{dataset}}/check.parquet",
    params:
        entry=lambda wc: real_dataset_entry(wc.dataset),
    log:
        f"{LOGS}/check/{{dataset}}.log",
    benchmark:
        f"{BENCH}/check/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime(10),
    conda:
        "../../envs/brainprop.yaml"
    script:
        "../scripts/check.py"
