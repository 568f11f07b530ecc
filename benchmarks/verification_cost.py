"""What the input checks cost a job: hashing feature files, Y and images, and page checksums of tables.

Each encode job checks one feature matrix and one subject's Y against the SHA-256 their writers
recorded (once per file per job); each extract job hashes every image of its manifest; every table
is read with its page CRCs verified. Measured here on files of the demo's sizes and of a large
layer (10,000 images x 4,096 dims, the projection's cap), against reading the same file unchecked.
Writes results/benchmarks/verification_cost.json.
Usage: python benchmarks/verification_cost.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from brainprop.io import atomic_path, file_sha256, save_array, write_table

# (label, n_images, dim): the demo's largest feature matrix (ResNet-18, grid 2: 512 x 5), a subject's Y of
# the demo (8 ROIs' vertices and 272 sensors x 40 times), and a large layer.
ARRAYS = (
    ("demo features (360 x 2560)", 360, 2560),
    ("demo Y (360 x 11160)", 360, 11160),
    ("large layer (10000 x 4096)", 10000, 4096),
)


def _best(fn, repeats: int) -> float:
    """Fastest of `repeats` calls of fn, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def feature_costs(folder: Path, repeats: int) -> list[dict]:
    """load_features (hash + memory map + a full read) against the same read unchecked."""
    from brainprop.features import files as feature_files
    from brainprop.io import _VERIFIED

    rows = []
    for label, n, dim in ARRAYS:
        out = folder / label.split(" (")[0].replace(" ", "_")
        path = feature_files.feature_path(out, "act", 0)
        save_array(path, np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32))
        ids = pd.DataFrame({"image_id": np.arange(n).astype(str)})
        feature_files.save_samples(out, ids, sha256={"act/00.npy": file_sha256(path)})

        def checked(out: Path = out) -> None:
            _VERIFIED.clear()
            np.asarray(feature_files.load_features(out, "act", 0)).sum()

        def unchecked(path: Path = path) -> None:
            np.asarray(np.load(path, mmap_mode="r")).sum()

        unchecked()  # warm the page cache, as the job's own read would be
        t_checked, t_plain = _best(checked, repeats), _best(unchecked, repeats)
        rows.append(
            {
                "file": label,
                "mb": round(path.stat().st_size / 2**20, 1),
                "read_s": round(t_plain, 4),
                "read_checked_s": round(t_checked, 4),
                "added_s": round(t_checked - t_plain, 4),
            }
        )
    return rows


def image_costs(folder: Path, repeats: int) -> dict:
    """load_verified_manifest on the demo image set (360 images of 112 px) against load_manifest."""
    from brainprop.stimuli.demo import make_demo_images
    from brainprop.stimuli.files import load_manifest, load_verified_manifest, write_manifest

    manifest = make_demo_images(folder / "demo", n_images=360, size=112, seed=0)
    path = folder / "demo" / "manifest.parquet"
    write_manifest(path, manifest)
    size = sum((folder / "demo" / p).stat().st_size for p in manifest["path"])
    plain, checked = _best(lambda: load_manifest(path), repeats), _best(lambda: load_verified_manifest(path), repeats)
    return {"images": len(manifest), "mb": round(size / 2**20, 2), "added_s": round(checked - plain, 4)}


def table_costs(folder: Path, repeats: int) -> dict:
    """read_table with page CRCs against pandas without, on a 1,000,000-row per-target-like table."""
    from brainprop.io import read_table

    rng = np.random.default_rng(0)
    table = pd.DataFrame({"target": np.arange(1_000_000), "r": rng.standard_normal(1_000_000)})
    path = folder / "scores.parquet"
    write_table(path, table)
    checked = _best(lambda: read_table(path), repeats)
    plain = _best(lambda: pd.read_parquet(path), repeats)
    return {"rows": len(table), "mb": round(path.stat().st_size / 2**20, 1), "added_s": round(checked - plain, 4)}


def main(argv: list[str] | None = None) -> int:
    """Measure and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results/benchmarks/verification_cost.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = np.random.default_rng(1).bytes(256 * 2**20)
        (folder / "blob").write_bytes(data)
        sha_s = _best(lambda: file_sha256(folder / "blob"), args.repeats)
        payload = {
            "sha256_mb_per_s": round(256 / sha_s),
            "features_and_y": feature_costs(folder, args.repeats),
            "images": image_costs(folder, args.repeats),
            "table": table_costs(folder, args.repeats),
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as out:
        out.write_text(json.dumps(payload, indent=1))
    print(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
