"""k-means with a given k: the parametric baseline the paper compares GridShift against (stage 4).

Why this module exists
----------------------
The baseline runs k-means with the true number of classes on up to 10^6 embeddings and 10^3 clusters.
scikit-learn's KMeans needs minutes to hours there on a CPU; faiss's k-means is the same Lloyd iteration on
BLAS (or a GPU) and is what the ProPos/NRCC reference code uses. So: faiss when importable, scikit-learn
as the fallback, and the backend is logged (``stage kmeans: backend faiss-cpu``).

Choices
-------
* ``n_init`` seeded restarts (faiss ``nredo``, seeds derived from ``seed``), the one with the best
  objective kept; k-means++ initialisation where the installed faiss offers it (>= 1.9: it is far more
  robust than faiss's default random init when clusters are few and well separated), random otherwise.
* faiss trains on at most 256 points per centroid (its default subsample, seeded): at k = 1000 that is
  2.56·10^5 points, plenty for the centroids, several times cheaper than all 10^6. Labels and inertia are then
  computed on *all* points, by an exact nearest-centroid search.
* ``max_iter`` caps the Lloyd iterations; faiss >= 1.13 stops earlier once the objective stops improving
  (older versions run all of them).
* ``spherical=True`` is cosine k-means, the reference code's choice for the baseline: rows are L2-normalised
  and centroids re-normalised after every update. ``inertia`` is always the sum of squared Euclidean
  distances to the assigned centre (on the normalised rows when spherical, where it equals 2·Σ(1 - cos)).
* scikit-learn fallback: ``KMeans(init="k-means++", n_init, max_iter, random_state=seed)``; with
  ``spherical=True`` it runs on the normalised rows and its centres are projected to the sphere before the
  final assignment (an approximation of spherical k-means: scikit-learn has no spherical update).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nrcc_scale.cluster import backends
from nrcc_scale.cluster.knn import knn_search, l2_normalize

__all__ = ["KMeansResult", "kmeans"]


@dataclass
class KMeansResult:
    """``labels`` int64 (n,) in [0, k); ``centers`` float32 (k, d); ``inertia`` sum of squared distances
    to the assigned centre; ``backend`` ``"faiss-cpu"`` | ``"faiss-gpu"`` | ``"sklearn"``."""

    labels: np.ndarray
    centers: np.ndarray
    inertia: float
    backend: str


def _faiss_centers(X: np.ndarray, k: int, seed: int, n_init: int, max_iter: int, gpu: bool,
                   spherical: bool) -> np.ndarray:
    faiss = backends.faiss_module()
    backends.set_faiss_threads()
    params: dict[str, object] = {"niter": max_iter, "nredo": n_init, "seed": seed, "spherical": spherical,
                                 "verbose": False, "gpu": 1 if gpu else False}
    if hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS"):
        params["init_method"] = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS
    km = faiss.Kmeans(X.shape[1], k, **params)
    km.train(X)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def _sklearn_centers(X: np.ndarray, k: int, seed: int, n_init: int, max_iter: int,
                     spherical: bool) -> np.ndarray:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, init="k-means++", n_init=n_init, max_iter=max_iter, random_state=seed).fit(X)
    centers = km.cluster_centers_.astype(np.float32)
    return l2_normalize(centers) if spherical else centers


def kmeans(X: np.ndarray, k: int, *, seed: int = 0, n_init: int = 10, max_iter: int = 300,
           use_gpu: bool | None = None, spherical: bool = False) -> KMeansResult:
    """Cluster the rows of ``X`` into ``k`` groups; best of ``n_init`` seeded runs.

    ``use_gpu``: None = faiss-GPU when available, True = require it, False = CPU. Deterministic for a fixed
    seed on the CPU backends. See the module docstring for the choices.
    """
    arr = np.asarray(X)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"X must be a non-empty 2-D array (n, d), got shape {arr.shape}")
    if not 1 <= k <= arr.shape[0]:
        raise ValueError(f"k must be in [1, n_samples={arr.shape[0]}], got {k}")
    if n_init < 1 or max_iter < 1:
        raise ValueError(f"n_init and max_iter must be >= 1, got {n_init} and {max_iter}")
    data = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(data).all():
        raise ValueError("X contains NaN or Inf values")
    if spherical:
        data = l2_normalize(data)

    gpu = backends.select_faiss_gpu("kmeans", use_gpu)
    backend = ("faiss-gpu" if gpu else "faiss-cpu") if backends.faiss_available() else "sklearn"
    backends.log_backend("kmeans", backend, f"N={data.shape[0]}, k={k}, spherical={spherical}")
    if backend == "sklearn":
        centers = _sklearn_centers(data, k, seed, n_init, max_iter, spherical)
    else:
        centers = _faiss_centers(data, k, seed, n_init, max_iter, gpu, spherical)

    # final assignment of every point (faiss trained on a subsample), exact, on the same device
    nearest = knn_search(centers, data, 1, metric="euclidean", use_gpu=gpu, exact_limit=max(k, 1))
    labels = nearest.indices[:, 0]
    inertia = float(np.square(nearest.distances[:, 0], dtype=np.float64).sum())
    return KMeansResult(labels=labels, centers=centers, inertia=inertia, backend=backend)
