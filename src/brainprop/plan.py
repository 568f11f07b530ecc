"""Sizing a run before it starts: jobs per rule, feature disk, and the resources cluster jobs ask for."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .run import Run
from .stimuli.files import MANIFEST, count_images

__all__ = [
    "RunPlan",
    "batch_for_attempt",
    "check_disk",
    "extract_mem_mb",
    "extract_runtime_min",
    "feature_bytes",
    "format_plan",
    "plan_run",
    "planned_layer_count",
]

FLOAT_BYTES = 4  # features are stored as float32 .npy
# Resident memory of a Python process with torch, timm and one model loaded (CPU), in MB.
BASE_MEM_MB = 2000


@dataclass(frozen=True)
class RunPlan:
    """What a config will run: job counts per rule and the bytes its feature files take."""

    jobs: dict[str, int]
    feature_bytes: dict[tuple[str, str], int]
    layers: dict[str, pd.DataFrame]

    @property
    def total_jobs(self) -> int:
        """Jobs in the whole run (rule `all` included, as Snakemake counts)."""
        return sum(self.jobs.values())

    @property
    def total_feature_bytes(self) -> int:
        """Bytes of every extracted feature file (all models, image sets and signals)."""
        return sum(self.feature_bytes.values())


def batch_for_attempt(batch_size: int, attempt: int) -> int:
    """Batch size of an extraction attempt: halved on each retry (an OOM retry needs less memory)."""
    return max(1, int(batch_size) >> max(int(attempt) - 1, 0))


def feature_bytes(dims: list[int], n_images: int, n_signals: int, output_dim: int = 0) -> int:
    """Bytes of one model's features on one image set: float32, every layer and signal, and the model output."""
    return (int(sum(dims)) * int(n_signals) + int(output_dim)) * int(n_images) * FLOAT_BYTES


def extract_mem_mb(features_mb: float, batch_size: int, input_size: int, attempt: int) -> int:
    """Memory request of an extract job: torch and the model, the features held twice, one batch.

    The batch term budgets 2 kB per input pixel and image (activations and their gradients of a
    mid-size model); the whole request doubles with each retry while the batch halves.
    """
    batch_mb = batch_for_attempt(batch_size, attempt) * int(input_size) ** 2 * 2 / 1024
    return int((BASE_MEM_MB + 2 * features_mb + batch_mb) * attempt)


def extract_runtime_min(n_images: int, n_signals: int, cuda: bool, attempt: int) -> int:
    """Runtime request (minutes) of an extract job: a pessimistic images-per-second rate, per attempt."""
    images_per_s = 50.0 if cuda else 2.0
    minutes = 10 + n_images * max(n_signals, 1) / images_per_s / 60
    return int(minutes * attempt)


def planned_layer_count(model: dict) -> int:
    """Layers a model entry selects: its named layers, else `layers.n` (a model may have fewer blocks)."""
    layers = model["layers"]
    return len(layers["names"]) if layers.get("names") else int(layers["n"])


def _resolve_layers(run: Run) -> dict[str, pd.DataFrame]:
    """Selected layers and pooled dims of every configured model (meta device: no weights, no compute)."""
    from .features.layers import resolve_layers

    return {alias: resolve_layers(m, m["layers"], m["pooling"]) for alias, m in run.models.items() if not m["variant"]}


def _output_dims(run: Run) -> dict[str, int]:
    """Width of the output matrix each model's extraction writes (what its loss reads; meta device)."""
    from .features.layers import output_dim

    dims: dict[tuple, int] = {}
    out = {}
    for alias, m in run.models.items():
        key = (m["source"], m["name"], repr(m["kwargs"]), m["input_size"], m["loss"], repr(m["loss_params"]))
        if key not in dims:
            dims[key] = output_dim(m, m["loss"], m["loss_params"])
        out[alias] = dims[key]
    return out


def image_count(config: dict, imageset: str, manifest: str | Path | None = None) -> int:
    """Images of an image set: n_images of a demo set; a dataset's manifest, else its published design."""
    from .brain.datasets import published_image_count

    spec = config["stimuli"][imageset]
    if spec.get("kind", "demo") == "demo":
        return int(spec.get("n_images", 240))
    if manifest is not None and Path(manifest).exists():
        return count_images(manifest)
    dataset = config["datasets"][spec["dataset"]]
    return published_image_count(dataset["kind"], len(dataset["subjects"]))


def plan_run(config: dict, layers: dict[str, pd.DataFrame] | None = None) -> RunPlan:
    """Jobs per rule and feature bytes of a validated config (layers resolved on the meta device).

    The jobs are those of the run model (`brainprop.run.Run.jobs`), the same lists the Snakefile's
    input functions are built from. Controls and sensitivity variants run as models of their own,
    with their base model's layers.
    """
    run = Run(config)
    layers = dict(layers) if layers is not None else _resolve_layers(run)
    for alias, m in run.models.items():
        if alias not in layers and m["base_model"] in layers:
            layers[alias] = layers[m["base_model"]]
    run = Run(config, layers=lambda model: list(layers[model]["layer_index"]))
    manifest = run.path(MANIFEST)
    outputs = _output_dims(run)
    sizes = {
        (key["model"], key["imageset"]): feature_bytes(
            list(layers[key["model"]]["dim"]),
            image_count(config, key["imageset"], manifest.format(imageset=key["imageset"])),
            len(run.models[key["model"]]["signals"]),
            outputs[key["model"]],
        )
        for key in run.extract_keys()
    }
    return RunPlan(jobs=dict(run.job_counts()), feature_bytes=sizes, layers=layers)


def check_disk(needed_bytes: int, path: str | Path) -> tuple[bool, int]:
    """Whether the filesystem holding `path` (or its nearest existing parent) has `needed_bytes` free."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    free = shutil.disk_usage(path).free
    return free >= needed_bytes, free


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def format_plan(plan: RunPlan) -> str:
    """The plan as a short text table: jobs per rule, then feature disk per model and image set."""
    lines = ["jobs per rule:"]
    width = max(len(r) for r in plan.jobs)
    lines += [f"  {rule:<{width}}  {n:>8d}" for rule, n in sorted(plan.jobs.items(), key=lambda kv: -kv[1])]
    lines.append(f"  {'total':<{width}}  {plan.total_jobs:>8d}")
    lines.append("feature disk (float32 .npy, every layer and signal, and the model output):")
    for (alias, imageset), size in sorted(plan.feature_bytes.items()):
        lines.append(f"  {alias}/{imageset}: {_human(size)} ({len(plan.layers[alias])} layers)")
    lines.append(f"  total: {_human(plan.total_feature_bytes)}")
    return "\n".join(lines)
