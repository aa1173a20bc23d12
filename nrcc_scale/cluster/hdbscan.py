"""HDBSCAN on the UMAP output: the clustering UMAP's own documentation recommends, as a baseline to GridShift.

Why this module exists
----------------------
GridShift is the paper's "no k" clustering; a reader will ask how it compares with what UMAP users reach for,
HDBSCAN (issue 11). It runs on the same low-dimensional UMAP embedding GridShift sees, so the row compares the
clustering step alone.

Backends, by the rules of :mod:`nrcc_scale.cluster.backends` (``backend`` = "auto" | "cuml" | "sklearn"):
cuML's ``HDBSCAN`` when CUDA and cuML are usable, scikit-learn's ``HDBSCAN`` (>= 1.3) otherwise.

Parameters
----------
* ``min_cluster_size`` (``eval.hdbscan_min_cluster_size``; 0 = automatic): ``max(10, n // 2000)`` for n
  clustered points. HDBSCAN's own default (5) turns every dense speck of a 10^4-10^5-point UMAP map into a
  cluster; a fixed large value (UMAP's docs use 500 for MNIST's 70k points in 10 classes) merges the
  classes of a 1000-class set. 1/2000 of the points keeps a class holding >= 1/1000 of the data (ImageNet-1k)
  at twice the minimum, while staying >= 10 so noise does not form clusters. No label information is used.
* ``min_samples`` = 10 (UMAP's ``n_neighbors``): the density estimate uses the same neighbourhood size as the
  graph UMAP was built from; scikit-learn's default (= min_cluster_size) costs more and smooths more.
* Noise (label -1) counts as ONE extra cluster for the scores (so noise is penalised, not dropped), and the
  noise fraction is reported next to the scores.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from nrcc_scale.cluster import backends

__all__ = ["HDBSCANResult", "auto_min_cluster_size", "hdbscan_cluster"]

log = logging.getLogger("nrcc_scale.cluster")

MIN_SAMPLES = 10


@dataclass
class HDBSCANResult:
    """``labels`` int64 (n,), noise mapped to one extra cluster id (``labels.max()`` when there is noise);
    ``noise_fraction`` of points HDBSCAN left unclustered; ``min_cluster_size`` used; ``backend``."""

    labels: np.ndarray
    noise_fraction: float
    min_cluster_size: int
    backend: str
    seconds: float


def auto_min_cluster_size(n: int) -> int:
    """``max(10, n // 2000)``: see the module docstring for the reason."""
    return max(10, n // 2000)


def hdbscan_cluster(X: np.ndarray, min_cluster_size: int = 0, backend: str = "auto") -> HDBSCANResult:
    """HDBSCAN of the rows of ``X`` (n, d), d small (the UMAP output). ``min_cluster_size`` 0 = automatic."""
    arr = np.ascontiguousarray(X, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise ValueError(f"X must be a 2-D array with at least 2 rows, got shape {arr.shape}")
    n = arr.shape[0]
    size = auto_min_cluster_size(n) if min_cluster_size == 0 else int(min_cluster_size)
    if size < 2:
        raise ValueError(f"min_cluster_size (eval.hdbscan_min_cluster_size) must be 0 (auto) or >= 2, got {size}")
    size = min(size, n)
    chosen = backends.choose_backend("hdbscan", backend, setting="eval.hdbscan_backend", gpu="cuml",
                                     cpu="sklearn", gpu_missing=backends.cuml_missing())
    backends.log_backend("hdbscan", chosen, f"N={n}, min_cluster_size={size}, min_samples={MIN_SAMPLES}")
    start = time.perf_counter()
    min_samples = min(MIN_SAMPLES, n - 1)
    if chosen == "cuml":
        from cuml.cluster import HDBSCAN as CuHDBSCAN

        raw = CuHDBSCAN(min_cluster_size=size, min_samples=min_samples, output_type="numpy").fit_predict(arr)
    else:
        from sklearn.cluster import HDBSCAN

        raw = HDBSCAN(min_cluster_size=size, min_samples=min_samples, copy=False,
                      n_jobs=backends.cpu_threads()).fit_predict(arr)
    raw = np.asarray(raw, dtype=np.int64)
    noise = raw < 0
    labels = raw.copy()
    labels[noise] = raw.max(initial=-1) + 1  # all noise points form one extra cluster for the scores
    return HDBSCANResult(labels, float(noise.mean()), size, chosen, time.perf_counter() - start)
