"""Entry points of the features stage's rules: layers, extract (and plant), cka and prefetch.

Each `run_<rule>(*, inputs, outputs, params)` reads the rule's declared inputs and writes its
declared outputs through `brainprop.features.files`; `runtime` carries what changes how, not
what, is computed (device, batch size, threads, loader and cache settings), so that changing it
reruns nothing. Torch is imported only by the rules that extract.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..stimuli.files import load_verified_manifest
from .files import load_layers, save_cka, save_layers, save_nuisance, save_samples

if TYPE_CHECKING:
    import torch

__all__ = ["extract_to_folder", "run_cka", "run_extract", "run_layers", "run_prefetch"]

log = logging.getLogger(__name__)


def run_layers(*, inputs, outputs, params) -> None:
    """The layers rule: the selected layers of a model and their pooled sizes (meta device, no weights)."""
    from .layers import resolve_layers

    layers = resolve_layers(params.model, params.layers, params.pooling, params.input_size)
    log.info("%s: %d layers selected\n%s", params.model["name"], len(layers), layers.to_string())
    save_layers(outputs.layers, layers, {"model": params.model})


def run_extract(*, inputs, outputs, params, runtime: dict) -> None:
    """The extract (and plant) rule: features of every selected layer into the rule's output folder.

    A retry (e.g. after running out of memory) has half the batch and twice the memory (the
    `extract_batch` resource; 0 means auto).
    """
    resources, options = runtime["resources"], runtime["extraction"]
    batch_size = int(resources.get("extract_batch", 0))
    alias = _config_alias(runtime)
    log.info("batch size %s, mem_mb %s", batch_size or "auto", resources.get("mem_mb"))
    extract_to_folder(
        inputs.manifest,
        inputs.layers,
        outputs.features,
        params.model,
        params.pooling,
        seed=params.seed,
        device=runtime["device"],
        batch_size=batch_size or "auto",
        signals=params.model["signals"],
        threads=runtime["threads"],
        cache_dir=options["cache_dir"],
        shard_size=options["shard_size"],
        workers=options["workers"],
        storage_dtype=params.storage_dtype,
        progress_every_s=options["progress_every_s"],
        config_key=f"models.{alias}.weights",
    )


def _config_alias(runtime: dict) -> str:
    """The config's alias of the model an extract or plant job runs (a variant's base model), for messages."""
    from ..run import SEPARATOR

    wildcards, config = runtime.get("wildcards", {}), runtime.get("config", {})
    if "model" in wildcards:
        return str(wildcards["model"]).split(SEPARATOR)[0]
    dataset = config.get("datasets", {}).get(wildcards.get("dataset"), {})
    return dataset.get("simulation", {}).get("source_model", "<alias>")


def run_cka(*, inputs, outputs, params) -> None:
    """The cka rule: layer × layer linear CKA of each signal of one model on one image set."""
    from .cka import cka_table

    table = cka_table(inputs.features, inputs.layers, params.signals)
    table.insert(0, "model", params.model)
    table.insert(1, "imageset", params.imageset)
    save_cka(outputs.cka, table)


def run_prefetch(*, inputs, outputs, params) -> None:
    """The prefetch rule: pretrained weights of every `pretrained` model into the hub cache."""
    from .files import save_prefetch
    from .prefetch import prefetch_models

    table = prefetch_models(params.models)
    for row in table.itertuples():
        log.info("prefetch: %s (%s) %s %s", row.model, row.timm_name, row.status, row.path)
    save_prefetch(outputs.table, table)


def _workers(workers: int | str, device: torch.device, threads: int | None) -> int:
    """Loader worker processes: `auto` is none on CPU (the cores compute) and up to 4 on CUDA."""
    if workers != "auto":
        return int(workers)
    if device.type != "cuda":
        return 0
    return max(1, min(4, (threads or 2) - 1))


def extract_to_folder(
    manifest_path: Path,
    layers_path: Path,
    out_dir: Path,
    model_spec: dict,
    pooling: dict,
    seed: int,
    device: str = "auto",
    batch_size: int | str = 16,
    signals: Sequence[str] | None = None,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    shard_size: int = 1024,
    workers: int | str = "auto",
    storage_dtype: str = "float32",
    progress_every_s: float = 30.0,
    config_key: str = "models.<alias>.weights",
) -> str:
    """Features of every selected layer into the extract folder `out_dir`; returns the cache key.

    Images are extracted in shards cached under `cache_dir` (default: beside `out_dir`) by the
    extraction's identity, so a killed job resumes at the first unverified shard. Every image file
    is checked against the manifest's SHA-256 first (the identity holds the hashes of the files'
    bytes), and the folder's `samples.parquet` records each matrix's SHA-256 for its readers.
    `config_key` names the model's weights in messages about its checkpoint.
    """
    import torch

    from .cache import ShardCache, feature_identity
    from .models import preprocessing_config
    from .sources import canonical_model, model_label

    if threads:
        torch.set_num_threads(threads)  # the rule's share of the CPU, not every core
    spec = canonical_model(model_spec)
    spec["signals"] = list(signals or model_spec.get("signals") or ("act", "grad"))
    names = list(load_layers(layers_path)["layer"])
    manifest = load_verified_manifest(manifest_path)
    identity = feature_identity(spec, seed, preprocessing_config(spec), names, pooling, manifest, storage_dtype)
    cache_dir = Path(cache_dir) if cache_dir else Path(out_dir).parent / ".cache"
    cache = ShardCache(cache_dir, identity, len(manifest), shard_size, spec["signals"], len(names))
    log.info(
        "extract %s: %d images, %d layers, signals %s, cache key %s",
        model_label(spec),
        len(manifest),
        len(names),
        spec["signals"],
        cache.key,
    )
    with cache.lock():
        if cache.is_assembled():
            log.info("cache %s: complete; nothing to extract", cache.root)
        else:
            _extract_shards(
                cache,
                manifest_path,
                manifest,
                spec,
                names,
                pooling,
                seed,
                device,
                batch_size,
                threads,
                workers,
                progress_every_s,
                config_key,
            )
            cache.assemble()
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        cache.link_into(out_dir)
        save_nuisance(out_dir, manifest["image_id"], cache.load_extra("nuisance"))
        sums, how = cache.assembled_sha256(), cache.computed_with()
    meta = {"cache_key": cache.key, "identity": identity, "computed_with": how}
    save_samples(out_dir, manifest[["image_id", "group"]], metadata=meta, sha256=sums)
    return cache.key


def _check_finite(feats: dict[str, list[np.ndarray]], label: str, names: Sequence[str], shard, precision: str) -> None:
    """Stop (before the shard is stored) when any feature is NaN or infinite."""
    hint = "; try precision bfloat16 or float32" if precision == "float16" else ""
    for signal, arrays in feats.items():
        if signal == "nuisance":  # NaN where not computed (no loss, no grad); never used where NaN
            continue
        for k, array in enumerate(arrays):
            if not np.isfinite(array).all():
                where = "the model output" if signal == "output" else f"{signal} at layer {k} ({names[k]})"
                raise ValueError(f"model {label}: non-finite {where} in images {shard.start}-{shard.stop - 1}{hint}")


def _extract_shards(
    cache,
    manifest_path,
    manifest,
    spec,
    names,
    pooling,
    seed,
    device,
    batch_size,
    threads,
    workers,
    progress_every_s,
    config_key,
) -> None:
    """Extract the cache's pending shards and store each one with its checksums."""
    import torch

    from .extract import (
        BatchRunner,
        ImageDataset,
        Progress,
        auto_batch_size,
        collect_batches,
        image_loader,
        prepared_loss_params,
    )
    from .models import image_transform, load_model, resolve_device
    from .sources import model_label

    pending = cache.pending()
    if not pending:
        return
    dev = resolve_device(device)
    model = load_model(spec, seed, config_key)
    model.to(dev)
    precision = spec.get("precision", "float32")
    dataset = ImageDataset(manifest_path, image_transform(model))
    n_workers = _workers(workers, dev, threads)
    torch.manual_seed(seed)
    loss = spec.get("loss", "cross_entropy")
    grad_normalize = spec.get("grad_normalize", "none")
    if batch_size == "auto":
        probe = BatchRunner(model, names, pooling, loss, spec.get("loss_params") or {}, spec["signals"], precision)
        sample = dataset[0][0][None]
        batch_size = auto_batch_size(lambda x: probe(x, ["probe"] * len(x), np.zeros(len(x), dtype=int)), sample, dev)
    batch_size = int(batch_size)
    params = prepared_loss_params(
        model,
        loss,
        spec.get("loss_params"),
        spec["signals"],
        lambda: (x for x, _ in image_loader(dataset, [(0, len(dataset))], batch_size, n_workers, dev)),
    )
    runner = BatchRunner(model, names, pooling, loss, params, spec["signals"], precision, seed, grad_normalize)
    ids = [str(i) for i in manifest["image_id"]]
    done = len(manifest) - sum(s.size for s in pending)
    progress = Progress(len(manifest), done, progress_every_s)
    log.info(
        "extracting %d shard(s) on %s, batch size %d, %d loader worker(s), precision %s",
        len(pending),
        dev,
        batch_size,
        n_workers,
        precision,
    )
    how = {"device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__}
    batches = iter(image_loader(dataset, [(s.start, s.stop) for s in pending], batch_size, n_workers, dev))
    try:
        for shard in pending:
            shard_batches = itertools.islice(batches, -(-shard.size // batch_size))
            feats = collect_batches(runner, shard_batches, ids, dev, progress.update)
            _check_finite(feats, model_label(spec), names, shard, precision)
            cache.write_shard(shard, feats, {**how, "batch_size": batch_size, "split_to": runner.largest_fit})
            log.info(
                "shard %d/%d stored (images %d-%d)", shard.index + 1, len(cache.shards), shard.start, shard.stop - 1
            )
    finally:
        progress.close()
