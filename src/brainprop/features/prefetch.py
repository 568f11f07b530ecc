"""Pretrained weights: download them ahead of offline jobs, and check them, for every model source.

Compute nodes often have no internet, and `timm.create_model(name, pretrained=True)` without
network spends about 50 s in retries before failing. `prefetch_models` runs on a login node
(the workflow's `prefetch` rule) and fills the caches the jobs read; `check_offline` confirms,
without network, that every pretrained model's weight file is there. By source:

- `timm`: the Hugging Face cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`), files looked up exactly
  as timm's loader does (the safetensors alternative first, then the configured file), or
  torch hub's cache for timm's plain URLs;
- `torchvision`: the weights enum's file, found in brainprop's weights folder or in torch hub's
  cache (`$TORCH_HOME/hub/checkpoints`), downloaded into the latter;
- `python`: the factory loads its own weights; brainprop cannot see them (status `skipped_python`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .sources import canonical_model, model_label

__all__ = ["PREFETCH_COLUMNS", "WeightSource", "check_offline", "prefetch_models", "weight_source"]

PREFETCH_COLUMNS = ["model", "timm_name", "weights", "status", "source", "location", "filename", "path"]

# timm's hub file names (timm.models._hub): the safetensors file it tries before each pickle.
_SAFE_ALTERNATIVES: dict[str, str] = {
    "pytorch_model.bin": "model.safetensors",
    "open_clip_pytorch_model.bin": "open_clip_model.safetensors",
}
_DEFAULT_FILENAME = "pytorch_model.bin"


@dataclass(frozen=True)
class WeightSource:
    """Where timm loads a model's pretrained weights from."""

    kind: str  # "hf-hub" (a Hugging Face repository) or "url" (a plain download, torch hub cache)
    location: str  # repository id or URL
    filenames: tuple[str, ...] = ()  # hf-hub: candidate files in the order timm tries them
    revision: str | None = None


def _candidates(filename: str) -> tuple[str, ...]:
    safe = _SAFE_ALTERNATIVES.get(filename)
    if safe is None and filename.endswith(".bin"):
        safe = filename[:-4] + ".safetensors"
    return (safe, filename) if safe else (filename,)


def weight_source(timm_name: str) -> WeightSource:
    """Resolve a timm name (with or without a pretrained tag) to its weight source."""
    from timm.models import get_pretrained_cfg

    if timm_name.startswith("hf-hub:"):
        repo, _, rev = timm_name[len("hf-hub:") :].partition("@")
        return WeightSource("hf-hub", repo, _candidates(_DEFAULT_FILENAME), rev or None)
    cfg = get_pretrained_cfg(timm_name)
    if cfg is None:
        raise ValueError(
            f"timm name {timm_name!r} has no pretrained weights; expected a name from timm.list_pretrained()"
        )
    if cfg.hf_hub_id:
        repo, _, rev = cfg.hf_hub_id.partition("@")
        return WeightSource("hf-hub", repo, _candidates(cfg.hf_hub_filename or _DEFAULT_FILENAME), rev or None)
    if cfg.url:
        return WeightSource("url", cfg.url)
    raise ValueError(f"timm name {timm_name!r}: its pretrained config names neither an hf_hub_id nor a url")


def _cached(source: WeightSource, cache_dir: str | None) -> tuple[str, str] | None:
    """(filename, path) of the first candidate file present in the local cache, else None."""
    if source.kind == "url":
        from timm.models._hub import check_cached_file, get_cache_dir

        if check_cached_file(source.location):
            name = Path(source.location).name
            return name, str(Path(get_cache_dir()) / name)
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in source.filenames:
        path = try_to_load_from_cache(source.location, filename, cache_dir=cache_dir, revision=source.revision)
        if isinstance(path, str):  # not None nor the "known to be missing" sentinel
            return filename, path
    return None


def _download(source: WeightSource, cache_dir: str | None) -> tuple[str, str]:
    """Download the first candidate file that exists upstream; return (filename, path)."""
    if source.kind == "url":
        from timm.models._hub import download_cached_file

        return Path(source.location).name, str(download_cached_file(source.location, progress=False))
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for filename in source.filenames[:-1]:
        try:
            return filename, hf_hub_download(source.location, filename, revision=source.revision, cache_dir=cache_dir)
        except EntryNotFoundError:
            continue  # as timm does: no safetensors file, fall back to the pickle
    last = source.filenames[-1]
    return last, hf_hub_download(source.location, last, revision=source.revision, cache_dir=cache_dir)


def _row(alias: str, spec: dict, status: str, source: WeightSource | None = None, found=("", "")) -> dict:
    return {
        "model": alias,
        "timm_name": model_label(spec),  # the model's label: the timm name, else source:name
        "weights": str(spec["weights"]),
        "status": status,
        "source": source.kind if source else "",
        "location": source.location if source else "",
        "filename": found[0],
        "path": found[1],
    }


