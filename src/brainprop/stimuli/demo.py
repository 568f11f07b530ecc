"""The offline, deterministic demo image set: crops of scikit-image photographs and procedural textures."""

from __future__ import annotations

import hashlib
import io
import logging
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..io import atomic_path
from .files import MANIFEST_COLUMNS

__all__ = ["MIN_MEAN_ABS_DIFF", "make_demo_images"]

log = logging.getLogger(__name__)


# Two images closer than this (mean absolute difference, 0-255 scale) count as near-duplicates.
MIN_MEAN_ABS_DIFF = 6.0


# Crops flatter than this pixel standard deviation (sky, retina border) are rejected.
_MIN_PIXEL_STD = 12.0


_MAX_TRIES = 200


_DOWNSAMPLE = 4


# an endless stream of candidate images (uint8, (size, size, 3)) with their descriptions
_Candidates = Iterator[tuple[np.ndarray, str]]


_TextureMaker = Callable[[np.random.Generator, int], tuple[np.ndarray, str]]


# group name -> scikit-image sample that ships inside the wheel (no download).
# `cat` is the same photograph as `chelsea`, and `horse`/`logo` are drawings, so they are left out.
_PHOTOS: dict[str, str] = {
    "astronaut": "astronaut",
    "coffee": "coffee",
    "chelsea": "chelsea",
    "rocket": "rocket",
    "motorcycle": "stereo_motorcycle",
    "immunohistochemistry": "immunohistochemistry",
    "hubble_deep_field": "hubble_deep_field",
    "retina": "retina",
    "colorwheel": "colorwheel",
    "camera": "camera",
    "brick": "brick",
    "grass": "grass",
    "gravel": "gravel",
    "coins": "coins",
    "moon": "moon",
    "clock": "clock",
    "cell": "cell",
    "page": "page",
    "text": "text",
}


def _load_photo(name: str) -> np.ndarray | None:
    """Return the bundled sample `name` as uint8 RGB of shape (height, width, 3), or None if absent."""
    import skimage.data

    try:
        image = getattr(skimage.data, _PHOTOS[name])()
    except (OSError, ImportError, KeyError, ValueError) as err:  # a download was needed
        log.warning("skipping sample image %r: %s", name, err)
        return None
    if isinstance(image, tuple):  # stereo pair: keep the left view
        image = image[0]
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"sample image {name!r} has dtype {image.dtype}, expected uint8")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _photo_crops(name: str, photo: np.ndarray, rng: np.random.Generator, size: int) -> _Candidates:
    """Yield endless random square crops (scale, position, optional flip) of one photograph."""
    pil = Image.fromarray(photo, "RGB")
    height, width = photo.shape[:2]
    short = min(height, width)
    while True:
        side = int(round(short * rng.uniform(0.3, 1.0)))
        x0 = int(rng.integers(0, width - side + 1))
        y0 = int(rng.integers(0, height - side + 1))
        flip = bool(rng.random() < 0.5)
        box = (x0, y0, x0 + side, y0 + side)
        crop = pil.resize((size, size), Image.Resampling.LANCZOS, box=box)
        if flip:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        source = f"{name} crop x={x0} y={y0} side={side}" + (" flip" if flip else "")
        yield np.asarray(crop, dtype=np.uint8), source


def _to_uint8(field: np.ndarray) -> np.ndarray:
    """Map a float image of shape (size, size, 3) to uint8 using its 1st-99th percentile range."""
    low, high = np.percentile(field, [1.0, 99.0])
    scaled = (field - low) / max(high - low, 1e-12)
    return np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)


