"""Level, power and cost of the per-target encoding null (`encoding.null`; docs/encoding.md, "The encoding null").

On targets of pure noise (level) and of a planted linear signal at several strengths (power),
the share of targets with p <= 0.05 and p <= 0.01 under:

- `cauchy` and `bonferroni`: each fold's permutation p, combined (brainprop's null);
- `fold_average`: r averaged over folds against the average of independently permuted folds
  (the obvious construction, which ignores that the folds' r are correlated under the null);
- `t_test`: the t-test of the fold-averaged r over n images (the map threshold without the null).

It also times one encode-shaped fit with and without the null (CPU s, same run). Writes
`results/benchmarks/encoding_null.json`. Usage: python benchmarks/encoding_null.py [--targets 2000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.special import stdtr
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from brainprop.encoding._ridge import TargetNull, combine_fold_p, ridge_cv
from brainprop.encoding.encode import DEFAULT_ALPHAS
from brainprop.encoding.folds import make_folds

ROOT = Path(__file__).resolve().parents[1]
ALPHAS = np.asarray(DEFAULT_ALPHAS)
PERMUTATIONS = 499


def fold_average_p(X: np.ndarray, Y: np.ndarray, folds, null: TargetNull) -> np.ndarray:
    """p of the fold-averaged r against fold-averaged independently permuted r (reference pipeline predictions)."""
    r_obs = np.zeros(Y.shape[1])
    r_null = np.zeros((null.n_permutations, Y.shape[1]))
    for f, (train, test) in enumerate(folds):
        pred = make_pipeline(StandardScaler(), RidgeCV(ALPHAS, alpha_per_target=True)).fit(X[train], Y[train])
        pc = pred.predict(X[test])
        pc = pc - pc.mean(0)
        yc = Y[test] - Y[test].mean(0)
        den = np.sqrt((pc**2).sum(0) * (yc**2).sum(0))
        r_obs += (pc * yc).sum(0) / den
        for b, perm in enumerate(null.fold(f, len(test))):
            r_null[b] += (pc[perm] * yc).sum(0) / den
    return (1 + (r_null >= r_obs - 1e-12).sum(0)) / (1 + null.n_permutations)


def rejection_rates(n: int, d: int, snr: float, n_targets: int, seed: int) -> dict:
    """Share of targets with p <= 0.05 and <= 0.01 under each null, for one shape and signal strength."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / np.sqrt(d)  # correlated features
    Y = rng.standard_normal((n, n_targets))
    if snr:  # signal SD = snr x noise SD in every target
        signal = X @ rng.standard_normal((d, n_targets))
        Y += snr * signal / signal.std(axis=0)
    folds = make_folds(n, None, 5, seed)
    null = TargetNull(PERMUTATIONS, (seed, 1))
    fit = ridge_cv(X, Y, folds, ALPHAS, null=null)
    rc = np.clip(fit.r, -1 + 1e-12, 1 - 1e-12)
    p = {
        "cauchy": combine_fold_p(fit.p_folds, "cauchy", PERMUTATIONS),
        "bonferroni": combine_fold_p(fit.p_folds, "bonferroni", PERMUTATIONS),
        "fold_average": fold_average_p(X, Y, folds, null),
        "t_test": stdtr(n - 2, -rc * np.sqrt((n - 2) / (1 - rc**2))),
    }
    return {name: {f"p<={a}": round(float((v <= a).mean()), 4) for a in (0.05, 0.01, 0.001)} for name, v in p.items()}


def null_cost(n: int = 240, d: int = 256, n_targets: int = 6400, permutations: int = 1000) -> dict:
    """CPU seconds of one encode-shaped fit (demo shape: 8 subjects x 800 targets) with and without the null."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((n, d)), rng.standard_normal((n, n_targets))
    folds = make_folds(n, None, 5, 0)
    times = {}
    for name, null in (("fit", None), ("fit_and_null", TargetNull(permutations, (0, 1)))):
        start = time.process_time()
        ridge_cv(X, Y, folds, ALPHAS, null=null)
        times[name] = round(time.process_time() - start, 2)
    times["permutations"] = permutations
    times["ratio"] = round(times["fit_and_null"] / times["fit"], 2)
    return times


def main() -> None:
    """Measure level, power and cost; write results/benchmarks/encoding_null.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=4000)
    args = parser.parse_args()
    shapes = [(60, 10), (240, 100), (240, 20)]
    record = {
        "permutations": PERMUTATIONS,
        "n_targets": args.targets,
        "level": {f"n={n},d={d}": rejection_rates(n, d, 0.0, args.targets, seed) for seed, (n, d) in enumerate(shapes)},
        "power": {f"snr={s}": rejection_rates(240, 100, s, args.targets // 4, 7) for s in (0.1, 0.2, 0.3, 0.5)},
        "cost_cpu_s": null_cost(),
    }
    out = ROOT / "results" / "benchmarks" / "encoding_null.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
