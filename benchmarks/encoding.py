"""Benchmark: brainprop's ridge_cv against the scikit-learn reference loop it reproduces.

Writes results/benchmarks/encoding.json with both timings, their ratio and the largest
difference in r, for a case with more images than features and one with fewer; also the
torch backend (float32, CPU unless --device cuda) against the NumPy float64 backend when
torch is installed.
Usage: python benchmarks/encoding.py [--scale 1.0] [--device cpu]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from brainprop._ridge import _pearson
from brainprop.encoding import DEFAULT_ALPHAS, make_folds, ridge_cv


def reference_r(X: np.ndarray, Y: np.ndarray, folds: list) -> np.ndarray:
    """Mean held-out Pearson r of StandardScaler + RidgeCV(alpha_per_target) per fold."""
    r = []
    for train, test in folds:
        pipe = make_pipeline(StandardScaler(), RidgeCV(DEFAULT_ALPHAS, alpha_per_target=True))
        r.append(_pearson(pipe.fit(X[train], Y[train]).predict(X[test]), Y[test]))
    return np.mean(r, axis=0)


def torch_case(X: np.ndarray, Y: np.ndarray, folds: list, numpy_r: np.ndarray, device: str) -> dict:
    """Time the torch backend (float32) and compare its r with the NumPy float64 backend."""
    if importlib.util.find_spec("torch") is None:
        return {}
    # Warm up (import torch, start its thread pool, initialise CUDA) outside the timing.
    ridge_cv(X[:, :8], Y[:, :4], folds, DEFAULT_ALPHAS, backend="torch", device=device)
    start = time.perf_counter()
    r = ridge_cv(X, Y, folds, DEFAULT_ALPHAS, backend="torch", device=device).r
    return {"torch_device": device, "torch_float32_s": time.perf_counter() - start,
            "torch_max_abs_diff_r": float(np.nanmax(np.abs(r - numpy_r)))}


def run_case(n: int, d: int, m: int, seed: int = 0, device: str = "cpu") -> dict:
    """Time the implementations on one simulated problem of n images, d features, m targets."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    Y = (X[:, : min(d, 64)] @ rng.standard_normal((min(d, 64), m)) * 0.1
         + rng.standard_normal((n, m))).astype(np.float32)
    folds = make_folds(n, None, 5, seed)
    start = time.perf_counter()
    fast = ridge_cv(X, Y, folds, DEFAULT_ALPHAS).r
    t_fast = time.perf_counter() - start
    start = time.perf_counter()
    ref = reference_r(X.astype(np.float64), Y.astype(np.float64), folds)
    t_ref = time.perf_counter() - start
    return {"n_images": n, "n_features": d, "n_targets": m, "ridge_cv_s": t_fast,
            "sklearn_s": t_ref, "speedup": t_ref / t_fast, "max_abs_diff_r": float(np.abs(fast - ref).max()),
            **torch_case(X, Y, folds, fast, device)}


def main() -> None:
    """Run both cases and write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every problem size")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                        help="device of the torch backend case")
    args = parser.parse_args()
    s = args.scale
    cases = [run_case(int(2000 * s), int(512 * s), int(4000 * s), device=args.device),
             run_case(int(1000 * s), int(2048 * s), int(4000 * s), device=args.device)]
    out = Path("results/benchmarks/encoding.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "encoding", "cases": cases}, indent=2))
    print(json.dumps(cases, indent=2))


if __name__ == "__main__":
    main()
