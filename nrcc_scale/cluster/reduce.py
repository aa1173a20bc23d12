"""Dimension reduction before GridShift (stage 3): UMAP (the paper's choice) or t-SNE (its Table 2 option).

Why this module exists
----------------------
GridShift works on 2-5 dimensions, so the 256-d embeddings are reduced first, with the reference code's
values: UMAP to 3 components, ``n_neighbors=10``, ``min_dist=0.0``, cosine. At 10^6 samples the slow part of
umap-learn is its own neighbour search, so the faiss kNN graph (:func:`nrcc_scale.cluster.knn.knn_graph`) is
passed in through ``precomputed_knn``; on a GPU host cuML's UMAP does everything on the device.

Backends (``backend``: "auto" | "cuml" | a CPU name; the CPU names "umap-learn", "sklearn" and "cpu" are
interchangeable and mean the CPU library of the chosen method, because the pipeline passes the one config
key ``eval.umap_backend`` for both methods). Rules as in :mod:`nrcc_scale.cluster.backends`: "auto" takes
cuML when CUDA and cuML are both usable and otherwise falls back (one warning line on a CUDA host that
lacks cuML); an explicit "cuml" that cannot run raises ``BackendUnavailableError``.

* UMAP, CPU: umap-learn with ``precomputed_knn=(indices, distances)`` from :func:`knn_graph` (computed
  here when ``knn`` is not given). umap-learn 0.5.12 expects each point itself in column 0 at distance 0
  (knn_graph's layout), cosine *distances* (1 - sim, what its own search returns), exactly ``n_neighbors``
  columns (for fewer than 4096 samples it does not prune wider inputs itself), C-contiguous float32
  distances (numba signatures), and it overwrites disconnected entries in place - so a trimmed private
  copy is passed.
* Cores and seeds (issue 17): by default UMAP's SGD runs on every core the process may use
  (``n_jobs = backends.cpu_threads()``). umap-learn forces ``n_jobs=1`` whenever ``random_state`` is set,
  so the default does not pass it; the seed still fixes what it can: the initial layout is computed here
  from ``seed`` (see ``init``) and handed to umap-learn as an array. The parallel SGD updates shared
  coordinates without locks, so two runs differ in the last digits and the clustering is stable in quality
  only (NMI within .01, ``tests/test_reduce.py``). ``deterministic=True`` (``eval.deterministic``) passes
  ``random_state=seed`` and ``n_jobs=1``: bit-for-bit reproducible, at the cost of one core - on 2 cores
  the issue measured 108 s vs 57 s at 250k points and 1285 s vs 543 s at 1.28M (``init="pca"``); on a
  32-core node it leaves 31 cores idle.
* ``init``: "spectral" (umap-learn's default: eigenvectors of the graph Laplacian, by umap-learn with the
  seed), "pca" (the first ``n_components`` principal axes of X, computed here from a float64 256x256
  covariance accumulated over float32 row blocks - no float64 copy of X - scaled to umap-learn's +-10 box
  with 1e-4 seeded jitter, as umap-learn's own "pca" init), or "auto" = spectral up to
  ``PCA_INIT_ABOVE`` rows and pca beyond (the spectral solver's cost grows faster than linearly and with the
  number of graph components, 1000 classes at ImageNet scale; benchmarks/eval_end_to_end.py compares
  both). ``progress`` shows umap-learn's tqdm bar over the SGD epochs.
* ``n_epochs`` (``eval.umap_epochs``; None/0 = umap-learn's rule: 500 up to 10^4 rows, 200 beyond). The SGD
  is most of the stage and its time is proportional to the epochs; at 10^6 rows on 2 cores the 200 default
  epochs alone take ~9 minutes. Fewer epochs leave clusters less contracted, so GridShift splits more of
  them. Measured (issue 17's note has the script: 128,117 x 256, 1000 classes at noise 1.6, one
  pynndescent graph, PCA init, 2 cores; ``benchmarks/eval_end_to_end.py --variant eval.umap_epochs=100``
  measures the same trade-off end to end): 200 epochs 59 s, NMI .9969, ARI .9927, 1093 clusters;
  100 epochs 28 s, .9963, .9913, 1226; 50 epochs 13.6 s, .9948, .9876, 1704. A warm start (UMAP of a 10 %
  subsample propagated through the graph) did not change that trade-off (100 epochs: .9965, 1170
  clusters), so the default stays umap-learn's and the knob is there for users who want the time.
* UMAP, GPU: ``cuml.manifold.UMAP`` with the same parameters, ``output_type="numpy"``, and the faiss graph as
  ``precomputed_knn`` when ``knn`` is given or faiss-GPU can build it; otherwise cuML builds its own graph
  by exact brute force (``build_algo="brute_force_knn"``, which supports cosine). cuML is reproducible
  with ``random_state`` only up to GPU floating-point non-determinism.
* t-SNE, CPU: scikit-learn ``TSNE`` (Barnes-Hut, so ``n_components <= 3``), ``init="pca"``,
  ``learning_rate="auto"``. GPU: ``cuml.manifold.TSNE``, which only produces 2-D embeddings; under "auto" a
  3-D t-SNE therefore runs on scikit-learn. Both get L2-normalised rows with the Euclidean metric for
  ``metric="cosine"``: the same neighbours, and the usual Gaussian kernel on squared distances
  (= 2·(1 - cos)). ``perplexity`` defaults to 30, t-SNE's standard, and is not derived from
  ``n_neighbors``: the usual correspondence (neighbours ~ 3·perplexity) would give ~3 for UMAP's 10, which
  fragments t-SNE maps. It is capped at (n - 1) / 3 so that the 3·perplexity + 1 neighbours t-SNE needs
  exist. ``knn`` is not used by t-SNE.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nrcc_scale.cluster import backends
from nrcc_scale.cluster.knn import METRICS, KNNResult, knn_graph, l2_normalize

__all__ = ["INITS", "METHODS", "ReductionResult", "pca_init", "reduce_dimension", "resolve_backend", "resolve_init"]

log = logging.getLogger("nrcc_scale.cluster")

METHODS = ("umap", "tsne")
_CPU_NAMES = {"umap": "umap-learn", "tsne": "sklearn"}
_CPU_ALIASES = ("cpu", "umap-learn", "sklearn")
#: ``init="auto"``: spectral up to this many rows, PCA beyond.
PCA_INIT_ABOVE = 100_000
INITS = ("auto", "spectral", "pca")
#: t-SNE's usual perplexity.
DEFAULT_PERPLEXITY = 30.0


@dataclass
class ReductionResult:
    """``embedding`` float32 (n, n_components); ``backend`` "umap-learn" | "cuml" | "sklearn-tsne" |
    "cuml-tsne"; ``seconds`` wall time of the reduction (including a kNN graph built here)."""

    embedding: np.ndarray
    backend: str
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)  # n_jobs, init, deterministic (what actually ran)


def resolve_backend(method: str, backend: str, n_components: int) -> str:
    """"cuml" or the CPU library name for ``method`` (see the module docstring for the rules)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    cpu = _CPU_NAMES[method]
    if method == "tsne" and n_components != 2 and backend in ("auto", "cuml"):
        if backend == "cuml":
            raise ValueError(f"cuML t-SNE only produces 2-D embeddings, got n_components={n_components}; "
                             "use backend='auto' or 'sklearn'")
        log.debug("stage reduce: cuML t-SNE is 2-D only; n_components=%d runs on scikit-learn", n_components)
        return cpu
    return backends.choose_backend("reduce", backend, setting="backend (eval.umap_backend)", gpu="cuml",
                                   cpu=cpu, gpu_missing=backends.cuml_missing(),
                                   cpu_aliases=tuple(a for a in _CPU_ALIASES if a != cpu))


