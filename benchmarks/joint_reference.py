"""What E's reference and the nuisances cost per joint job, against an encode job in the same run.

One demo `joint_shared` job's shapes (240 images, a layer's 256 activation and 256 gradient
features, 8 subjects × 800 targets, the forward stack's 7,656 features in 7 blocks (MobileNetV2's
6 demo blocks and the output) reduced to 64 components, 5 folds, the 5-value grid per band)
timed in-process for each reference setting:
`same_layer`, `stack` (the default), both (what `sensitivity.reference: [same_layer]` adds), and
`stack` with the three nuisances partialled out; the baseline is one `encode_shared` fit of the
gradients (the 10-value single-band grid) on the same targets. Writes
`results/benchmarks/joint_reference.json` with CPU seconds per case and its ratio to the baseline.

Usage: python benchmarks/joint_reference.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from brainprop.encoding._ridge import ridge_cv_shared
from brainprop.encoding.joint import joint_encode_shared

OUT = Path(__file__).resolve().parents[1] / "results" / "benchmarks"
N_IMAGES, WIDTH, N_SUBJECTS, N_TARGETS = 240, 256, 8, 800
STACK_DIMS = (128, 128, 256, 384, 640, 5120, 1000)  # 6 layers and the output: 7,656 columns
ENCODE_ALPHAS = np.logspace(0, 8, 10)
JOINT_ALPHAS = np.logspace(0, 8, 5)


def demo_shaped(seed: int = 0) -> dict:
    """Features, stack, nuisances, folds and 8 subjects' targets with a demo joint job's shapes."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((N_IMAGES, 32))
    act = latent @ rng.standard_normal((32, WIDTH)) + rng.standard_normal((N_IMAGES, WIDTH))
    grad = latent @ rng.standard_normal((32, WIDTH)) + rng.standard_normal((N_IMAGES, WIDTH))
    stack = [latent @ rng.standard_normal((32, d)) + rng.standard_normal((N_IMAGES, d)) for d in STACK_DIMS]
    Ys = [latent @ rng.standard_normal((32, N_TARGETS)) + 3 * rng.standard_normal((N_IMAGES, N_TARGETS))]
    Ys += [Ys[0] + rng.standard_normal(Ys[0].shape) for _ in range(N_SUBJECTS - 1)]
    order = rng.permutation(N_IMAGES)
    folds = [(np.setdiff1d(order, part), np.sort(part)) for part in np.array_split(order, 5)]
    nuisance = rng.standard_normal((N_IMAGES, 3))
    return {"act": act, "grad": grad, "stack": stack, "nuisance": nuisance, "Ys": Ys, "folds": folds}


def cpu_seconds(fn, repeats: int) -> float:
    """Least CPU time of `repeats` calls."""
    best = np.inf
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return float(best)


def main() -> None:
    """Time every reference setting and the encode baseline; write results/benchmarks/joint_reference.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    d = demo_shaped()

    def joint(references: list[str], nuisance: bool = False):
        return lambda: joint_encode_shared(
            d["act"], d["grad"], d["Ys"], d["folds"], JOINT_ALPHAS, references=references, stack=d["stack"],
            width=64, nuisance=d["nuisance"] if nuisance else None,
        )  # fmt: skip

    Y = np.concatenate(d["Ys"], axis=1)
    baseline = cpu_seconds(lambda: ridge_cv_shared(d["grad"], [Y], d["folds"], ENCODE_ALPHAS), args.repeats)
    cases = {
        "same_layer": joint(["same_layer"]),
        "stack": joint(["stack"]),
        "stack+same_layer": joint(["stack", "same_layer"]),
        "stack+nuisance": joint(["stack"], nuisance=True),
    }
    shape = {"n_images": N_IMAGES, "features": WIDTH, "stack_features": sum(STACK_DIMS), "targets": Y.shape[1]}
    record = {"benchmark": "joint_reference", "shape": shape, "encode_cpu_s": round(baseline, 2)}
    for name, fn in cases.items():
        seconds = cpu_seconds(fn, args.repeats)
        record[name] = {"cpu_s": round(seconds, 2), "vs_encode": round(seconds / baseline, 2)}
        print(name, record[name], flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "joint_reference.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
