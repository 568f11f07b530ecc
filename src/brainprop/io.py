"""Atomic file writes and provenance-carrying Parquet tables shared by every stage."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "CorruptFileError",
    "atomic_path",
    "load_array",
    "read_provenance",
    "read_table",
    "save_array",
    "write_table",
]


class CorruptFileError(ValueError):
    """A cached file exists but cannot be trusted (truncated, wrong shape or dtype)."""


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` that is renamed onto it only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp creates 0600 files; give outputs the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_array(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a NumPy array to `path` (.npy) atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array))


def load_array(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """Read a .npy array, turning a truncated or unreadable file into a CorruptFileError."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise CorruptFileError(
            f"{path}: cannot read this cached array ({err}). Delete the file and rerun "
            "snakemake (or run with --rerun-incomplete) to recompute it."
        ) from err


def write_table(path: str | os.PathLike, table: pd.DataFrame, metadata: dict | None = None) -> None:
    """Write a DataFrame to Parquet atomically, with `metadata` as JSON key-value metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table.reset_index(drop=True), preserve_index=False)
    meta = dict(arrow.schema.metadata or {})
    for key, value in (metadata or {}).items():
        meta[f"brainprop.{key}".encode()] = json.dumps(value, sort_keys=True, default=str).encode()
    arrow = arrow.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a Parquet table written by `write_table`."""
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise CorruptFileError(f"{path}: cannot read this table ({err}). Delete it and rerun snakemake.") from err


def read_provenance(path: str | os.PathLike) -> dict:
    """Return the brainprop key-value metadata of a Parquet file as a dict."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    prefix = b"brainprop."
    return {key[len(prefix) :].decode(): json.loads(value) for key, value in meta.items() if key.startswith(prefix)}