def _fetch_timm(alias: str, spec: dict, cache_dir: str | None) -> dict:
    """Fetch (or find) a timm model's pretrained file."""
    source = weight_source(spec["name"])
    found = _cached(source, cache_dir)
    if found:
        return _row(alias, spec, "cached", source, found)
    try:
        return _row(alias, spec, "fetched", source, _download(source, cache_dir))
    except Exception as err:  # hub errors come in many types
        raise RuntimeError(
            f"models.{alias} ({spec['name']}): could not download {source.location} "
            f"({type(err).__name__}: {err}). Run prefetch on a node with internet (HF_HUB_OFFLINE unset)."
        ) from err


def _torchvision_member(spec: dict):
    from .sources import SOURCES

    member = SOURCES["torchvision"].weights_enum(spec["name"])
    if member is None:
        raise ValueError(f"torchvision {spec['name']} has no pretrained weights")
    return member


def _fetch_torchvision(alias: str, spec: dict, cache_dir: str | None) -> dict:
    """Find a torchvision weights file locally, else download it into torch hub's cache (hash-checked)."""
    import torch

    from .sources import pretrained_file
    from .weights import WeightFileError

    member = _torchvision_member(spec)
    source = WeightSource("url", member.url)
    name = Path(member.url).name
    try:
        return _row(alias, spec, "cached", source, (name, str(pretrained_file(member))))
    except WeightFileError:
        pass
    target = Path(torch.hub.get_dir()) / "checkpoints" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = name.rsplit("-", 1)[-1].split(".")[0] if "-" in name else None
    try:
        torch.hub.download_url_to_file(member.url, str(target), hash_prefix=prefix, progress=False)
    except Exception as err:  # network errors come in many types
        raise RuntimeError(
            f"models.{alias} ({model_label(spec)}): could not download {member.url} ({type(err).__name__}: {err}). "
            "Run prefetch on a node with internet."
        ) from err
    return _row(alias, spec, "fetched", source, (name, str(target)))


def _skip_python(alias: str, spec: dict, cache_dir: str | None) -> dict:
    """A python factory loads its own pretrained weights: nothing brainprop can fetch."""
    return _row(alias, spec, "skipped_python")


# source -> how prefetch fetches (or finds) a pretrained model's weights
PREFETCHERS = {"timm": _fetch_timm, "torchvision": _fetch_torchvision, "python": _skip_python}


def _fetch_one(alias: str, spec: dict, cache_dir: str | None) -> dict:
    spec = canonical_model(spec)
    return PREFETCHERS[spec["source"]](alias, spec, cache_dir)


def prefetch_models(models: dict, cache_dir: str | None = None) -> pd.DataFrame:
    """Download the weights of every `pretrained` model into the Hugging Face cache.

    Parameters
    ----------
    models : dict
        The config's models: alias -> entry with `source`, `name` (or `timm_name`) and `weights`
        (`pretrained`, `random` or a checkpoint path; only `pretrained` is fetched).
    cache_dir : str or None
        Hub cache folder; None uses timm's default (`HF_HUB_CACHE`, else `$HF_HOME/hub`).

    Returns
    -------
    pandas.DataFrame
        One row per model, columns PREFETCH_COLUMNS; status is fetched, cached,
        skipped_random, skipped_checkpoint or skipped_python.
    """
    rows = []
    for alias, spec in models.items():
        weights = spec["weights"]
        if weights == "pretrained":
            rows.append(_fetch_one(alias, spec, cache_dir))
        else:
            rows.append(_row(alias, spec, "skipped_random" if weights == "random" else "skipped_checkpoint"))
    return pd.DataFrame(rows, columns=PREFETCH_COLUMNS)


def check_offline(models: dict, cache_dir: str | None = None) -> list[str]:
    """Problems (empty when none) with the cached weights of the `pretrained` models, without network.

    Each message names the model's alias and what to run to fix it.
    """
    problems = []
    for alias, spec in models.items():
        spec = canonical_model(spec)
        if spec["weights"] == "pretrained":
            problem = OFFLINE_CHECKS[spec["source"]](alias, spec, cache_dir)
            if problem:
                problems.append(problem)
    return problems


def _offline_timm(alias: str, spec: dict, cache_dir: str | None) -> str | None:
    """A problem with a timm model's cached pretrained file, or None."""
    try:
        source = weight_source(spec["name"])
    except ValueError as err:
        return f"models.{alias}: {err}"
    if _cached(source, cache_dir) is None:
        where = source.location if source.kind == "url" else f"{source.location} ({' or '.join(source.filenames)})"
        return (
            f"models.{alias} ({spec['name']}): pretrained weights {where} are not in the local cache. "
            "On a node with internet and the same HF_HOME/HF_HUB_CACHE, run `snakemake prefetch "
            f"--configfile <config>`, or give a checkpoint path as models.{alias}.weights."
        )
    return None


def _offline_torchvision(alias: str, spec: dict, cache_dir: str | None) -> str | None:
    """A problem with a torchvision model's local weights file, or None."""
    from .sources import pretrained_file
    from .weights import WeightFileError

    try:
        pretrained_file(_torchvision_member(spec))
    except (WeightFileError, ValueError) as err:
        return f"models.{alias} ({model_label(spec)}): {err}"
    return None


# source -> the offline check of a pretrained model's weights (python factories: nothing to check)
OFFLINE_CHECKS = {"timm": _offline_timm, "torchvision": _offline_torchvision, "python": lambda *a: None}
