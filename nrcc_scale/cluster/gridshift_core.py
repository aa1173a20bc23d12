"""GridShift at a fixed bandwidth: the input check and the run that the estimator and the bandwidth scan share.

:class:`nrcc_scale.cluster.gridshift.GridShift` (the scikit-learn-style estimator, which may choose its
bandwidth) and :func:`nrcc_scale.cluster.bandwidth.bandwidth_scan` (which runs GridShift at many bandwidths)
both call :func:`check_input` on what the user gave them and :func:`run_gridshift` for each clustering, so
neither imports the other's internals and the import graph runs one way: core <- bandwidth <- estimator.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from nrcc_scale.cluster.gridshift_backends import ArrayBackend, NumpyBackend, TorchBackend

__all__ = ["BACKENDS", "MAX_DIM", "GridShiftResult", "check_input", "is_tensor", "run_gridshift",
           "select_backend"]

#: Largest dimension GridShift accepts: each cell visits 3^d neighbours (6561 at d = 8).
MAX_DIM = 8
#: Accepted ``backend`` names.
BACKENDS = ("auto", "numpy", "torch", "torch-cpu", "torch-cuda")


@dataclass(frozen=True)
class GridShiftResult:
    labels: np.ndarray  # int64 (n,), numbered in the lexicographic order of the modes' grid cells
    modes: np.ndarray  # float64 (k, d)
    n_iter: int
    backend: str  # "numpy", "torch-cpu" or "torch-cuda"


def _torch_module() -> Any:
    """torch if it is already imported (a tensor can only exist then), else None - never import it here."""
    return sys.modules.get("torch")


def is_tensor(X: Any) -> bool:
    """Whether X is a torch tensor (without importing torch)."""
    torch = _torch_module()
    return torch is not None and isinstance(X, torch.Tensor)


def _count_nonfinite_rows(X: Any) -> int:
    """Rows with a NaN or Inf; the global min/max (which propagate NaN) make the usual case one cheap pass."""
    if is_tensor(X):
        if not X.is_floating_point() or bool(X.min().isfinite() & X.max().isfinite()):
            return 0
        return int((~_torch_module().isfinite(X).all(dim=1)).sum())
    X = np.asarray(X)
    if X.dtype.kind != "f" or (np.isfinite(X.min()) and np.isfinite(X.max())):
        return 0
    return int((~np.isfinite(X).all(axis=1)).sum())


def check_input(X: Any) -> tuple[int, int]:
    """Validate shape and values of GridShift's input; return (n, d). Raises ValueError with an actionable
    message (complex or non-numeric values, not 2-D, empty, more than :data:`MAX_DIM` dimensions, NaN/Inf)."""
    if is_tensor(X):
        if X.is_complex():
            raise ValueError("GridShift needs real-valued input, got a complex tensor")
        shape = tuple(X.shape)
    else:
        X = np.asarray(X)
        if X.dtype.kind not in "fiub":
            raise ValueError(f"GridShift needs real-valued numeric input, got dtype {X.dtype}")
        shape = X.shape
    if len(shape) != 2:
        raise ValueError(f"X must be a 2-D array of shape (n_samples, n_features), got shape {shape}")
    n, d = shape
    if n == 0:
        raise ValueError("X is empty (0 samples): nothing to cluster")
    if d == 0:
        raise ValueError("X has 0 features")
    if d > MAX_DIM:
        raise ValueError(
            f"X has {d} dimensions; GridShift visits 3^d = {3**d} neighbour cells per cell and supports "
            f"d <= {MAX_DIM}. It is meant for the 2-5-d output of UMAP: reduce the dimension first "
            f"(e.g. nrcc_scale.cluster.reduce / UMAP to 3 components)"
        )
    bad = _count_nonfinite_rows(X)
    if bad:
        raise ValueError(f"X contains NaN or Inf in {bad} of {n} rows; remove or impute them first")
    return n, d


def select_backend(name: str, X: Any) -> ArrayBackend:
    """The backend ``name`` (one of :data:`BACKENDS`) means for input X: ``auto`` is PyTorch on the GPU for
    CUDA tensors and NumPy otherwise; ``torch`` is the tensor's device, or CUDA if available for NumPy input."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    on_cuda = is_tensor(X) and X.is_cuda
    if name == "numpy" or (name == "auto" and not on_cuda):
        return NumpyBackend()
    import torch

    if name == "torch-cpu":
        device = "cpu"
    elif name == "torch-cuda" or on_cuda:
        device = X.device if on_cuda else "cuda"
        if not torch.cuda.is_available():
            raise ValueError("backend 'torch-cuda' requested but CUDA is not available")
    elif is_tensor(X):
        device = X.device
    else:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return TorchBackend(device)


def run_gridshift(X: Any, bandwidth: float, max_iter: int = 100, backend: str | ArrayBackend = "auto",
                  progress: bool = False) -> GridShiftResult:
    """GridShift of X (checked with :func:`check_input`) at cell side ``bandwidth`` (> 0), at most ``max_iter``
    shift-and-merge iterations; computation is float64 on the chosen backend, outputs are NumPy.
    ``progress``: a tqdm bar over the iterations."""
    engine = backend if isinstance(backend, ArrayBackend) else select_backend(backend, X)
    if isinstance(engine, TorchBackend):
        torch = engine.xp
        Xb = torch.as_tensor(X, device=engine.device).to(torch.float64)
    else:
        Xb = (X.detach().cpu().numpy() if is_tensor(X) else np.asarray(X)).astype(np.float64, copy=False)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(max_iter), desc="GridShift iterations", unit="it", leave=False)
    try:
        labels, modes, n_iter = engine.run(Xb, float(bandwidth), int(max_iter), bar)
    finally:
        if bar is not None:
            bar.close()
    return GridShiftResult(labels, modes, n_iter, engine.name)