def _validate(X: Any, method: str, n_components: int, n_neighbors: int, min_dist: float,
              metric: str) -> np.ndarray:
    """Reject inputs the libraries would fail on late or silently mangle; return float32 C-contiguous."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    arr = np.asarray(X)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"X must be a non-empty 2-D array (n, d), got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(f"X contains NaN or Inf values in {int(bad.sum())} rows (first: row "
                         f"{int(np.flatnonzero(bad)[0])})")
    n = arr.shape[0]
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    if method == "tsne" and n_components > 3:
        raise ValueError(f"t-SNE (Barnes-Hut) supports n_components <= 3, got {n_components}")
    if n_neighbors < 2:
        raise ValueError(f"n_neighbors must be >= 2, got {n_neighbors}")
    if n <= max(n_neighbors, n_components + 1):
        raise ValueError(f"n_neighbors={n_neighbors} and n_components={n_components} need more than "
                         f"{max(n_neighbors, n_components + 1)} samples, got {n}")
    if min_dist < 0:
        raise ValueError(f"min_dist must be >= 0, got {min_dist}")
    return arr


def _umap_knn(knn: KNNResult, n: int, n_neighbors: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``(indices, distances)`` pair umap-learn / cuML accept, as private trimmed contiguous copies."""
    if knn.metric != metric:
        raise ValueError(f"knn was built with metric={knn.metric!r}, the reduction uses {metric!r}")
    if knn.indices.shape[0] != n:
        raise ValueError(f"knn has {knn.indices.shape[0]} rows, X has {n}")
    if knn.n_neighbors < n_neighbors:
        raise ValueError(f"knn has {knn.n_neighbors} neighbours per point, n_neighbors={n_neighbors} "
                         "needs at least that many")
    if not np.array_equal(knn.indices[:, 0], np.arange(n)):
        raise ValueError("knn must hold each point itself in column 0 (build it with knn_graph)")
    indices = np.array(knn.indices[:, :n_neighbors], dtype=np.int32, order="C", copy=True)
    distances = np.array(knn.distances[:, :n_neighbors], dtype=np.float32, order="C", copy=True)
    return indices, distances


