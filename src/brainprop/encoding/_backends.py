"""Array backends of the ridge engine: NumPy (CPU, float64) and PyTorch (CPU or CUDA, float32).

A backend is a handful of operations (`Backend`); the ridge code itself uses only array
operators (``@``, ``*``, ``/``, indexing, ``.sum(0)``, ``.mean(0)``, ``.T``) common to both
libraries, so one code path serves every backend. PyTorch is imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BACKENDS", "DEVICES", "Backend", "get_backend"]

DEVICES = ("auto", "cpu", "cuda")

_DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Backend:
    """Operations of one array library on one device in one floating-point type.

    Attributes
    ----------
    name : registry name ("numpy" or "torch").
    device : "cpu" or "cuda".
    dtype : floating-point type name of the decomposition and leave-one-out arithmetic.
    asarray : host float64 array -> native array in `dtype` on `device`.
    to_numpy : native array -> host float64 array.
    svd : thin SVD, X (n, d) -> U (n, k), s (k,), Vt (k, d).
    eigh : symmetric eigendecomposition, K (n, n) -> eigenvalues (n,) ascending, vectors (n, n).
    clip0 : elementwise max(x, 0).
    stack : list of equal-shape arrays -> one array with a new leading axis.
    cast : native array -> native array in `dtype` on `device`.
    asindex : host integer array -> native index array for column selection.
    column_ok : native (n, m) array -> host bool (m,): column finite and not constant.
    """

    name: str
    device: str
    dtype: str
    asarray: Callable[[np.ndarray], Any]
    to_numpy: Callable[[Any], np.ndarray]
    svd: Callable[[Any], tuple[Any, Any, Any]]
    eigh: Callable[[Any], tuple[Any, Any]]
    clip0: Callable[[Any], Any]
    stack: Callable[[list], Any]
    cast: Callable[[Any], Any]
    asindex: Callable[[np.ndarray], Any]
    column_ok: Callable[[Any], np.ndarray]


def _check_dtype(dtype: Any, default: str) -> str:
    """The dtype's name, `default` when None; only float32 and float64 are accepted."""
    if dtype is None:
        return default
    try:
        name = np.dtype(dtype).name
    except TypeError:  # a torch dtype, e.g. torch.float32
        name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"dtype={dtype!r}; expected one of {list(_DTYPES)} or None for the backend default")
    return name


# Below this size a symmetric eigendecomposition runs on one BLAS thread: LAPACK's tridiagonal
# reduction gains little from threads there, and on shared (oversubscribed) cores threaded
# OpenBLAS spin-waits, measured 0.17 s on one thread against 15 s on two busy ones (d = 768).
_EIGH_ONE_THREAD_MAX = 2048


def _numpy_eigh(K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.linalg.eigh, on one BLAS thread for matrices up to `_EIGH_ONE_THREAD_MAX`."""
    if K.shape[0] > _EIGH_ONE_THREAD_MAX:
        return np.linalg.eigh(K)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn's dependency; without it, BLAS keeps its threads
        return np.linalg.eigh(K)
    with threadpool_limits(1, user_api="blas"):
        return np.linalg.eigh(K)


def _numpy_backend(device: str, dtype: Any) -> Backend:
    """NumPy on the CPU, float64 unless asked otherwise."""
    if device not in ("auto", "cpu"):
        raise ValueError(
            f"device={device!r} is not available to the numpy backend; expected 'cpu' or 'auto' "
            "(use backend='torch' for cuda)"
        )
    name = _check_dtype(dtype, "float64")
    kind = np.dtype(name)
    return Backend(
        name="numpy",
        device="cpu",
        dtype=name,
        asarray=lambda a: np.asarray(a, dtype=kind),
        to_numpy=lambda x: np.asarray(x, dtype=np.float64),
        svd=lambda X: np.linalg.svd(X, full_matrices=False),
        eigh=_numpy_eigh,
        clip0=lambda x: np.clip(x, 0.0, None),
        stack=np.stack,
        cast=lambda x: np.asarray(x, dtype=kind),
        asindex=lambda i: np.asarray(i, dtype=np.intp),
        column_ok=lambda x: np.isfinite(x).all(axis=0) & (np.ptp(x, axis=0) > 0),
    )


def _torch_device(torch: Any, device: str) -> str:
    """Resolve "auto" to cuda when available, and refuse cuda when it is not."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device='cuda' but torch.cuda.is_available() is False (no GPU or a CPU-only torch build); "
            "expected device='cpu' or 'auto'"
        )
    return device


def _torch_backend(device: str, dtype: Any) -> Backend:
    """PyTorch on the CPU or a CUDA GPU, float32 unless asked otherwise."""
    import torch

    device = _torch_device(torch, device)
    name = _check_dtype(dtype, "float32")
    kind = getattr(torch, name)
    return Backend(
        name="torch",
        device=device,
        dtype=name,
        asarray=lambda a: torch.as_tensor(np.asarray(a), dtype=kind, device=device),
        to_numpy=lambda x: x.detach().to("cpu", torch.float64).numpy(),
        svd=lambda X: torch.linalg.svd(X, full_matrices=False),
        eigh=torch.linalg.eigh,
        clip0=lambda x: torch.clamp(x, min=0.0),
        stack=torch.stack,
        cast=lambda x: x.to(kind),
        asindex=lambda i: torch.as_tensor(np.asarray(i, dtype=np.int64), device=device),
        column_ok=lambda x: (torch.isfinite(x).all(0) & (x.amax(0) > x.amin(0))).cpu().numpy(),
    )


BACKENDS: dict[str, Callable[[str, Any], Backend]] = {
    "numpy": _numpy_backend,
    "torch": _torch_backend,
}


def get_backend(name: str | Backend = "numpy", device: str = "auto", dtype: Any = None) -> Backend:
    """The backend `name` on `device` ("auto", "cpu", "cuda") in `dtype` (None: the backend's default)."""
    if isinstance(name, Backend):
        return name
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r}; expected one of {sorted(BACKENDS)}")
    if device not in DEVICES:
        raise ValueError(f"device={device!r}; expected one of {list(DEVICES)}")
    return BACKENDS[name](device, dtype)
