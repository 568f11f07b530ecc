# The one place that reads and checks the config, names the outputs and defines input functions.
from pathlib import Path

from brainprop.config import ConfigError, validate_config
from brainprop.figures import FIGURES, figure_names
from brainprop.simulate import params_from_config

try:
    validate_config(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None


RUN = config["run"]
OUT = f"results/{RUN}"
LOGS = f"{OUT}/logs"
BENCH = f"{OUT}/benchmarks"
DATASETS = config["datasets"]
MODELS = config["models"]
SUBJECTS = sorted({s for ds in DATASETS.values() for s in ds["subjects"]})
SIGNALS = sorted({s for m in MODELS.values() for s in m["signals"]})


def _choice(values):
    return "|".join(sorted(values))


wildcard_constraints:
    imageset=_choice(config["stimuli"]),
    model=_choice(MODELS),
    dataset=_choice(DATASETS),
    subject=_choice(SUBJECTS),
    signal=_choice(SIGNALS),
    layer=r"\d{2}",


def mem_mb(base):
    """Memory request that grows with each retry."""
    return lambda wildcards, attempt: base * attempt


def runtime(base):
    """Runtime request (minutes) that grows with each retry."""
    return lambda wildcards, attempt: base * attempt


def on_cuda():
    """Whether feature extraction runs on CUDA (only then do rules ask for a GPU)."""
    if config["device"] == "cuda":
        return True
    if config["device"] == "cpu":
        return False
    import shutil

    return shutil.which("nvidia-smi") is not None


def manifest_of(imageset):
    return f"{OUT}/stimuli/{imageset}/manifest.parquet"


def layers_of(model):
    """Layer ordinals of a model, known once the `layers` checkpoint has run."""
    import pandas as pd

    path = checkpoints.layers.get(model=model).output.layers
    return [f"{i:02d}" for i in pd.read_parquet(path, columns=["layer_index"])["layer_index"]]


def model_spec(model):
    """The keys of a model entry that feature extraction depends on."""
    keys = ("timm_name", "weights", "timm_kwargs", "input_size", "loss", "loss_params", "batch_size", "signals")
    return {k: MODELS[model][k] for k in keys}


def encode_params():
    """What an encode job depends on (the device only when the torch backend uses it)."""
    enc = config["encoding"]
    params = {"alphas": enc["alphas"], "backend": enc["backend"], "dtype": enc["dtype"]}
    if enc["backend"] == "torch":
        params["device"] = config["device"]
    return params


def encode_outputs(dataset, model, subject):
    return expand(
        f"{OUT}/encoding/{dataset}/{model}/{{signal}}/{{layer}}/{subject}.summary.parquet",
        signal=MODELS[model]["signals"],
        layer=layers_of(model),
    )


def hierarchy_outputs(kind):
    return [
        f"{OUT}/hierarchy/{ds}/{model}/{subject}/{kind}.parquet"
        for ds, cfg in DATASETS.items()
        for model in MODELS
        for subject in cfg["subjects"]
    ]


def dataset_modalities():
    """Modalities each dataset carries (simulated datasets carry fMRI and MEG, real ones their kind's)."""
    from brainprop.datasets import modality

    return {name: {"fmri", "meg"} if ds["kind"] == "simulated" else {modality(ds["kind"])}
            for name, ds in DATASETS.items()}


def final_outputs():
    tables = expand(f"{OUT}/tables/{{name}}.parquet", name=TABLE_NAMES)
    figures = [f"{OUT}/figures/{n}" for n in figure_names(dataset_modalities(), config["figures"]["formats"])]
    truth = [f"{OUT}/truth/{ds}.parquet" for ds, cfg in DATASETS.items() if cfg["kind"] == "simulated"]
    return tables + figures + truth


TABLE_NAMES = ["encoding", "best_layers", "tmax", "hierarchy", "tests", "cka"]


def source_model(dataset):
    return DATASETS[dataset]["simulation"]["source_model"]


def simulation_params(dataset):
    """What a simulated subject depends on: the simulation entry plus atlas and reference ROI."""
    return params_from_config(DATASETS[dataset])


def hierarchy_params(dataset):
    """Settings shared by the hierarchy and group stages (they must agree)."""
    return {
        "atlas": DATASETS[dataset]["atlas"],
        "threshold": config["hierarchy"]["tmax_threshold"],
        "min_count": config["hierarchy"]["min_count"],
        "exclude": config["hierarchy"]["exclude"],
    }


def subject_outputs(dataset, model, kind):
    return [
        f"{OUT}/hierarchy/{dataset}/{model}/{subject}/{kind}.parquet"
        for subject in DATASETS[dataset]["subjects"]
    ]


def figure_outputs():
    """Every figure file; PNGs are registered in the report with their kind's caption."""
    paths = []
    for name in figure_names(dataset_modalities(), config["figures"]["formats"]):
        path = f"{OUT}/figures/{name}"
        kind = next(k for k in FIGURES if name.startswith(f"{k}_"))
        if name.endswith(".png"):
            path = report(path, caption=f"../report/{kind}.rst", category="figures", subcategory=kind)
        paths.append(path)
    return paths


# ---- real datasets (docs/datasets.md): route image sets and subjects of real kinds to their readers


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


# Real subjects hold one session plus the per-image sums (NSD fsaverage: ~4 GB for 10,000
# images x 40,000 vertices; THINGS-MEG: ~2 GB for 22,448 images x 11,382 sensor-times).
REAL_BRAIN_MEM_MB = 16000
REAL_BRAIN_RUNTIME = 240


def brain_mem_mb(wildcards, attempt):
    return (REAL_BRAIN_MEM_MB if is_real(wildcards.dataset) else 2000) * attempt


def brain_runtime(wildcards, attempt):
    return (REAL_BRAIN_RUNTIME if is_real(wildcards.dataset) else 10) * attempt


def brain_params(dataset):
    """A subject's parameters: the simulation of a simulated dataset, or a real dataset's entry."""
    if is_real(dataset):
        return {"entry": real_dataset_entry(dataset)}
    return {"simulation": simulation_params(dataset)}