def _colour_mix(fields: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mix three fields of shape (3, size, size) into colour channels (size, size, 3).

    The first field drives luminance and the others weaker chroma, as in natural images.
    """
    luminance = fields[0][:, :, None] * rng.uniform(0.6, 1.0, size=3)
    chroma = np.einsum("cij,dc->ijd", fields[1:], rng.normal(0.0, 0.35, size=(3, 2)))
    return luminance + chroma + rng.uniform(-0.5, 0.5, size=3)


def _spectral_fields(rng: np.random.Generator, size: int, amplitude: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Return three random fields of shape (3, size, size) whose amplitude spectrum is `amplitude(f)`."""
    cycles = np.fft.fftfreq(size) * size
    freq = np.hypot(*np.meshgrid(cycles, cycles, indexing="ij"))
    gain = amplitude(np.maximum(freq, 1.0))
    gain[0, 0] = 0.0
    noise = np.fft.fft2(rng.standard_normal((3, size, size)))
    fields = np.fft.ifft2(noise * gain).real
    return fields / fields.std(axis=(1, 2), keepdims=True)


def _power_noise(alpha_range: tuple[float, float]) -> _TextureMaker:
    """Coloured 1/f^alpha noise, the spectral slope drawn from `alpha_range`."""

    def make(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
        alpha = rng.uniform(*alpha_range)
        fields = _spectral_fields(rng, size, lambda f: f**-alpha)
        return _to_uint8(_colour_mix(fields, rng)), f"1/f^{alpha:.2f} coloured noise"

    return make


def _bandpass_noise(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """Coloured noise in a one-octave band around a random spatial frequency."""
    centre = rng.uniform(4.0, size / 4.0)
    fields = _spectral_fields(rng, size, lambda f: np.exp(-0.5 * (np.log2(f / centre) / 0.5) ** 2))
    return _to_uint8(_colour_mix(fields, rng)), f"band-pass noise at {centre:.1f} cycles/image"


def _gratings(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """One to three oriented coloured sinusoidal gratings (a plaid) over faint noise."""
    y, x = np.mgrid[0:size, 0:size] / size
    n_gratings = int(rng.integers(1, 4))
    image = 0.15 * rng.standard_normal((size, size, 3))
    for _ in range(n_gratings):
        theta, cycles, phase = rng.uniform(0, np.pi), rng.uniform(2.0, 20.0), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * cycles * (x * np.cos(theta) + y * np.sin(theta)) + phase)
        image += wave[:, :, None] * rng.uniform(-1.0, 1.0, size=3)
    return _to_uint8(image), f"plaid of {n_gratings} oriented gratings"


def _blobs(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """Smooth coloured Gaussian blobs on a coloured background."""
    y, x = np.mgrid[0:size, 0:size] / size
    n_blobs = int(rng.integers(4, 25))
    image = np.broadcast_to(rng.uniform(0, 1, size=3), (size, size, 3)).copy()
    for _ in range(n_blobs):
        cy, cx, sigma = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.2)
        weight = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
        image += weight[:, :, None] * rng.uniform(-1.0, 1.0, size=3)
    return _to_uint8(image), f"{n_blobs} Gaussian blobs"


def _dead_leaves(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """Dead-leaves model: occluding discs with power-law radii (natural-image-like statistics)."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.empty((size, size, 3))
    covered = np.zeros((size, size), dtype=bool)
    palette = rng.uniform(0, 1, size=(2, 3))
    n_leaves = 0
    while not covered.all() and n_leaves < 2000:
        radius = 0.02 / np.sqrt(rng.uniform(0.0016, 1.0))  # density ~ r^-3 on [0.02, 0.5]
        disc = ((x - rng.uniform(-0.1, 1.1)) ** 2 + (y - rng.uniform(-0.1, 1.1)) ** 2 < radius**2) & ~covered
        mix = rng.uniform(0, 1)
        image[disc] = (1 - mix) * palette[0] + mix * palette[1] + rng.normal(0, 0.1, size=3)
        covered |= disc
        n_leaves += 1
    image[~covered] = palette[0]
    return _to_uint8(image), f"dead leaves ({n_leaves} discs)"


# texture family (a group) -> generator of one image from a seeded Generator
_TEXTURES: dict[str, _TextureMaker] = {
    "texture_pinknoise": _power_noise((0.8, 1.3)),
    "texture_smoothnoise": _power_noise((1.8, 2.6)),
    "texture_bandpass": _bandpass_noise,
    "texture_gratings": _gratings,
    "texture_blobs": _blobs,
    "texture_deadleaves": _dead_leaves,
}


def _texture_stream(family: str, rng: np.random.Generator, size: int) -> _Candidates:
    """Yield endless images of one texture family."""
    make = _TEXTURES[family]
    while True:
        image, description = make(rng, size)
        yield image, f"{family} {description}"


def _group_rng(seed: int, group: str) -> np.random.Generator:
    """A generator per group, keyed by its name so adding a group leaves the others unchanged."""
    return np.random.default_rng([seed, zlib.crc32(group.encode())])


def _streams(size: int, seed: int) -> dict[str, _Candidates]:
    """One endless candidate stream per group: photographs first, then texture families."""
    streams = {}
    for name in _PHOTOS:
        photo = _load_photo(name)
        if photo is not None:
            streams[name] = _photo_crops(name, photo, _group_rng(seed, name), size)
    for family in _TEXTURES:
        streams[family] = _texture_stream(family, _group_rng(seed, family), size)
    return streams


def _png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 RGB array as PNG with fixed options and no metadata."""
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG", compress_level=6, optimize=False)
    return buffer.getvalue()


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """Block-average an image (size, size, 3) by `_DOWNSAMPLE`, as float32, flattened."""
    size = image.shape[0] - image.shape[0] % _DOWNSAMPLE
    n_blocks = size // _DOWNSAMPLE
    blocks = image[:size, :size].reshape(n_blocks, _DOWNSAMPLE, n_blocks, _DOWNSAMPLE, 3)
    return blocks.mean(axis=(1, 3), dtype=np.float64).astype(np.float32).ravel()


def _accept(stream: _Candidates, group: str, thumbs: list[np.ndarray]) -> tuple[np.ndarray, str]:
    """Draw from `stream` until an image is neither flat nor a near-duplicate of an accepted one.

    Block means can only shrink a mean absolute difference, so a thumbnail difference above
    `MIN_MEAN_ABS_DIFF` guarantees the full-resolution difference is above it too.
    """
    accepted = np.stack(thumbs) if thumbs else np.empty((0, 0), dtype=np.float32)
    for _ in range(_MAX_TRIES):
        image, source = next(stream)
        if image.std(dtype=np.float64) < _MIN_PIXEL_STD:
            continue
        thumb = _thumbnail(image)
        if accepted.size and np.abs(accepted - thumb).mean(axis=1).min() <= MIN_MEAN_ABS_DIFF:
            continue
        thumbs.append(thumb)
        return image, source
    raise RuntimeError(f"group {group!r}: no distinct, non-flat image after {_MAX_TRIES} draws")


def demo_group_count(n_images: int) -> int:
    """Groups of a demo set of `n_images` (image i comes from group i mod the groups; fewer if a photo is missing)."""
    return min(int(n_images), len(_PHOTOS) + len(_TEXTURES))


def make_demo_images(out_dir: Path, n_images: int = 240, size: int = 112, seed: int = 0) -> pd.DataFrame:
    """Write `n_images` distinct RGB PNGs of size×size into `out_dir/images/` and return their manifest.

    Groups (bundled scikit-image photographs, then procedural texture families) take turns, so
    image i comes from group i mod n_groups and a smaller set is a prefix of a larger one.
    Paths in the manifest are relative to `out_dir`.
    """
    if int(n_images) != n_images or n_images < 1:
        raise ValueError(f"n_images={n_images!r}: expected a positive integer")
    if int(size) != size or size < 16:
        raise ValueError(f"size={size!r}: expected an integer of at least 16 pixels")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    streams = _streams(int(size), int(seed))
    groups = list(streams)
    width = max(4, len(str(n_images - 1)))
    rows, thumbs = [], []
    for index in range(int(n_images)):
        group = groups[index % len(groups)]
        image, source = _accept(streams[group], group, thumbs)
        data = _png_bytes(image)
        image_id = f"img{index:0{width}d}"
        relative = f"images/{image_id}.png"
        with atomic_path(out_dir / relative) as tmp:
            tmp.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        rows.append((image_id, relative, digest, group, source, int(size), int(size)))
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    return manifest.astype({"width": "int64", "height": "int64"})
