"""Benchmark: brainprop's cross-validated ridge against scikit-learn and himalaya, CPU and GPU.

CPU mode (default) times, on the same simulated data, outer folds and penalty grid:
brainprop `ridge_cv` (NumPy, float64); the METHOD.md §4 reference loop (StandardScaler +
scikit-learn `RidgeCV(alphas, alpha_per_target=True)` per fold); himalaya `RidgeCV`
(NumPy backend, its default inner 5-fold; `KernelRidgeCV` when features outnumber images).
It also times one `encode` job end to end beside a bare `python -c 'import numpy'`, and
writes results/benchmarks/encoding.json.

GPU mode (--gpu) times the PyTorch backend at NSD scale (n=9000, d=1024, m=40000) against
himalaya `RidgeCV` on backend torch_cuda, checks r against a float64 NumPy reference on a
subset of targets, and writes results/benchmarks/encoding_gpu.json. It imports only NumPy,
scikit-learn's KFold, torch and (when installed) himalaya.

Usage: python benchmarks/encoding.py [--shapes 1000x768x20000 ...] [--repeats 1]
       python benchmarks/encoding.py --gpu [--device cuda|cpu] [--small]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from brainprop.encoding._backends import get_backend
from brainprop.encoding._ridge import _pearson, _scores, _solver, _standardize, ridge_cv

ALPHAS = np.logspace(0, 8, 10)  # METHOD.md §4 (brainprop.encoding.DEFAULT_ALPHAS)
SHAPES = ((1000, 768, 20000), (1000, 10000, 20000), (2000, 1024, 27000))
OUT = Path("results/benchmarks")


def simulate(n: int, d: int, m: int, seed: int = 0, latent: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Float32 features and responses driven by `latent` of the features plus unit noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d), dtype=np.float32)
    W = rng.standard_normal((min(d, latent), m), dtype=np.float32) * np.float32(0.1)
    Y = X[:, : min(d, latent)] @ W
    Y += rng.standard_normal((n, m), dtype=np.float32)
    return X, Y


def outer_folds(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The seeded 5-fold split that `brainprop.encoding.make_folds(n, None, 5, seed)` returns."""
    from sklearn.model_selection import KFold

    return list(KFold(5, shuffle=True, random_state=seed).split(np.zeros((n, 1))))


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """Wall-clock seconds and result of one call."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def sklearn_r(X: np.ndarray, Y: np.ndarray, folds: list) -> np.ndarray:
    """Mean held-out r of StandardScaler + RidgeCV(alpha_per_target) per fold (float64)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    r = []
    for train, test in folds:
        pipe = make_pipeline(StandardScaler(), RidgeCV(ALPHAS, alpha_per_target=True))
        pred = pipe.fit(X[train].astype(np.float64), Y[train].astype(np.float64)).predict(X[test])
        r.append(_pearson(pred, Y[test].astype(np.float64)))
    return np.mean(r, axis=0)


def himalaya_r(X: np.ndarray, Y: np.ndarray, folds: list, backend: str, dtype: type) -> np.ndarray:
    """Mean held-out r of himalaya RidgeCV (KernelRidgeCV for wide X), inner 5-fold, per outer fold."""
    from himalaya.backend import set_backend
    from himalaya.kernel_ridge import KernelRidgeCV
    from himalaya.ridge import RidgeCV

    ops = set_backend(backend, on_error="raise")
    scorer = None
    if backend.startswith("torch"):
        scorer = get_backend("torch", "cuda" if backend == "torch_cuda" else "cpu", "float32")
    r = []
    for train, test in folds:
        X_train, X_test = _standardize(X[train].astype(np.float64), X[test].astype(np.float64))
        wide = X.shape[1] >= len(train)
        model = (
            KernelRidgeCV(ALPHAS, kernel="linear", fit_intercept=True, cv=5)
            if wide
            else RidgeCV(ALPHAS, fit_intercept=True, cv=5)
        )
        model.fit(ops.asarray(X_train.astype(dtype)), ops.asarray(Y[train].astype(dtype)))
        pred = model.predict(ops.asarray(X_test.astype(dtype)))
        if scorer is None:
            r.append(_pearson(np.asarray(ops.to_numpy(pred), dtype=np.float64), Y[test].astype(np.float64)))
        else:  # on the GPU, as brainprop scores its own predictions
            import torch

            # himalaya may hand predictions back on another device than the scorer's.
            pred = torch.as_tensor(pred).to(device=scorer.asarray(Y[test][:1]).device, dtype=torch.float32)
            r.append(_scores(scorer, pred, scorer.asarray(Y[test]))[0])
    return np.mean(r, axis=0)


