# The one place that reads and checks the config, names the outputs and defines input functions.
import gc
import inspect
from pathlib import Path

from brainprop.figures.catalog import figure_entries, map_names
from brainprop.config import ConfigError, validate_config
from brainprop.brain.datasets import shared_fits
from brainprop.brain.simulate import params_from_config
from brainprop.run import model_variants, variant_of
from brainprop.features.sources import model_label

try:
    validate_config(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None


RUN = config["run"]
OUT = f"results/{RUN}"
LOGS = f"{OUT}/logs"
BENCH = f"{OUT}/benchmarks"
DATASETS = config["datasets"]
SIMULATED = [name for name, ds in DATASETS.items() if ds["kind"] == "simulated"]
# Datasets whose subjects saw the same images in one order: one encode_shared job per layer fits them all.
SHARED_FITS = shared_fits(config)
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


def precomputed_signature(func):
    """`func` with its signature computed once.

    Snakemake inspects a function's signature every time it calls it, once per job: on a
    full study (25k jobs) that was 2 s of the dry run (benchmarks/workflow.py).
    """
    func.__signature__ = inspect.signature(func)
    return func


def precompute_signatures(rules):
    """Precompute the signatures of every input and params function of `rules`."""
    for r in rules:
        for item in [*r.input, *r.params]:
            if inspect.isfunction(item):
                precomputed_signature(item)


def tune_gc():
    """Collect garbage less often while Snakemake builds a large DAG.

    A full study's DAG is millions of small objects that live until Snakemake exits; CPython's
    default thresholds rescan them again and again (8 s of a 60 s dry run). Objects from before
    this call (imports, config) are frozen out of collection for the same reason.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def mem_mb(base):
    """Memory request that grows with each retry."""
    return precomputed_signature(lambda wildcards, attempt: base * attempt)


def runtime(base):
    """Runtime request (minutes) that grows with each retry."""
    return precomputed_signature(lambda wildcards, attempt: base * attempt)


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


def _n_images(imageset, manifest=None):
    """Images of an image set (brainprop.plan.image_count: demo n_images, else manifest, else published design)."""
    from brainprop.plan import image_count

    return image_count(config, imageset, manifest)


def _extract_sizes(model, imageset, layers_path, manifest=None):
    """Feature megabytes, batch size and input size of one extract job (dims once `layers` has run)."""
    import pandas as pd

    from brainprop.plan import feature_bytes

    spec = MODELS[model]
    n_layers = spec["layers"].get("n", 22) if not spec["layers"].get("names") else len(spec["layers"]["names"])
    dims = [4096] * n_layers  # before the layers table exists: the projection's cap per layer
    if layers_path and Path(layers_path).exists():
        dims = list(pd.read_parquet(layers_path, columns=["dim"])["dim"])
    features_mb = feature_bytes(dims, _n_images(imageset, manifest), len(spec["signals"])) / 2**20
    batch = spec["batch_size"] if spec["batch_size"] != "auto" else 32  # host memory: auto sizes GPU batches
    return features_mb, batch, spec["input_size"] or 224


def extract_mem_mb(wildcards, input, attempt):
    """Memory of an extract job from the config's sizes, doubling per retry (the batch halves)."""
    from brainprop.plan import extract_mem_mb as estimate

    features_mb, batch, size = _extract_sizes(wildcards.model, wildcards.imageset, input.get("layers"),
                                              input.get("manifest"))
    return estimate(features_mb, batch, size, attempt)


def extract_runtime(wildcards, input, attempt):
    """Runtime (minutes) of an extract job from the image count, growing per retry."""
    from brainprop.plan import extract_runtime_min

    n_images = _n_images(wildcards.imageset, input.get("manifest"))
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
    """The keys of a model entry that the extracted features depend on (not batch size or device)."""
    keys = ("source", "name", "kwargs", "weights", "key_map", "input_size")
    keys += ("loss", "loss_params", "precision", "signals")
    return {k: MODELS[model][k] for k in keys}


def extract_batch_size(model, attempt):
    """Batch size of a model's extract job (0 = auto), halved on each retry after running out of memory."""
    from brainprop.plan import batch_for_attempt

    batch = MODELS[model]["batch_size"]
    return 0 if batch == "auto" else batch_for_attempt(batch, attempt)


def encode_params():
    """What an encode job depends on (the device only when the torch backend uses it)."""
    enc = config["encoding"]
    params = {"alphas": enc["alphas"], "backend": enc["backend"], "dtype": enc["dtype"]}
    if enc["backend"] == "torch":
        params["device"] = config["device"]
    return params


def encode_outputs(dataset, model, subject, kind="summary"):
    """One subject's encode outputs of `kind` (summary | targets), signal-major, then layer."""
    return expand(
        f"{OUT}/encoding/{dataset}/{model}/{{signal}}/{{layer}}/{subject}.{kind}.parquet",
        signal=MODELS[model]["signals"],
        layer=layers_of(model),
    )


def subject_files(dataset, pattern):
    """`pattern` with `dataset` and each of its subjects filled in (other wildcards kept)."""
    return expand(pattern, dataset=dataset, subject=DATASETS[dataset]["subjects"], allow_missing=True)


def hierarchy_outputs(kind):
    return [
        f"{OUT}/hierarchy/{ds}/{model}/{subject}/{kind}.parquet"
        for ds, cfg in DATASETS.items()
        for model in MODELS
        for subject in cfg["subjects"]
    ]


def dataset_modalities():
    """Modalities each dataset carries (simulated datasets carry fMRI and MEG, real ones their kind's)."""
    from brainprop.brain.datasets import modality

    return {name: {"fmri", "meg"} if ds["kind"] == "simulated" else {modality(ds["kind"])}
            for name, ds in DATASETS.items()}


def final_outputs():
    tables = expand(f"{OUT}/tables/{{name}}.parquet", name=TABLE_NAMES)
    figures = figure_outputs() + map_outputs() + [f"{OUT}/report/tests.html"]
    truth = [f"{OUT}/truth/{ds}.parquet" for ds in SIMULATED]
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


def plant_spec(dataset):
    """The source model's extraction for a simulated dataset: activations and the scenario's error signal."""
    from brainprop.brain.simulate import error_signal

    spec = model_spec(source_model(dataset))
    return {**spec, "signals": ["act", error_signal(DATASETS[dataset]["simulation"]["scenario"])]}


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


# Report titles of the figure kinds (captions: workflow/report/<kind>.rst).
FIGURE_TITLES = {
    "encoding_by_layer": "encoding by layer",
    "meg_timecourses": "MEG r(t) per layer",
    "spatial_hierarchy": "spatial hierarchy",
    "tmax": "T_max vs depth",
    "model_comparison": "model comparison",
    "rule_signatures": "learning-rule signatures",
    "simulation_recovery": "planted vs recovered",
    "cka": "layer CKA",
    "brain_map": "brain map",
    "glass_brain": "glass brain",
    "meg_topomaps": "MEG topomaps",
}


def _reported(path, kind, category, subcategory):
    """PNGs go into the report under dataset (category) and model (subcategory), with their caption."""
    if not path.endswith(".png"):
        return path
    return report(
        path,
        caption=f"{workflow.basedir}/workflow/report/{kind}.rst",  # absolute: rule all wraps it too
        category=category,
        subcategory=subcategory,
        labels={"figure": FIGURE_TITLES[kind]},
    )


def figure_outputs():
    """Every figure file of the figures rule; PNGs are registered in the report."""
    entries = figure_entries(
        dataset_modalities(),
        config["figures"]["formats"],
        models=list(MODELS),
        simulated=SIMULATED,
        signals=SIGNALS,
    )
    return [
        _reported(f"{OUT}/figures/{name}", kind, dataset or "all datasets", model or "all models")
        for kind, dataset, model, name in entries
    ]


def map_outputs():
    """Brain map, glass brain and topomap files of every dataset × model, PNGs registered in the report."""
    return [
        _reported(f"{OUT}/figures/{name}", kind, ds, m)
        for kind, ds, m, name in map_names(dataset_modalities(), list(MODELS), config["figures"]["formats"])
    ]


def target_score_outputs(dataset, model):
    """Per-target score files of every signal × layer × subject of dataset × model."""
    return expand(
        f"{OUT}/encoding/{dataset}/{model}/{{signal}}/{{layer}}/{{subject}}.targets.parquet",
        signal=MODELS[model]["signals"],
        layer=layers_of(model),
        subject=DATASETS[dataset]["subjects"],
    )


def map_inputs(wc):
    """Per-target scores of every signal × layer × subject, the subjects' target tables, and the
    hierarchy stage's per-subject tables of this dataset × model (not the run-wide tables, which
    change with every model: a change to one model must not redraw the others' maps)."""
    return {
        "scores": target_score_outputs(wc.dataset, wc.model),
        "targets": [
            rules.brain.output.targets.format(dataset=wc.dataset, subject=s)
            for s in DATASETS[wc.dataset]["subjects"]
        ],
        "encoding": subject_outputs(wc.dataset, wc.model, "encoding"),
        "tmax": subject_outputs(wc.dataset, wc.model, "tmax"),
        "best_layers": subject_outputs(wc.dataset, wc.model, "best_layers"),
    }


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