def pca_init(X: np.ndarray, n_components: int, seed: int | None, block: int = 65536) -> np.ndarray:
    """umap-learn's "pca" initial layout without a float64 copy of X: the top principal axes from a float64
    d x d covariance accumulated over float32 row blocks, the projection scaled so that the largest
    coordinate is 10, plus N(0, 1e-4) jitter from ``seed`` (``umap_.noisy_scale_coords``)."""
    n, d = X.shape
    total = np.zeros(d, dtype=np.float64)
    gram = np.zeros((d, d), dtype=np.float64)
    for start in range(0, n, block):
        b = X[start:start + block]
        total += b.sum(axis=0, dtype=np.float64)
        gram += (b.T @ b).astype(np.float64)
    mean = total / n
    cov = gram / n - np.outer(mean, mean)
    _, vectors = np.linalg.eigh(cov)
    axes = vectors[:, ::-1][:, :n_components].astype(np.float32)
    for j in range(n_components):  # a sign convention, so the layout does not depend on the eigen solver
        if axes[np.argmax(np.abs(axes[:, j])), j] < 0:
            axes[:, j] *= -1
    out = np.empty((n, n_components), dtype=np.float32)
    mean32 = mean.astype(np.float32)
    for start in range(0, n, block):
        out[start:start + block] = (X[start:start + block] - mean32) @ axes
    out *= 10.0 / max(float(np.abs(out).max()), 1e-12)
    out += np.random.default_rng(seed).normal(scale=1e-4, size=out.shape).astype(np.float32)
    return out


