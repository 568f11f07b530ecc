"""Resumable, content-addressed cache of extracted features (light: no torch import).

An extraction is identified by everything its numbers depend on (`feature_identity`); the
SHA-256 of that identity names its cache folder. Images are extracted in shards: each shard's
arrays are written first and its `shard.json` (with a checksum per array) last, so a shard
without a valid `shard.json` is never trusted. Once every shard is verified the shards are
concatenated into one memory-mappable `.npy` per signal and layer (`assembled/`, again with
checksums), which the extract rule's output folder then hard-links (or copies across file
systems). Beside the signals, every shard holds two per-image arrays (`EXTRAS`): `output.npy`,
the model output the loss reads (the forward stack's last band), and `nuisance.npy`, the
model's confidence, entropy and each layer's gradient norm (`features.files.NUISANCE_FIXED`).
Layout::

    {cache_dir}/{key}/identity.json
    {cache_dir}/{key}/shard-00000/{signal}/{layer:02d}.npy, output.npy, nuisance.npy + shard.json
    {cache_dir}/{key}/assembled/{signal}/{layer:02d}.npy, output.npy, nuisance.npy + assembled.json
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_path, file_sha256, load_array, save_array
from .files import feature_path

__all__ = [
    "CACHE_FORMAT",
    "EXTRAS",
    "STORAGE_DTYPES",
    "Shard",
    "ShardCache",
    "feature_identity",
    "feature_key",
    "file_sha256",
    "manifest_digest",
    "weights_identity",
]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16}
# Per-image arrays beside the signals -> their dtype (None: the storage dtype, like the features).
EXTRAS: dict[str, type | None] = {"output": None, "nuisance": np.float32}


def weights_identity(weights: str, seed: int, key_map: str | None = None) -> str:
    """What identifies a model's weights: the seed of random ones, the checkpoint's content hash (and key map)."""
    from .weights import resolve_checkpoint

    if weights == "random":
        return f"random(seed={seed})"
    if weights == "pretrained":
        return "pretrained"  # the pretrained tag is part of the model name
    path = resolve_checkpoint(weights)
    mapped = f",key_map={key_map}" if key_map else ""
    return f"checkpoint(sha256={file_sha256(path)}{mapped})"


def manifest_digest(manifest: pd.DataFrame) -> str:
    """SHA-256 over the image ids and image hashes of a manifest, in order."""
    digest = hashlib.sha256()
    for image_id, sha in zip(manifest["image_id"], manifest["sha256"]):
        digest.update(f"{image_id}\t{sha}\n".encode())
    return digest.hexdigest()


def feature_identity(
    model: dict,
    seed: int,
    preprocessing: dict,
    layers: Sequence[str],
    pooling: dict,
    manifest: pd.DataFrame,
    storage_dtype: str,
) -> dict:
    """Everything the extracted numbers depend on (and nothing else: not batch size, device or workers).

    The architecture's part comes from its source (features.sources); a timm model keeps the
    keys it had before sources existed, so its cache keys did not change.
    """
    from .sources import canonical_model, source_of

    model = canonical_model(model)
    return {
        "format": CACHE_FORMAT,
        **source_of(model).identity(model["name"], model.get("kwargs") or {}),
        "weights": weights_identity(model["weights"], seed, model.get("key_map")),
        "preprocessing": preprocessing,
        "layers": list(layers),
        "pooling": pooling,
        "loss": model.get("loss", "cross_entropy"),
        "loss_params": model.get("loss_params") or {},
        "precision": model.get("precision", "float32"),
        "signals": sorted(model.get("signals", ["act", "grad"])),
        "images": manifest_digest(manifest),
        "n_images": len(manifest),
        "storage_dtype": storage_dtype,
        # The seed of the feedback matrices, for the signals that have them.
        "feedback_seed": seed if set(model.get("signals", [])) & {"fa", "dfa"} else None,
        # Keys that only settings other than the defaults add, so that earlier keys stay the same.
        **({"grad_normalize": model["grad_normalize"]} if model.get("grad_normalize", "none") != "none" else {}),
        **_loss_file_identity(model),
    }


def _loss_file_identity(model: dict) -> dict:
    """The sha256 of each file a loss parameter names (a head, text embeddings), when the loss has files."""
    from .weights import loss_files, resolve_checkpoint

    named = loss_files(model.get("loss", "cross_entropy"), model.get("loss_params"))
    files = {name: file_sha256(resolve_checkpoint(value)) for name, value in named.items()}
    return {"loss_files": files} if files else {}


def feature_key(identity: dict) -> str:
    """Cache key of an extraction: SHA-256 of its canonical JSON identity (first 24 hex digits)."""
    text = json.dumps(identity, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Shard:
    """A contiguous block of images [start, stop) of the manifest."""

    index: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def _write_json(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class ShardCache:
    """The cache folder of one extraction: shards, their checksums and the assembled arrays."""

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        identity: dict,
        n_images: int,
        shard_size: int,
        signals: Sequence[str],
        n_layers: int,
    ):
        if shard_size < 1:
            raise ValueError(f"extraction.shard_size {shard_size}: expected a positive integer")
        self.identity = identity
        self.key = feature_key(identity)
        self.root = Path(cache_dir) / self.key
        self.n_images = n_images
        self.shard_size = int(shard_size)
        self.signals = list(signals)
        self.n_layers = n_layers
        self.dtype = STORAGE_DTYPES[identity.get("storage_dtype", "float32")]
        self.shards = [
            Shard(i, start, min(start + self.shard_size, n_images))
            for i, start in enumerate(range(0, n_images, self.shard_size))
        ]

    # ------------------------------------------------------------ bookkeeping

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on this cache entry (two jobs with one key take turns)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                existing = _read_json(self.root / "identity.json")
                if existing is not None and existing != json.loads(json.dumps(self.identity, default=str)):
                    raise RuntimeError(f"{self.root}: identity.json differs from this extraction's identity")
                if existing is None:
                    _write_json(self.root / "identity.json", self.identity)
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _files(self, folder: Path) -> list[Path]:
        features = [feature_path(folder, s, k) for s in self.signals for k in range(self.n_layers)]
        return features + [self.extra_path(folder, name) for name in EXTRAS]

    @staticmethod
    def extra_path(folder: Path, name: str) -> Path:
        """Where a per-image extra array (`EXTRAS`) lives in a shard or assembled folder."""
        return Path(folder) / f"{name}.npy"

    def _dtype(self, name: str) -> type:
        """The stored dtype of a signal (the storage dtype) or of an extra array."""
        return EXTRAS.get(name) or self.dtype

    def _arrays(self, features: dict[str, list[np.ndarray]], folder: Path) -> list[tuple[str, np.ndarray, Path]]:
        """(name, array, target path) of every array a shard stores, checked for its layer count."""
        out = []
        for signal in self.signals:
            arrays = features[signal]
            if len(arrays) != self.n_layers:
                raise ValueError(f"{len(arrays)} {signal} layers, expected {self.n_layers}")
            out += [(signal, a, feature_path(folder, signal, k)) for k, a in enumerate(arrays)]
        missing = [name for name in EXTRAS if name not in features]
        if missing:
            raise ValueError(f"extracted features lack {missing}; expected {list(EXTRAS)} beside the signals")
        return out + [(name, features[name][0], self.extra_path(folder, name)) for name in EXTRAS]

    def _verify(self, folder: Path, record: str, rows: int) -> bool:
        """Whether `folder` holds every array with the checksum and row count its record lists."""
        meta = _read_json(folder / record)
        if meta is None or meta.get("rows") != rows:
            return False
        sums = meta.get("sha256", {})
        for path in self._files(folder):
            rel = str(path.relative_to(folder))
            if not path.is_file() or sums.get(rel) != file_sha256(path):
                return False
        return True

    def shard_dir(self, shard: Shard) -> Path:
        return self.root / f"shard-{shard.index:05d}"

    @property
    def assembled_dir(self) -> Path:
        return self.root / "assembled"

    def is_assembled(self) -> bool:
        """Whether the assembled arrays exist and match their checksums."""
        return self._verify(self.assembled_dir, "assembled.json", self.n_images)

    def assembled_sha256(self) -> dict[str, str]:
        """SHA-256 of each assembled array by its path relative to the folder (`act/00.npy`), as recorded."""
        meta = _read_json(self.assembled_dir / "assembled.json") or {}
        return dict(meta.get("sha256", {}))

    def computed_with(self) -> list[dict]:
        """How each shard of the assembled arrays was computed (batch size, device, threads, versions)."""
        meta = _read_json(self.assembled_dir / "assembled.json") or {}
        return list(meta.get("computed_with", []))

    def pending(self) -> list[Shard]:
        """Shards still to extract; a shard that fails verification is deleted and counted in the log."""
        todo, broken = [], 0
        for shard in self.shards:
            folder = self.shard_dir(shard)
            if self._verify(folder, "shard.json", shard.size):
                continue
            if folder.exists():
                broken += 1
                shutil.rmtree(folder)
            todo.append(shard)
        log.info(
            "cache %s: %d shard(s) of %d verified, %d to extract (%d incomplete or corrupt, deleted)",
            self.root,
            len(self.shards) - len(todo),
            len(self.shards),
            len(todo),
            broken,
        )
        return todo

    # ------------------------------------------------------------ writing

    def write_shard(
        self, shard: Shard, features: dict[str, list[np.ndarray]], computed_with: dict | None = None
    ) -> None:
        """Store one shard's arrays (signals and `EXTRAS`), then its checksums (which make it trusted).

        `computed_with` records how (not what) the shard was computed: batch size, device, threads,
        library versions; these move the numbers within the tolerance of docs/features.md
        ("What changes the numbers"), so the record says which run's rounding the cache holds.
        """
        folder = self.shard_dir(shard)
        sums = {}
        try:
            arrays = self._arrays(features, folder)
        except ValueError as err:
            raise ValueError(f"shard {shard.index}: {err}") from None
        for name, array, path in arrays:
            if array.shape[0] != shard.size:
                raise ValueError(f"shard {shard.index}: {array.shape[0]} rows, expected {shard.size}")
            save_array(path, np.asarray(array, dtype=self._dtype(name)))
            sums[str(path.relative_to(folder))] = file_sha256(path)
        record = {"rows": shard.size, "start": shard.start, "sha256": sums, "computed_with": computed_with or {}}
        _write_json(folder / "shard.json", record)

    def assemble(self) -> None:
        """Concatenate the verified shards into one array per signal and layer (and extra), then drop the shards."""
        folder = self.assembled_dir
        sums = {}
        how = [(_read_json(self.shard_dir(s) / "shard.json") or {}).get("computed_with", {}) for s in self.shards]
        names = [(s, k) for s in self.signals for k in range(self.n_layers)] + [(name, None) for name in EXTRAS]
        for name, k in names:
            where = (
                (lambda f, n=name, k=k: feature_path(f, n, k))
                if k is not None
                else (lambda f, n=name: self.extra_path(f, n))
            )
            parts = [load_array(where(self.shard_dir(s)), mmap=True) for s in self.shards]
            target = where(folder)
            with atomic_path(target) as tmp:
                out = np.lib.format.open_memmap(
                    tmp, mode="w+", dtype=self._dtype(name), shape=(self.n_images, parts[0].shape[1])
                )
                for shard, part in zip(self.shards, parts):
                    out[shard.start : shard.stop] = part
                out.flush()
                del out
            sums[str(target.relative_to(folder))] = file_sha256(target)
        _write_json(folder / "assembled.json", {"rows": self.n_images, "sha256": sums, "computed_with": how})
        for shard in self.shards:
            shutil.rmtree(self.shard_dir(shard), ignore_errors=True)

    def load_extra(self, name: str) -> np.ndarray:
        """An assembled per-image extra array (`EXTRAS`), (n_images, width)."""
        return load_array(self.extra_path(self.assembled_dir, name))

    def link_into(self, out_dir: str | os.PathLike, skip: Sequence[str] = ("nuisance",)) -> None:
        """Put the assembled arrays into `out_dir` as hard links (copies across file systems).

        Extras in `skip` are not linked (the nuisance array reaches the folder as a table).
        """
        skipped = {self.extra_path(self.assembled_dir, name) for name in skip}
        for source in self._files(self.assembled_dir):
            if source in skipped:
                continue
            target = Path(out_dir) / source.relative_to(self.assembled_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target.unlink()
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