def cpu_case(n: int, d: int, m: int, repeats: int) -> dict:
    """Time brainprop, scikit-learn and himalaya on one (n, d, m) problem; compare r with sklearn."""
    X, Y = simulate(n, d, m)
    folds = outer_folds(n)
    t_ours = [timed(ridge_cv, X, Y, folds, ALPHAS)[0] for _ in range(repeats - 1)]
    cpu_start = time.process_time()
    t, ours = timed(ridge_cv, X, Y, folds, ALPHAS)
    t_ours.append(t)
    cpu_ours = time.process_time() - cpu_start
    cpu_start = time.process_time()
    t_sk, ref = timed(sklearn_r, X, Y, folds)
    cpu_sk = time.process_time() - cpu_start
    case = {
        "n_images": n,
        "n_features": d,
        "n_targets": m,
        "solver": _solver(len(folds[0][0]), d),
        "brainprop_s": min(t_ours),
        "brainprop_cpu_s": cpu_ours,
        "sklearn_s": t_sk,
        "sklearn_cpu_s": cpu_sk,
        "speedup_vs_sklearn": t_sk / min(t_ours),
        "max_abs_diff_vs_sklearn": float(np.nanmax(np.abs(ours.r - ref))),
    }
    if importlib.util.find_spec("himalaya") is not None:
        himalaya_r(X[:100, :16], Y[:100, :8], outer_folds(100), "numpy", np.float64)  # import outside timing
        t_hi, r_hi = timed(himalaya_r, X, Y, folds, "numpy", np.float64)
        case.update(
            himalaya_s=t_hi,
            speedup_vs_himalaya=t_hi / min(t_ours),
            mean_r_brainprop=float(np.nanmean(ours.r)),
            mean_r_himalaya=float(np.nanmean(r_hi)),
        )
    print(json.dumps(case), flush=True)
    return case


# One `encode` job as Snakemake runs it: the script preamble's imports (it unpickles the
# `snakemake` object, which imports snakemake.script and snakemake.logging), then run.py's work.
_JOB = """
import time
start = time.perf_counter()
import sys
import snakemake.script, snakemake.logging
from types import SimpleNamespace
import brainprop.encoding.encode as enc
from brainprop.encoding.rules import run_encode
arithmetic = 0.0
fit = enc.ridge_cv
def timed_fit(*args, **kwargs):
    global arithmetic
    t = time.perf_counter()
    out = fit(*args, **kwargs)
    arithmetic += time.perf_counter() - t
    return out
enc.ridge_cv = timed_fit
d = sys.argv[1]
inputs = SimpleNamespace(features=f"{d}/features", layers=f"{d}/layers.parquet", Y=f"{d}/Y.npy",
                         targets=f"{d}/targets.parquet", samples=f"{d}/samples.parquet", folds=f"{d}/folds.parquet")
outputs = SimpleNamespace(scores=f"{d}/scores.parquet", summary=f"{d}/summary.parquet")
identity = {"dataset": "bench", "model": "m", "timm_name": "m", "signal": "activation", "subject": "01"}
encoding = {"alphas": {"log10_min": 0, "log10_max": 8, "n": 10}, "backend": "numpy", "dtype": None}
run_encode(inputs=inputs, outputs=outputs, params=SimpleNamespace(identity=identity, layer=0, encoding=encoding))
print(arithmetic, time.perf_counter() - start)
"""


