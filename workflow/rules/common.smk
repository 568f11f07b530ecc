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


def gpu_resources(threads):
    """GPU resources of a job on `device`, one GPU and its threads per GPU on CUDA, else none."""
    return {"gpu": 1, "cpus_per_gpu": threads} if on_cuda() else {"gpu": 0, "cpus_per_gpu": 0}


def encode_gpu():
    """An encode job asks for a GPU only when the torch backend runs on CUDA."""
    return 1 if config["encoding"]["backend"] == "torch" and on_cuda() else 0


def _extract_sizes(model, imageset, layers_path):
    """Feature megabytes, batch size and input size of one extract job (dims once `layers` has run)."""
    import pandas as pd

    from brainprop.plan import feature_bytes

    spec = MODELS[model]
    n_layers = spec["layers"].get("n", 22) if not spec["layers"].get("names") else len(spec["layers"]["names"])
    dims = [4096] * n_layers  # before the layers table exists: the projection's cap per layer
    if layers_path and Path(layers_path).exists():
        dims = list(pd.read_parquet(layers_path, columns=["dim"])["dim"])
    n_images = config["stimuli"][imageset]["n_images"]
    features_mb = feature_bytes(dims, n_images, len(spec["signals"])) / 2**20
    return features_mb, spec["batch_size"], spec["input_size"] or 224


def extract_mem_mb(wildcards, input, attempt):
    """Memory of an extract job from the config's sizes, doubling per retry (the batch halves)."""
    from brainprop.plan import extract_mem_mb as estimate

    features_mb, batch, size = _extract_sizes(wildcards.model, wildcards.imageset, input.get("layers"))
    return estimate(features_mb, batch, size, attempt)


def extract_batch(model):
    """Batch size of an extract attempt: the model's, halved per retry (passed as a resource)."""
    from brainprop.plan import batch_for_attempt

    return lambda wildcards, attempt: batch_for_attempt(MODELS[model(wildcards)]["batch_size"], attempt)


def extract_runtime(wildcards, attempt):
    """Runtime (minutes) of an extract job from the image count, growing per retry."""
    from brainprop.plan import extract_runtime_min

    n_images = config["stimuli"][wildcards.imageset]["n_images"]
    return extract_runtime_min(n_images, len(MODELS[wildcards.model]["signals"]), on_cuda(), attempt)


def manifest_of(imageset):
    return f"{OUT}/stimuli/{imageset}/manifest.parquet"


_LAYERS_READ = {}


def layers_of(model):
    """Layer ordinals of a model, known once the `layers` checkpoint has run."""
    import pandas as pd

    path = checkpoints.layers.get(model=model).output.layers
    # Read each table once per version: a full study asks for it once per dataset x subject.
    key = (path, Path(path).stat().st_mtime_ns)
    if key not in _LAYERS_READ:
        table = pd.read_parquet(path, columns=["layer_index"])
        _LAYERS_READ[key] = [f"{i:02d}" for i in table["layer_index"]]
    return _LAYERS_READ[key]


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
    """Modalities each dataset carries (simulated datasets carry fMRI and MEG)."""
    return {name: {"fmri", "meg"} for name in DATASETS}


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
