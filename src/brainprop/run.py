"""The run model: what a validated config runs, built once and read by the Snakefile and `brainprop plan`.

`Run` knows the run's models (each configured model plus its control and sensitivity variants),
datasets, subjects, signals and, once known, each model's layers; it lists the jobs of every
rule as wildcard dicts (`Run.jobs`), and the input relations the rules declare are built from
the same lists, so Snakemake's DAG and `brainprop plan`'s counts come from one place.

Model variants (METHOD.md §6 controls and the sensitivity choices) are copies of a configured
model with one setting changed; the workflow runs each as a model of its own (alias
`{model}__{variant}`), so its tests sit beside the real model's rows with the columns
`base_model` and `variant` saying what it is:

- `random_init`: the same architecture with seeded random weights (what the architecture alone
  produces). A model whose weights are already `random` is its own random-init control, so
  no copy is made.
- `shuffled_loss`: the loss `cross_entropy_shuffled` (the model's own top-1 labels permuted
  across images), made only for models trained with `cross_entropy`.
- `pooling_{mode}`, `loss_{name}`, `grad_normalize_{value}` and `nuisance_{names}` (config
  `sensitivity.pooling`, `.loss`, `.grad_normalize`, `.nuisance`): the open choices of METHOD.md
  §2, made only where they differ from the model's setting, for the models `sensitivity.models`
  names (all by default). A nuisance variant changes only its encoding (`encoding.nuisance`
  for that model): its features are the model's own, found in the feature cache.

Every entry carries `base_model` (its configured alias), `variant` ("" for the real model) and,
for the sensitivity variants, `choice` and `value` (e.g. "pooling", "mean").
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Callable, Sequence

__all__ = ["CONTROLS", "SEPARATOR", "Run", "model_variants", "nuisance_label", "variant_of"]

SEPARATOR = "__"

log = logging.getLogger(__name__)


def _random_init(model: dict) -> dict | None:
    return None if model["weights"] == "random" else {"weights": "random"}


def _shuffled_loss(model: dict) -> dict | None:
    if model["loss"] != "cross_entropy":
        return None
    return {"loss": "cross_entropy_shuffled", "loss_params": {}}


CONTROLS: dict[str, Callable[[dict], dict | None]] = {
    "random_init": _random_init,
    "shuffled_loss": _shuffled_loss,
}


def _derived(
    alias: str, model: dict, variant: str, change: dict, choice: str = "", value: str = ""
) -> tuple[str, dict]:
    entry = copy.deepcopy(model) | copy.deepcopy(change)
    entry.pop("controls", None)
    entry |= {"base_model": alias, "variant": variant, "choice": choice, "value": value}
    return f"{alias}{SEPARATOR}{variant}", entry


def _loss_choice(item: str | dict) -> tuple[str, dict]:
    """(loss name, loss_params) of a `sensitivity.loss` entry: a name, or {name, params}."""
    return (item, {}) if isinstance(item, str) else (item["name"], dict(item.get("params") or {}))


def nuisance_label(names: Sequence[str]) -> str:
    """The sensitivity table's value of a nuisance set: the names joined by '+', or 'none'."""
    return "+".join(names) or "none"


