# The one place that reads and checks the config and builds the run model; the input, params and
# resource functions of every rule are derived from it (brainprop.run.Run).
from pathlib import Path

from brainprop.brain import files as brain_files
from brainprop.config import ConfigError, validate_config
from brainprop.configfile import check_config_files
from brainprop.contract import TABLES
from brainprop.deviations import run_deviations
from brainprop.encoding import files as encoding_files
from brainprop.features import files as features_files
from brainprop.features.sources import model_files, model_label
from brainprop.io import CorruptFileError
from brainprop.figures import catalog
from brainprop.hierarchy import files as hierarchy_files
from brainprop.run import Run, variant_of
from brainprop.stats import files as stats_files
from brainprop.stimuli import files as stimuli_files
from brainprop.workflow import mem_mb, runtime

try:
    check_config_files(
        workflow.configfiles
    )  # Snakemake's own YAML loader keeps duplicate and non-string keys
    validate_config(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None


def layers_of(model):
    """A model's layer indices, known once the `layers` checkpoint has run (each table read once)."""
    path = checkpoints.layers.get(model=model).output.layers
    key = (path, Path(path).stat().st_mtime_ns)
    if key not in _LAYERS_READ:
        try:
            _LAYERS_READ[key] = list(features_files.load_layers(path)["layer_index"])
        except CorruptFileError as err:
            # While the DAG is built --forcerun cannot help: this very table is read first.
            raise WorkflowError(
                f"{err.problem}. The DAG is built from it, so delete it and run the same snakemake command "
                f"again: the layers checkpoint of model {model!r} writes it anew when a job needs it"
            ) from None
    return _LAYERS_READ[key]


_LAYERS_READ = {}
RUN = Run(config, layers=layers_of)
OUT = RUN.out
LOGS = f"{OUT}/logs"
BENCH = f"{OUT}/benchmarks"
DATASETS = RUN.datasets
MODELS = RUN.models
TABLE_NAMES = list(TABLES)


def _choice(values):
    """A wildcard regex matching exactly `values`; none (an empty set) matches nothing, not everything."""
    return "|".join(sorted(values)) or "(?!)"


wildcard_constraints:
    imageset=_choice(config["stimuli"]),
    model=_choice(MODELS),
    dataset=_choice(DATASETS),
    subject=_choice(RUN.subjects),
    signal=_choice(RUN.signals),
    layer=r"\d{2}",


def paths(template, keys):
    """`template` (a rule's output pattern) filled in with each wildcard dict of `keys`, in order."""
    return [template.format(**key) for key in keys]


# ---- devices and resources


def on_cuda():
    """Whether feature extraction runs on CUDA (only then do rules ask for a GPU)."""
    if config["device"] == "cuda":
        return True
    if config["device"] == "cpu":
        return False
    import shutil

    return shutil.which("nvidia-smi") is not None


def gpu_resources(threads):
    """GPU resources of a job on `device`: one GPU and its threads per GPU on CUDA, else none."""
    return (
        {"gpu": 1, "cpus_per_gpu": threads}
        if on_cuda()
        else {"gpu": 0, "cpus_per_gpu": 0}
    )


def encode_gpu():
    """An encode job asks for a GPU only when the torch backend runs on CUDA."""
    return 1 if config["encoding"]["backend"] == "torch" and on_cuda() else 0


def _n_images(imageset, manifest=None):
    """Images of an image set (demo n_images, else its manifest, else the published design)."""
    from brainprop.plan import image_count

    return image_count(config, imageset, manifest)


def _extract_sizes(model, imageset, layers_path, manifest=None):
    """Feature megabytes, batch size and input size of one extract job (dims once `layers` has run)."""
    from brainprop.plan import feature_bytes, planned_layer_count

    spec = MODELS[model]
    dims = [4096] * planned_layer_count(
        spec
    )  # before the layers table exists: the projection's cap per layer
    if layers_path and Path(layers_path).exists():
        dims = list(features_files.load_layers(layers_path)["dim"])
    features_mb = (
        feature_bytes(dims, _n_images(imageset, manifest), len(spec["signals"])) / 2**20
    )
    batch = (
        spec["batch_size"] if spec["batch_size"] != "auto" else 32
    )  # host memory: auto sizes GPU batches
    return features_mb, batch, spec["input_size"] or 224


def extract_mem_mb(wildcards, input, attempt):
    """Memory of an extract job from the config's sizes, doubling per retry (the batch halves)."""
    from brainprop.plan import extract_mem_mb as estimate

    sizes = _extract_sizes(
        wildcards.model, wildcards.imageset, input.get("layers"), input.get("manifest")
    )
    return estimate(*sizes, attempt)


def extract_runtime(wildcards, input, attempt):
    """Runtime (minutes) of an extract job from the image count, growing per retry."""
    from brainprop.plan import extract_runtime_min

    n_images = _n_images(wildcards.imageset, input.get("manifest"))
    return extract_runtime_min(
        n_images, len(MODELS[wildcards.model]["signals"]), on_cuda(), attempt
    )


def extract_batch_size(model, attempt):
    """Batch size of a model's extract job (0 = auto), halved on each retry after running out of memory."""
    from brainprop.plan import batch_for_attempt

    batch = MODELS[model]["batch_size"]
    return 0 if batch == "auto" else batch_for_attempt(batch, attempt)


# Real subjects hold one session plus the per-image sums (NSD fsaverage: ~4 GB for 10,000
# images x 40,000 vertices; THINGS-MEG: ~2 GB for 22,448 images x 11,382 sensor-times).
REAL_BRAIN_MEM_MB = 16000
REAL_BRAIN_RUNTIME = 240


def brain_mem_mb(wildcards, attempt):
    return (REAL_BRAIN_MEM_MB if wildcards.dataset in RUN.real else 2000) * attempt


def brain_runtime(wildcards, attempt):
    return (REAL_BRAIN_RUNTIME if wildcards.dataset in RUN.real else 10) * attempt


# ---- params: exactly the config keys each rule's numbers depend on


def encode_params(model=None):
    """What an encode job depends on (the device only when the torch backend uses it; a model's nuisances)."""
    enc = config["encoding"]
    params = {"alphas": enc["alphas"], "backend": enc["backend"], "dtype": enc["dtype"]}
    if enc["backend"] == "torch":
        params["device"] = config["device"]
    if model is not None and RUN.nuisance(model):
        params["nuisance"] = RUN.nuisance(model)
    return params


def target_null_params():
    """The encode jobs' per-target null: permutations, FDR level and the run's seed."""
    return {**config["encoding"]["target_null"], "seed": config["seed"]}


def joint_params(model):
    """What a joint job depends on: the grid, its references (the stack's width) and the model's nuisances."""
    references = RUN.joint_references(model)
    params = {"alphas": config["joint"]["alphas"], "references": references}
    if "stack" in references:
        params["width"] = config["joint"]["stack"]["width"]
    if RUN.nuisance(model):
        params["nuisance"] = RUN.nuisance(model)
    return params


def plant_spec(dataset):
    """The source model's extraction for a simulated dataset: activations and the scenario's error signal."""
    from brainprop.brain.simulate import error_signal

    spec = RUN.feature_spec(RUN.source_model(dataset))
    return {
        **spec,
        "signals": ["act", error_signal(DATASETS[dataset]["simulation"]["scenario"])],
    }


def simulation_params(dataset):
    """What a simulated subject depends on: the simulation entry plus atlas and reference ROI."""
    from brainprop.brain.simulate import params_from_config

    return params_from_config(DATASETS[dataset])


def brain_params(dataset):
    """A subject's parameters: the simulation of a simulated dataset, or a real dataset's entry."""
    if dataset in RUN.real:
        return {"entry": dict(DATASETS[dataset])}
    return {"simulation": simulation_params(dataset)}


def imageset_spec(imageset):
    """The stimuli rule's parameters: the image set entry, or a real dataset's name and entry."""
    dataset = RUN.real_dataset_of(imageset)
    if dataset is not None:
        return {"kind": "dataset", "dataset": dataset, "entry": dict(DATASETS[dataset])}
    return dict(config["stimuli"][imageset])


def hierarchy_params(dataset):
    """Settings shared by the hierarchy and statistics stages (they must agree)."""
    return {
        "atlas": DATASETS[dataset]["atlas"],
        "threshold": config["hierarchy"]["tmax_threshold"],
        "min_count": config["hierarchy"]["min_count"],
        "exclude": config["hierarchy"]["exclude"],
        "spatial_unit": config["hierarchy"]["spatial_unit"],
        "tmax_window": config["hierarchy"]["tmax_window"],
        "map_fdr": config["stats"]["map_fdr"],
    }


def group_params(dataset, n_boot, n_permutations):
    """The group tests' settings of a dataset (hierarchy settings, seed, permutations, bootstrap, level)."""
    return {
        **hierarchy_params(dataset),
        "seed": config["seed"],
        "n_permutations": n_permutations,
        "null": config["stats"]["subject_null"],
        "n_boot": n_boot,
        "alpha": config["stats"]["alpha"],
    }


# ---- inputs: other rules' outputs, listed from the run model's job keys


def dataset_files(dataset, subject=None):
    """A real dataset's files one subject's brain job reads (brainprop.brain.datasets): its inputs."""
    from brainprop.brain.datasets import dataset_files as files

    return files(DATASETS[dataset], subject)


def image_set_files(dataset):
    """The design and image files a real dataset's image set is built from: inputs of its stimuli job."""
    from brainprop.brain.datasets import image_set_files as files

    return files(DATASETS[dataset])


def imageset_inputs(wildcards):
    """A real dataset's image set waits for its data check and is rebuilt when an image file changes."""
    dataset = RUN.real_dataset_of(wildcards.imageset)
    if not dataset:
        return {}
    return {
        "check": rules.check.output.report.format(dataset=dataset),
        "dataset_files": image_set_files(dataset),
    }


def weight_files(model):
    """A model's checkpoint and python factory files: inputs of its extraction (a replaced file reruns it)."""
    entry = MODELS[model]
    return model_files(entry, f"models.{entry['base_model']}.weights")


def dataset_features(wildcards):
    """The extract folder of the model's features on the dataset's image set."""
    return rules.extract.output.features.format(
        model=wildcards.model, imageset=RUN.imageset_of(wildcards.dataset)
    )


def source_layers(wildcards):
    """The layer table of a simulated dataset's source model."""
    return rules.layers.output.layers.format(model=RUN.source_model(wildcards.dataset))


def brain_inputs(wildcards):
    """Simulated subjects need the plant features; real subjects the manifest and the data check."""
    ds = wildcards.dataset
    if ds in RUN.real:
        return {
            "manifest": rules.stimuli.output.manifest.format(
                imageset=RUN.imageset_of(ds)
            ),
            "check": rules.check.output.report.format(dataset=ds),
            "dataset_files": dataset_files(ds, wildcards.subject),
        }
    return {"plant": rules.plant.output.features, "layers": source_layers(wildcards)}


def subject_files(dataset, pattern):
    """`pattern` with `dataset` and each of its subjects filled in (other wildcards kept)."""
    return expand(
        pattern,
        dataset=dataset,
        subject=DATASETS[dataset]["subjects"],
        allow_missing=True,
    )


def hierarchy_inputs(wildcards):
    """One subject's encode outputs (signal-major, then layer) and target table."""
    keys = RUN.encode_keys(wildcards.dataset, wildcards.model, wildcards.subject)
    return {
        "summaries": paths(rules.encode.output.summary, keys),
        "scores": paths(rules.encode.output.scores, keys),
        "targets": rules.brain.output.targets.format(
            dataset=wildcards.dataset, subject=wildcards.subject
        ),
    }


def hierarchy_shared_inputs(dataset, model):
    """Every subject's encode outputs (subject-major, then signal, then layer) and target tables."""
    subjects = DATASETS[dataset]["subjects"]
    keys = [k for s in subjects for k in RUN.encode_keys(dataset, model, s)]
    return {
        "summaries": paths(rules.encode.output.summary, keys),
        "scores": paths(rules.encode.output.scores, keys),
        "targets": subject_files(dataset, rules.brain.output.targets),
    }


def subject_tables(dataset, model, kind):
    """One hierarchy output `kind` of every subject of dataset × model."""
    return paths(
        getattr(rules.hierarchy.output, kind), RUN.hierarchy_keys(dataset, model)
    )


def group_inputs(wildcards):
    """Every subject's hierarchy tables and joint-model summaries of dataset × model."""
    ds, model = wildcards.dataset, wildcards.model
    tables = {
        kind: subject_tables(ds, model, kind)
        for kind in ("encoding", "best_layers", "tmax", "hierarchy", "target_depths")
    }
    return {
        **tables,
        "joint": paths(rules.joint.output.summary, RUN.joint_keys(ds, model)),
    }


def map_inputs(wildcards):
    """Per-target scores of every signal × layer × subject, the subjects' target tables, and the hierarchy
    stage's per-subject tables of this dataset × model (not the run-wide tables, which change with
    every model: a change to one model must not redraw the others' maps)."""
    ds, model = wildcards.dataset, wildcards.model
    return {
        "scores": paths(rules.encode.output.scores, RUN.encode_keys(ds, model)),
        "targets": paths(rules.brain.output.targets, RUN.subject_keys(ds)),
        **{
            kind: subject_tables(ds, model, kind)
            for kind in ("encoding", "tmax", "best_layers", "target_depths")
        },
    }


# ---- the run's final outputs, with the figures registered in the report


def _reported(path, kind, category, subcategory):
    """PNGs go into the report under dataset (category) and model (subcategory), with their caption."""
    if not path.endswith(".png"):
        return path
    return report(
        path,
        caption=f"{workflow.basedir}/workflow/report/{kind}.rst",  # absolute: rule all wraps it too
        category=category,
        subcategory=subcategory,
        labels={"figure": catalog.FIGURE_TITLES[kind]},
    )


def dataset_modalities():
    """Modalities each dataset carries."""
    return {name: RUN.modalities(name) for name in DATASETS}


def figure_outputs():
    """Every figure file of the figures rule; PNGs are registered in the report."""
    entries = catalog.figure_entries(
        dataset_modalities(),
        config["figures"]["formats"],
        models=list(MODELS),
        simulated=RUN.simulated,
        signals=RUN.signals,
    )
    return [
        _reported(
            RUN.path(catalog.FIGURE.format(name=name)),
            kind,
            dataset or "all datasets",
            model or "all models",
        )
        for kind, dataset, model, name in entries
    ]


def map_outputs():
    """Brain map, glass brain and topomap files of every dataset × configured model (not its
    controls or variants), PNGs registered in the report."""
    names = catalog.map_names(
        dataset_modalities(), RUN.base_models, config["figures"]["formats"]
    )
    return [
        _reported(RUN.path(catalog.FIGURE.format(name=name)), kind, ds, m)
        for kind, ds, m, name in names
    ]


def final_outputs():
    """What the run asks for (the `all` target): its tables, figures, maps, tests page, truth and calibration."""
    calibration = RUN.calibration_keys()
    return [
        *rules.tables.output,
        *figure_outputs(),
        *map_outputs(),
        rules.figures.output.tests,
        rules.figures.output.summary,
        *paths(rules.truth.output.truth, [{"dataset": ds} for ds in RUN.simulated]),
        *paths(rules.calibration.output.calibration, calibration),
        *paths(rules.calibration.output.figure, calibration),
        *paths(rules.calibration.output.nulls, calibration),
    ]