def resolve_init(init: str, n: int) -> str:
    if init not in INITS:
        raise ValueError(f"init (eval.umap_init) must be one of {INITS}, got {init!r}")
    if init == "auto":
        return "pca" if n > PCA_INIT_ABOVE else "spectral"
    return init


def _umap_learn(X: np.ndarray, n_components: int, n_neighbors: int, min_dist: float, metric: str,
                seed: int | None, knn: KNNResult, verbose: bool, init: str, deterministic: bool,
                progress: bool, n_epochs: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    import umap

    n_jobs = 1 if deterministic else backends.cpu_threads()
    # parallel by default: umap-learn runs single-threaded whenever random_state is set, so the seed goes
    # into the initial layout instead (spectral: a seeded umap-learn spectral layout; pca: ours)
    if init == "pca":
        layout: Any = pca_init(X, n_components, seed)
    elif deterministic or seed is None:
        layout = "spectral"
    else:
        layout = _seeded_spectral(X, n_components, n_neighbors, metric, seed, knn)
    tqdm_kwds = {"disable": not progress, "desc": "UMAP epochs", "mininterval": 2.0, "unit": "epoch"}
    model = umap.UMAP(n_neighbors=n_neighbors, n_components=n_components, min_dist=min_dist, metric=metric,
                      random_state=seed if deterministic else None, n_jobs=n_jobs, init=layout,
                      precomputed_knn=_umap_knn(knn, X.shape[0], n_neighbors, metric), verbose=verbose,
                      tqdm_kwds=tqdm_kwds, n_epochs=n_epochs)
    with warnings.catch_warnings():
        # expected: without pynndescent's search index umap-learn cannot `transform` new points (not needed)
        warnings.filterwarnings("ignore", message=r".*knn_search_index.*", category=UserWarning)
        embedding = model.fit_transform(X)
    return embedding, {"n_jobs": n_jobs, "init": init, "deterministic": deterministic, "n_epochs": n_epochs,
                       "random_state": seed if deterministic else None}


def _seeded_spectral(X: np.ndarray, n_components: int, n_neighbors: int, metric: str, seed: int,
                     knn: KNNResult) -> np.ndarray:
    """umap-learn's spectral initial layout of the fuzzy graph, with ``seed`` (as umap-learn computes it
    when ``random_state`` is set), so that the parallel SGD starts from a reproducible layout."""
    from umap.spectral import spectral_layout
    from umap.umap_ import fuzzy_simplicial_set, noisy_scale_coords

    indices, distances = _umap_knn(knn, X.shape[0], n_neighbors, metric)
    graph, _, _ = fuzzy_simplicial_set(X, n_neighbors, np.random.RandomState(seed), metric,
                                       knn_indices=indices, knn_dists=distances)
    rng = np.random.RandomState(seed)
    layout = spectral_layout(X, graph, n_components, rng, metric=metric)
    return noisy_scale_coords(layout, rng, max_coord=10, noise=0.0001).astype(np.float32)


def _umap_cuml(X: np.ndarray, n_components: int, n_neighbors: int, min_dist: float, metric: str,
               seed: int | None, knn: KNNResult | None, verbose: bool, n_epochs: int | None) -> np.ndarray:
    from cuml.manifold import UMAP

    params: dict[str, Any] = {"n_neighbors": n_neighbors, "n_components": n_components, "min_dist": min_dist,
                              "metric": metric, "random_state": seed, "verbose": verbose,
                              "output_type": "numpy"}
    if n_epochs:
        params["n_epochs"] = n_epochs
    if knn is None and backends.faiss_gpu_available():
        knn = knn_graph(X, n_neighbors, metric=metric, seed=seed or 0, recall_sample=0)
    if knn is not None:
        params["precomputed_knn"] = _umap_knn(knn, X.shape[0], n_neighbors, metric)
    else:
        params["build_algo"] = "brute_force_knn"
    return UMAP(**params).fit_transform(X)


def _tsne(X: np.ndarray, n_components: int, metric: str, seed: int | None, perplexity: float,
          gpu: bool, verbose: bool) -> np.ndarray:
    data = l2_normalize(X) if metric == "cosine" else X
    if gpu:
        from cuml.manifold import TSNE as CuTSNE

        model = CuTSNE(n_components=2, perplexity=perplexity, random_state=seed, verbose=verbose,
                       output_type="numpy")
        return model.fit_transform(data)
    from sklearn.manifold import TSNE

    model = TSNE(n_components=n_components, perplexity=perplexity, init="pca", learning_rate="auto",
                 random_state=seed, n_jobs=backends.cpu_threads(), verbose=int(verbose))
    return model.fit_transform(data)


def reduce_dimension(X: np.ndarray, *, method: str = "umap", n_components: int = 3, n_neighbors: int = 10,
                     min_dist: float = 0.0, metric: str = "cosine", backend: str = "auto",
                     seed: int | None = 0, knn: KNNResult | None = None, verbose: bool = False,
                     perplexity: float | None = None, init: str = "auto", deterministic: bool = False,
                     progress: bool = False, n_epochs: int | None = None) -> ReductionResult:
    """Reduce ``X`` (n, d) to ``n_components`` dimensions with UMAP or t-SNE.

    ``knn``: the :func:`knn_graph` of ``X`` with the same metric and at least ``n_neighbors`` columns (UMAP
    only; built here when None). ``seed`` fixes the initial layout; ``deterministic=True`` makes UMAP
    bit-for-bit reproducible (single-threaded), otherwise it runs on all cores (module docstring).
    ``init``: "auto" | "spectral" | "pca". ``n_epochs``: UMAP SGD epochs (None: umap-learn's rule).
    ``perplexity``: t-SNE only (default 30). Raises ValueError on
    NaN/Inf, too few samples, or inconsistent parameters, naming the offending value.
    """
    start = time.perf_counter()
    data = _validate(X, method, n_components, n_neighbors, min_dist, metric)
    if n_epochs is not None and n_epochs < 1:
        raise ValueError(f"n_epochs (eval.umap_epochs) must be >= 1 or None for umap-learn's rule, got {n_epochs}")
    chosen = resolve_backend(method, backend, n_components)
    gpu = chosen == "cuml"
    name = ("cuml" if gpu else "umap-learn") if method == "umap" else ("cuml-tsne" if gpu else "sklearn-tsne")
    params: dict[str, Any] = {}
    if method == "umap":
        backends.log_backend("reduce", name, f"UMAP N={data.shape[0]}, n_components={n_components}, "
                             f"n_neighbors={n_neighbors}, min_dist={min_dist}, metric={metric}")
        if gpu:
            embedding = _umap_cuml(data, n_components, n_neighbors, min_dist, metric, seed, knn, verbose, n_epochs)
        else:
            if knn is None:
                knn = knn_graph(data, n_neighbors, metric=metric, seed=seed or 0, recall_sample=0,
                                n_jobs=1 if deterministic else None)
            embedding, params = _umap_learn(data, n_components, n_neighbors, min_dist, metric, seed, knn,
                                            verbose, resolve_init(init, data.shape[0]), deterministic, progress,
                                            n_epochs)
    else:
        perp = DEFAULT_PERPLEXITY if perplexity is None else float(perplexity)
        perp = min(perp, (data.shape[0] - 1) / 3.0)
        if perp <= 0:
            raise ValueError(f"perplexity must be > 0, got {perplexity}")
        backends.log_backend("reduce", name, f"t-SNE N={data.shape[0]}, n_components={n_components}, "
                             f"perplexity={perp:.4g}, metric={metric}")
        embedding = _tsne(data, n_components, metric, seed, perp, gpu, verbose)
    out = np.ascontiguousarray(np.asarray(embedding), dtype=np.float32)
    return ReductionResult(embedding=out, backend=name, seconds=time.perf_counter() - start, params=params)