def model_variants(models: dict, sensitivity: dict | None = None, nuisance: Sequence[str] = ()) -> dict:
    """The configured models plus their control and sensitivity variants, by alias.

    Controls come from each model's `controls` list; `sensitivity` may list `pooling` modes,
    `loss` names (or {name, params}), `grad_normalize` values and `nuisance` sets to rerun the
    models it names (`sensitivity.models`; null: every model) with; `nuisance` is the configured
    `encoding.nuisance`, against which a nuisance set differs.
    """
    sensitivity = sensitivity or {}
    chosen = sensitivity.get("models")
    out = {}
    for alias, model in models.items():
        if SEPARATOR in alias:
            raise ValueError(f"model alias {alias!r} contains {SEPARATOR!r}, which names variants; rename it")
        out[alias] = copy.deepcopy(model) | {"base_model": alias, "variant": "", "choice": "", "value": ""}
        for control in model.get("controls", []):
            if control not in CONTROLS:
                raise ValueError(f"models.{alias}.controls: {control!r} unknown; expected one of {sorted(CONTROLS)}")
            change = CONTROLS[control](model)
            if change is None:
                log.info("model %s: control %s is the model itself or does not apply; no copy", alias, control)
                continue
            key, entry = _derived(alias, model, control, change)
            out[key] = entry
        if chosen is not None and alias not in chosen:
            continue
        for mode in sensitivity.get("pooling", []):
            if mode != model["pooling"]["mode"]:
                change = {"pooling": model["pooling"] | {"mode": mode}}
                key, entry = _derived(alias, model, f"pooling_{mode}", change, "pooling", mode)
                out[key] = entry
        for item in sensitivity.get("loss", []):
            loss, params = _loss_choice(item)
            if loss != model["loss"]:
                change = {"loss": loss, "loss_params": params}
                key, entry = _derived(alias, model, f"loss_{loss}", change, "loss", loss)
                out[key] = entry
        for value in sensitivity.get("grad_normalize", []):
            if value != model.get("grad_normalize", "none"):
                change = {"grad_normalize": value}
                key, entry = _derived(alias, model, f"grad_normalize_{value}", change, "grad_normalize", value)
                out[key] = entry
        for names in sensitivity.get("nuisance", []):
            if list(names) != list(nuisance):
                label = "_".join(names) or "none"
                change = {"nuisance": list(names)}
                key, entry = _derived(alias, model, f"nuisance_{label}", change, "nuisance", nuisance_label(names))
                out[key] = entry
    return out


def variant_of(models: dict, alias: str) -> dict:
    """`{"base_model": ..., "variant": ...}` of an alias in `model_variants` output."""
    entry = models[alias]
    return {"base_model": entry["base_model"], "variant": entry["variant"]}


# The keys of a model entry that its extracted features depend on (not batch size or device).
FEATURE_KEYS = (
    "source", "name", "kwargs", "weights", "key_map", "input_size", "loss", "loss_params", "precision", "signals",
    "grad_normalize",
)  # fmt: skip


