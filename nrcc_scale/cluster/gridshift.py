"""GridShift: mean shift on a grid of occupied cells (Kumar et al., CVPR 2022), exact and vectorised.

Why this module exists
----------------------
The evaluation clusters the 2-5-d UMAP output of an embedding without being told the number of clusters.
GridShift does that in time that, after one binning pass over the N points, only depends on the number of
occupied grid cells. The public reference implementation has two defects that this one avoids on purpose:

* it maps points to cells by truncating toward zero, which merges the cells on both sides of 0 in every
  dimension - here cells are ``floor(x / h)``;
* it renames cluster ids one at a time, in place, so ids are renamed twice along chains of merges and the
  per-point labels are corrupted (and depend on the row order). Here every iteration produces one mapping
  array ``old cell -> new cell`` and the maps are composed, so each point follows its cell exactly. The
  result is the partition of MeanShift++ (Jang & Jiang 2021) on the same grid.

How it is built
---------------
``gridshift_core`` (the input check and a run at a fixed bandwidth, shared with the bandwidth scan),
``gridshift_backends`` (the iteration, written once for NumPy and PyTorch), ``gridshift_grid`` (cells packed
into int64 keys). This module is the estimator: it checks its parameters, chooses the bandwidth when none is
given (:func:`nrcc_scale.cluster.bandwidth.estimate_bandwidth`) and keeps the results as attributes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nrcc_scale.cluster.bandwidth import estimate_bandwidth
from nrcc_scale.cluster.gridshift_core import MAX_DIM, check_input, is_tensor, run_gridshift, select_backend

__all__ = ["MAX_DIM", "GridShift"]


class GridShift:
    """Mode-seeking clustering on a grid (GridShift / MeanShift++), no number of clusters needed.

    Parameters
    ----------
    bandwidth:
        Grid cell side h (> 0). ``None`` chooses it from the data with
        :func:`nrcc_scale.cluster.estimate_bandwidth` (no labels used); the value used is ``bandwidth_``.
    max_iter:
        Upper bound on the number of shift-and-merge iterations (>= 1); the usual count is 3-10.
    backend:
        ``"auto"`` (PyTorch on the GPU for CUDA tensors, NumPy otherwise), ``"numpy"``, ``"torch"`` (the
        tensor's device; for NumPy input CUDA if available, else CPU), ``"torch-cpu"`` or ``"torch-cuda"``.

    Attributes
    ----------
    labels_: int64 array (n,), cluster of each point, numbered 0..k-1 in the lexicographic order of the
        modes' grid cells - so the numbering does not depend on the row order.
    cluster_centers_: float64 array (k, d), the modes (mean of the points' shifted positions per cluster).
    n_iter_: iterations run. bandwidth_: bandwidth used. backend_: "numpy", "torch-cpu" or "torch-cuda".

    Input may be a NumPy array or a torch tensor (CPU or CUDA), float32 or float64; computation is float64
    (float32 input is upcast, so float32 data gives the partition of its float64 copy). Outputs are NumPy.
    """

    def __init__(self, bandwidth: float | None = None, max_iter: int = 100, backend: str = "auto",
                 progress: bool = False) -> None:
        self.bandwidth = bandwidth
        self.max_iter = max_iter
        self.backend = backend
        self.progress = progress  # a tqdm bar over the shift-and-merge iterations

    def fit(self, X: Any, y: Any = None) -> GridShift:
        """Cluster X (n_samples, n_features); ``y`` is ignored (scikit-learn convention)."""
        if not (isinstance(self.max_iter, int | np.integer) and self.max_iter >= 1):
            raise ValueError(f"max_iter must be an integer >= 1, got {self.max_iter!r}")
        check_input(X)
        backend = select_backend(self.backend, X)
        if self.bandwidth is None:
            host = X.detach().cpu().numpy() if is_tensor(X) else np.asarray(X)
            h = float(estimate_bandwidth(host))
        else:
            h = float(self.bandwidth)
        if not (math.isfinite(h) and h > 0):
            raise ValueError(f"bandwidth must be a finite number > 0, got {self.bandwidth!r}")
        result = run_gridshift(X, h, int(self.max_iter), backend, self.progress)
        self.labels_, self.cluster_centers_, self.n_iter_ = result.labels, result.modes, result.n_iter
        self.bandwidth_ = h
        self.backend_ = result.backend
        return self

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit and return ``labels_``."""
        return self.fit(X).labels_
