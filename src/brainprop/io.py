"""Atomic file writes and provenance-carrying Parquet tables shared by every stage."""

from __future__ import annotations

import hashlib
import json
import logging
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
    "check_sha256",
    "file_sha256",
    "forcerun_hint",
    "load_array",
    "read_provenance",
    "read_table",
    "save_array",
    "write_table",
]


class CorruptFileError(ValueError):
    """A cached file exists but cannot be trusted (truncated, changed after it was written, wrong shape or dtype).

    `problem` says what is wrong with the file; given `output` (the rule output it belongs to), the
    message adds the command that recomputes it (`forcerun_hint`).
    """

    def __init__(self, problem: str, output: str | os.PathLike | None = None):
        self.problem, self.output = problem, output
        super().__init__(problem if output is None else f"{problem}; {forcerun_hint(output)}")


def forcerun_hint(output: str | os.PathLike) -> str:
    """The one command that recomputes a rule's output (a file, or the folder a file sits in) and what reads it.

    `output` must be the rule's output as Snakemake names it (a directory output for a file inside
    one): deleting a file inside a directory output does not make Snakemake rerun its rule.
    """
    return (
        f"recompute it by running the same snakemake command again with `--forcerun {output}` added "
        "(that job and every job that reads its output run again)"
    )


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


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 hex digest of a file, read in chunks (feature files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


log = logging.getLogger(__name__)

# Files this process has checked against their recorded SHA-256, by (path, inode, size, mtime):
# each is hashed once per job, however often the job opens it.
_VERIFIED: set[tuple[str, int, int, int]] = set()


def check_sha256(path: str | os.PathLike, expected: str | None, output: str | os.PathLike, writer: str) -> None:
    """Check a file against the SHA-256 its writer recorded (once per file per process); CorruptFileError if not.

    `output` is the rule output the file belongs to and `writer` names the rule that wrote it;
    a file whose writer recorded no checksum (`expected` None) is logged and read unverified.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise CorruptFileError(f"{path}: missing; expected the file the {writer} wrote", output) from None
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    if expected is None:
        log.warning(
            "%s: no checksum recorded (written before brainprop recorded them); read unverified. To verify, %s",
            path,
            forcerun_hint(output),
        )
    elif (actual := file_sha256(path)) != expected:
        raise CorruptFileError(
            f"{path}: sha256 {actual} differs from the {expected} the {writer} recorded when it wrote this file: "
            "it was changed, truncated or damaged afterwards, and its numbers cannot be trusted",
            output,
        )
    _VERIFIED.add(key)


def save_array(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a NumPy array to `path` (.npy) atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array))


def load_array(path: str | os.PathLike, mmap: bool = False, output: str | os.PathLike | None = None) -> np.ndarray:
    """Read a .npy array, turning a truncated or unreadable file into a CorruptFileError.

    `output` is the rule output the file belongs to (default: the file itself), named in the message.
    """
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise CorruptFileError(
            f"{path}: cannot read this array ({err}); expected a .npy file as brainprop writes it", output or path
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
        # A CRC32 per data page: a byte changed on disk is an error at read time, not a silent wrong value.
        pq.write_table(arrow, tmp, write_page_checksum=True)


def read_table(path: str | os.PathLike, output: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read a Parquet table written by `write_table`, verifying its page checksums.

    `output` is the rule output the file belongs to (default: the file itself), named in the message.
    Tables written without page checksums (before brainprop wrote them) are read unverified.
    """
    try:
        return pd.read_parquet(path, page_checksum_verification=True)
    except (OSError, ValueError) as err:
        raise CorruptFileError(
            f"{path}: cannot read this table ({err}); expected a Parquet file as brainprop writes it", output or path
        ) from err


def read_provenance(path: str | os.PathLike, output: str | os.PathLike | None = None) -> dict:
    """Return the brainprop key-value metadata of a Parquet file as a dict (`output` as in `read_table`)."""
    import pyarrow.parquet as pq

    prefix = b"brainprop."
    try:
        meta = pq.read_schema(path).metadata or {}
        return {k[len(prefix) :].decode(): json.loads(v) for k, v in meta.items() if k.startswith(prefix)}
    except (OSError, ValueError) as err:
        raise CorruptFileError(
            f"{path}: cannot read this table's metadata ({err}); expected a Parquet file as brainprop writes it",
            output or path,
        ) from err