def job_overhead(n: int, d: int, m: int) -> dict:
    """Seconds of one `encode` job (fresh interpreter, real files) beyond its ridge arithmetic."""
    import pandas as pd

    from brainprop.encoding.folds import folds_table
    from brainprop.features.files import feature_path
    from brainprop.io import save_array, write_table

    X, Y = simulate(n, d, m)
    ids = np.array([f"img{i:05d}" for i in range(n)])
    samples = pd.DataFrame({"image_id": ids, "group": ids})
    hemi = np.where(np.arange(m) < m // 2, "lh", "rh")
    targets = pd.DataFrame(
        {
            "target": np.arange(m),
            "modality": "fmri",
            "atlas": "bench",
            "roi": np.array(["V1", "V2", "V4", "LO"])[np.arange(m) % 4],
            "hemi": hemi,
            "x": 0.0,
            "y": 0.0,
            "z": 0.0,
            "roi_distance_mm": np.arange(m) % 4 * 10.0,
            "sensor": "",
            "time": np.nan,
            "noise_ceiling": 0.5,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        save_array(feature_path(f"{tmp}/features", "activation", 0), X)
        write_table(f"{tmp}/features/samples.parquet", samples)
        write_table(f"{tmp}/samples.parquet", samples)
        write_table(
            f"{tmp}/layers.parquet",
            pd.DataFrame({"layer": ["l0"], "layer_index": [0], "ordinal": [0], "depth": [0.0], "dim": [d]}),
        )
        save_array(f"{tmp}/Y.npy", Y)
        write_table(f"{tmp}/targets.parquet", targets)
        write_table(f"{tmp}/folds.parquet", folds_table(samples, 5, 0, grouped=False))
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")] if p
            ),
        }
        t_job, done = timed(
            subprocess.run, [sys.executable, "-c", _JOB, tmp], capture_output=True, text=True, env=env, check=True
        )
        arithmetic = float(done.stdout.split()[0])
    t_numpy = min(timed(subprocess.run, [sys.executable, "-c", "import numpy"], check=True)[0] for _ in range(3))
    return {
        "job_overhead_s": t_job - arithmetic,
        "job_total_s": t_job,
        "job_arithmetic_s": arithmetic,
        "job_shape": [n, d, m],
        "python_import_numpy_s": t_numpy,
    }


def cpu_main(args: argparse.Namespace) -> dict:
    """All CPU cases, the job overhead, and the headline ratios on the first shape."""
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else SHAPES
    record = {"benchmark": "encoding", "device": "cpu", "threads": os.cpu_count(), "headline_shape": list(shapes[0])}
    record.update(job_overhead(*shapes[0]))
    cases = []
    for shape in shapes:  # the record is rewritten after each case, so a long run leaves its figures so far
        cases.append(cpu_case(*shape, repeats=args.repeats))
        record.update(
            speedup_vs_sklearn=cases[0]["speedup_vs_sklearn"],
            speedup_vs_himalaya=cases[0].get("speedup_vs_himalaya"),
            max_abs_diff_vs_sklearn=max(c["max_abs_diff_vs_sklearn"] for c in cases),
            cases=cases,
        )
        write(record, "encoding.json")
    return record


def write(record: dict, name: str) -> None:
    """Write a benchmark record under results/benchmarks."""
    out = OUT / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")


def gpu_main(args: argparse.Namespace) -> dict:
    """brainprop's torch backend against himalaya torch_cuda at NSD scale (or tiny with --small)."""
    import torch

    start = time.perf_counter()
    n, d, m = (200, 48, 600) if args.small else (9000, 1024, 40000)
    subset = min(m, 500)
    X, Y = simulate(n, d, m)
    folds = outer_folds(n)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    # Warm up (CUDA context, cuBLAS/cuSOLVER handles) outside the timings.
    ridge_cv(X[:200, :32], Y[:200, :64], outer_folds(200), ALPHAS, backend="torch", device=args.device)
    sync()
    t_ours, ours = timed(ridge_cv, X, Y, folds, ALPHAS, backend="torch", device=args.device)
    sync()
    t_ref, ref = timed(ridge_cv, X, Y[:, :subset], folds, ALPHAS)  # NumPy float64 reference
    record = {
        "benchmark": "encoding_gpu",
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "shape": [n, d, m],
        "n_folds": len(folds),
        "alphas": ALPHAS.tolist(),
        "brainprop_torch_float32_s": t_ours,
        "reference_subset_targets": subset,
        "reference_numpy_float64_s": t_ref,
        "max_abs_diff_r_vs_float64": float(np.nanmax(np.abs(ours.r[:subset] - ref.r))),
        "alpha_agreement_vs_float64": float(np.mean(ours.alpha[:, :subset] == ref.alpha)),
        "mean_r_brainprop": float(np.nanmean(ours.r)),
    }
    print(json.dumps(record), flush=True)
    write(record, "encoding_gpu.json")  # brainprop's figures survive a failure of the comparison below
    if args.no_himalaya:
        record["himalaya"] = "skipped (--no-himalaya)"
    elif importlib.util.find_spec("himalaya") is None:
        record["himalaya"] = "not installed: pip install himalaya==0.4.11 to compare"
    else:
        import himalaya

        backend = "torch_cuda" if args.device == "cuda" else "torch"
        himalaya_r(X[:200, :32], Y[:200, :64], outer_folds(200), backend, np.float32)
        sync()
        t_hi, r_hi = timed(himalaya_r, X, Y, folds, backend, np.float32)
        sync()
        record.update(
            himalaya_version=himalaya.__version__,
            himalaya_backend=backend,
            himalaya_s=t_hi,
            speedup_vs_himalaya=t_hi / t_ours,
            mean_r_himalaya=float(np.nanmean(r_hi)),
        )
    record["benchmark_wall_s"] = time.perf_counter() - start
    return record


def main() -> None:
    """Run the CPU or GPU benchmark, print its record and write it under results/benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="torch backend at NSD scale against himalaya torch_cuda")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="torch device of --gpu")
    parser.add_argument("--small", action="store_true", help="--gpu on tiny shapes (a check of the script)")
    parser.add_argument("--no-himalaya", action="store_true", help="--gpu without the himalaya comparison")
    parser.add_argument("--shapes", nargs="*", help="CPU shapes as NxDxM (default: the three of issue 4)")
    parser.add_argument("--repeats", type=int, default=1, help="brainprop runs per CPU shape (the fastest counts)")
    args = parser.parse_args()
    record = gpu_main(args) if args.gpu else cpu_main(args)
    write(record, "encoding_gpu.json" if args.gpu else "encoding.json")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