class Run:
    """What one validated config runs: models with variants, datasets, subjects, layers, jobs, paths.

    Parameters
    ----------
    config : a validated config (`brainprop.config.validate_config`).
    layers : model alias -> its layer indices, once known (the `layers` checkpoint in Snakemake;
        resolved on the meta device by `brainprop plan`). Needed only by the per-layer jobs.
    """

    def __init__(self, config: dict, layers: Callable[[str], Sequence[int]] | None = None):
        from .brain.datasets import shared_fits

        self.config = config
        self.name = config["run"]
        self.out = f"results/{self.name}"
        self.models = model_variants(
            config["models"], config.get("sensitivity"), config.get("encoding", {}).get("nuisance", [])
        )
        self.datasets = config["datasets"]
        self.base_models = [alias for alias, entry in self.models.items() if not entry["variant"]]
        self.simulated = [name for name, ds in self.datasets.items() if ds["kind"] == "simulated"]
        self.real = [name for name, ds in self.datasets.items() if ds["kind"] != "simulated"]
        self.shared = shared_fits(config)
        self.subjects = sorted({s for ds in self.datasets.values() for s in ds["subjects"]})
        self.signals = sorted({s for m in self.models.values() for s in m["signals"]})
        self._layers = layers

    # ---------------------------------------------------------------- names and facts

    def path(self, template: str) -> str:
        """A stage's path template (relative to the run folder) under `results/{run}`."""
        return f"{self.out}/{template}"

    def imageset_of(self, dataset: str) -> str:
        """The image set a dataset's subjects saw."""
        return self.datasets[dataset]["imageset"]

    @property
    def imagesets(self) -> list[str]:
        """Image sets some dataset uses, in config order."""
        return list(dict.fromkeys(ds["imageset"] for ds in self.datasets.values()))

    def source_model(self, dataset: str) -> str:
        """The model whose features a simulated dataset's responses are planted from."""
        return self.datasets[dataset]["simulation"]["source_model"]

    def real_dataset_of(self, imageset: str) -> str | None:
        """The real dataset an image set of kind `dataset` belongs to, else None."""
        spec = self.config["stimuli"][imageset]
        return spec["dataset"] if spec["kind"] == "dataset" else None

    def modalities(self, dataset: str) -> set[str]:
        """Modalities of a dataset's targets (simulated datasets carry fMRI and MEG, real ones their kind's)."""
        from .brain.datasets import modality

        kind = self.datasets[dataset]["kind"]
        return {"fmri", "meg"} if kind == "simulated" else {modality(kind)}

    def feature_spec(self, model: str) -> dict:
        """The keys of a model entry that its extracted features depend on (not batch size or device)."""
        return {k: self.models[model][k] for k in FEATURE_KEYS}

    def layers(self, model: str) -> list[str]:
        """A model's layer indices as the `{layer}` wildcard (two digits), once known."""
        if self._layers is None:
            raise RuntimeError("the run's layers are not known yet (give Run a layers provider)")
        return [f"{int(i):02d}" for i in self._layers(model)]

    def has_joint(self, model: str) -> bool:
        """Whether a model gets joint act + grad fits (config `joint`; controls only with `joint.controls`)."""
        joint, entry = self.config["joint"], self.models[model]
        if not joint["enabled"] or not {"act", "grad"} <= set(entry["signals"]):
            return False
        if entry["variant"] in CONTROLS and not joint.get("controls", True):
            return False
        chosen = joint["models"]
        return chosen is None or model in chosen or entry["base_model"] in chosen

    def nuisance(self, model: str) -> list[str]:
        """The nuisances a model's encode and joint fits partial out (`encoding.nuisance`, or its variant's)."""
        entry = self.models[model]
        return list(entry["nuisance"] if "nuisance" in entry else self.config["encoding"].get("nuisance", []))

    def joint_references(self, model: str) -> list[str]:
        """References a model's joint fits use: `joint.reference`, then (configured models that
        `sensitivity.models` names) the other `sensitivity.reference` values."""
        default = self.config["joint"].get("reference", "stack")
        entry, sensitivity = self.models[model], self.config.get("sensitivity", {})
        chosen = sensitivity.get("models")
        extra = sensitivity.get("reference", []) if not entry["variant"] and (chosen is None or model in chosen) else []
        return [default] + [r for r in extra if r != default]

    def sensitivity_variants(self, model: str) -> list[tuple[str, str]]:
        """(label "choice=value", alias) of the pooling and loss variants of a configured model."""
        return [
            (f"{entry['choice']}={entry['value']}", alias)
            for alias, entry in self.models.items()
            if entry["base_model"] == model and entry["choice"]
        ]

    # ---------------------------------------------------------------- job keys (wildcard dicts)

    def subject_keys(self, dataset: str) -> list[dict]:
        """{dataset, subject} of each subject of a dataset."""
        return [{"dataset": dataset, "subject": s} for s in self.datasets[dataset]["subjects"]]

    def encode_keys(self, dataset: str, model: str, subject: str | None = None) -> list[dict]:
        """Wildcards of each encode output of dataset × model (one subject, or all), signal-major, then layer."""
        subjects = [subject] if subject else self.datasets[dataset]["subjects"]
        return [
            {"dataset": dataset, "model": model, "signal": signal, "layer": layer, "subject": s}
            for signal in self.models[model]["signals"]
            for layer in self.layers(model)
            for s in subjects
        ]

    def joint_keys(self, dataset: str, model: str) -> list[dict]:
        """Wildcards of each joint fit of dataset × model (none when the model has no joint fits)."""
        if not self.has_joint(model):
            return []
        return [
            {"dataset": dataset, "model": model, "layer": layer, "subject": s}
            for layer in self.layers(model)
            for s in self.datasets[dataset]["subjects"]
        ]

    def hierarchy_keys(self, dataset: str | None = None, model: str | None = None) -> list[dict]:
        """{dataset, model, subject} of each hierarchy job (all, or of one dataset × model)."""
        datasets = [dataset] if dataset else list(self.datasets)
        models = [model] if model else list(self.models)
        return [
            {"dataset": ds, "model": m, "subject": s}
            for ds in datasets
            for m in models
            for s in self.datasets[ds]["subjects"]
        ]

    def extract_keys(self) -> list[dict]:
        """{model, imageset} of each extraction: every model on every image set a dataset uses."""
        return [{"model": m, "imageset": i} for m in self.models for i in self.imagesets]

    def calibration_keys(self) -> list[dict]:
        """{dataset} of each calibration job: every simulated dataset, when calibration is on."""
        return [{"dataset": ds} for ds in self.simulated] if self.config["calibration"]["enabled"] else []

    def map_keys(self, modality: str) -> list[dict]:
        """{dataset, model} of each map job of a modality (brain maps: fmri, topomaps: meg), configured models only.

        Controls and sensitivity variants get no maps: their numbers are in the tables, and a map
        job costs more than a variant's encoding (docs/figures.md).
        """
        return [
            {"dataset": ds, "model": m}
            for ds in self.datasets
            if modality in self.modalities(ds)
            for m in self.base_models
        ]

    def jobs(self) -> dict[str, list[dict]]:
        """The wildcards of every job of the run, by rule (the DAG's job list, `all` included)."""
        each_dataset = [{"dataset": ds} for ds in self.datasets]
        jobs: dict[str, list[dict]] = {
            "stimuli": [{"imageset": i} for i in self.imagesets],
            "check": [{"dataset": ds} for ds in self.real],
            "layers": [{"model": m} for m in self.models],
            "extract": self.extract_keys(),
            "cka": self.extract_keys(),
            "plant": [{"dataset": ds} for ds in self.simulated],
            "truth": [{"dataset": ds} for ds in self.simulated],
            "brain": [k for ds in self.datasets for k in self.subject_keys(ds)],
            "folds": each_dataset,
            "encode": [
                k for ds in self.datasets if ds not in self.shared for m in self.models for k in self.encode_keys(ds, m)
            ],
            "joint": [
                k for ds in self.datasets if ds not in self.shared for m in self.models for k in self.joint_keys(ds, m)
            ],
            "hierarchy": [k for k in self.hierarchy_keys() if k["dataset"] not in self.shared],
            "group": [{"dataset": ds, "model": m} for ds in self.datasets for m in self.models],
            "compare": each_dataset,
            "sensitivity": [{"dataset": ds, "model": m} for ds in self.datasets for m in self.base_models],
            "calibration": self.calibration_keys(),
            "brain_map": self.map_keys("fmri"),
            "meg_topomaps": self.map_keys("meg"),
            "tables": [{}],
            "figures": [{}],
            "all": [{}],
        }
        for ds in self.shared:
            jobs[f"encode_shared_{ds}"] = [
                {"model": m, "signal": s, "layer": layer}
                for m in self.models
                for s in self.models[m]["signals"]
                for layer in self.layers(m)
            ]
            jobs[f"joint_shared_{ds}"] = [
                {"model": m, "layer": layer} for m in self.models if self.has_joint(m) for layer in self.layers(m)
            ]
            jobs[f"hierarchy_shared_{ds}"] = [{"model": m} for m in self.models]
        return {rule: keys for rule, keys in jobs.items() if keys}

    def job_counts(self) -> Counter:
        """Jobs per rule (as Snakemake's dry run counts them)."""
        return Counter({rule: len(keys) for rule, keys in self.jobs().items()})
