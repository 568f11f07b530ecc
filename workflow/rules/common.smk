# The one place that reads and checks the config, names the outputs and defines input functions.
from pathlib import Path

from brainprop.config import ConfigError, validate_config
from brainprop.figures import FIGURES, figure_names
from brainprop.simulate import params_from_config
from brainprop.variants import model_variants, variant_of

try:
    validate_config(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None


RUN = config["run"]
OUT = f"results/{RUN}"
LOGS = f"{OUT}/logs"
BENCH = f"{OUT}/benchmarks"
DATASETS = config["datasets"]
# The configured models plus their control and sensitivity variants (alias "{model}__{variant}").
MODELS = model_variants(config["models"], config["sensitivity"])
BASE_MODELS = [alias for alias, entry in MODELS.items() if not entry["variant"]]
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
    """Modalities each dataset carries (simulated datasets carry fMRI and MEG)."""
    return {name: {"fmri", "meg"} for name in DATASETS}


def final_outputs():
    tables = expand(f"{OUT}/tables/{{name}}.parquet", name=TABLE_NAMES)
    figures = [f"{OUT}/figures/{n}" for n in figure_names(dataset_modalities(), config["figures"]["formats"])]
    truth = [f"{OUT}/truth/{ds}.parquet" for ds, cfg in DATASETS.items() if cfg["kind"] == "simulated"]
    return tables + figures + truth + calibration_outputs()


TABLE_NAMES = ["encoding", "best_layers", "tmax", "hierarchy", "tests", "cka", "comparisons", "sensitivity"]


def joint_outputs(dataset, model):
    """Joint-model summaries of every layer and subject (none when off or a signal is missing)."""
    chosen = config["joint"]["models"]
    if not config["joint"]["enabled"] or not {"act", "grad"} <= set(MODELS[model]["signals"]):
        return []
    if chosen is not None and model not in chosen and MODELS[model]["base_model"] not in chosen:
        return []
    return expand(
        f"{OUT}/joint/{dataset}/{model}/{{layer}}/{{subject}}.summary.parquet",
        layer=layers_of(model),
        subject=DATASETS[dataset]["subjects"],
    )


def sensitivity_variants(model):
    """(label "choice=value", alias) of the pooling and loss variants of a configured model."""
    out = []
    for alias, entry in MODELS.items():
        choice, _, value = entry["variant"].partition("_")
        if entry["base_model"] == model and choice in ("pooling", "loss"):
            out.append((f"{choice}={value}", alias))
    return out


def calibration_outputs():
    """The calibration table and power figure of each simulated dataset, when calibration is on."""
    if not config["calibration"]["enabled"]:
        return []
    simulated = [ds for ds, cfg in DATASETS.items() if cfg["kind"] == "simulated"]
    return [f"{OUT}/calibration/{ds}/calibration.parquet" for ds in simulated] + [
        f"{OUT}/figures/power_{ds}.png" for ds in simulated
    ]


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
