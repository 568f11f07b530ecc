"""The seeded very sparse random projection that bounds a layer's pooled size."""

from __future__ import annotations

import functools

import numpy as np
import torch

__all__ = ["PROJECTION_DEFAULTS", "project", "projected_dim", "projection_matrix"]

PROJECTION_DEFAULTS: dict = {"dim": 4096, "above": 16384, "seed": 0}


def _projection_spec(spec: dict) -> dict:
    return {**PROJECTION_DEFAULTS, **(spec.get("projection") or {})}


def projected_dim(dim: int, spec: dict) -> int:
    """Feature dimension after the pooling spec's projection (unchanged when it does not apply)."""
    proj = _projection_spec(spec)
    return int(proj["dim"]) if proj["dim"] and dim > int(proj["above"]) else int(dim)


@functools.lru_cache(maxsize=64)
def projection_matrix(n_features: int, n_components: int, seed: int, layer_index: int) -> torch.Tensor:
    """Very sparse random projection (Li et al. 2006), sparse COO of shape (n_features, n_components).

    Entries are +-sqrt(s / n_components) with probability 1/(2s) each and 0 otherwise,
    s = sqrt(n_features), so squared norms are preserved in expectation. Column j draws its
    number of non-zeros ~ Binomial(n_features, 1/s), their rows without replacement and their
    signs from numpy's generator seeded by (seed, layer_index, n_features).
    """
    s = np.sqrt(n_features)
    rng = np.random.default_rng([int(seed), int(layer_index), int(n_features)])
    rows, cols, signs = [], [], []
    for j in range(n_components):
        nnz = rng.binomial(n_features, 1.0 / s)
        rows.append(rng.choice(n_features, nnz, replace=False))
        cols.append(np.full(nnz, j))
        signs.append(rng.choice([-1.0, 1.0], nnz))
    index = torch.from_numpy(np.stack([np.concatenate(rows), np.concatenate(cols)]).astype(np.int64))
    values = torch.from_numpy(np.concatenate(signs) * np.sqrt(s / n_components))
    return torch.sparse_coo_tensor(index, values, (n_features, n_components), check_invariants=True).coalesce()


def project(x: torch.Tensor, spec: dict, layer_index: int) -> torch.Tensor:
    """Apply the pooling spec's sparse random projection to pooled features (B, dim), if it applies."""
    proj = _projection_spec(spec)
    if projected_dim(x.shape[1], spec) == x.shape[1]:
        return x
    matrix = projection_matrix(x.shape[1], int(proj["dim"]), int(proj["seed"]), int(layer_index))
    out = torch.sparse.mm(matrix.to(x.device).t(), x.double().t()).t()
    return out.to(x.dtype)
