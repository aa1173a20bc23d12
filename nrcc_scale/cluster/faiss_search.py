"""Nearest neighbours by faiss (exact or IVF, CPU or GPU) with a scikit-learn fallback, and the weighted kNN
accuracy the training monitor reports. :mod:`nrcc_scale.cluster.knn` builds UMAP's graph on top of it.
Over 400 lines because the docstring carries the index choice and its measurements; the code is ~320.

Conventions
-----------
* ``metric="cosine"``: inner product on L2-normalised float32 copies of the inputs (the caller's arrays are
  never modified). ``distances`` are cosine *distances* ``1 - sim`` (clipped at 0 against rounding), which
  is what umap-learn's own cosine kNN returns; ``similarities`` holds ``sim``.
* ``metric="euclidean"``: L2 search; ``distances`` are Euclidean distances (faiss returns squares; we take
  the root), ``similarities`` is None.
* Rows of zero norm stay zero under cosine (similarity 0 to everything) instead of becoming NaN.

faiss index choice inside :func:`knn_search` (:func:`plan_search`)
-----------------------------------------------------------------
* Exact (``IndexFlatIP`` / ``IndexFlatL2``) while the database has at most ``exact_limit`` rows: at 2·10^5
  rows the exact search of the whole graph is still minutes on a CPU and seconds on a GPU.
* IVF (``IndexIVFFlat``) beyond: ``nlist = round(4·sqrt(N))`` lists (at most N/39 so that every list gets
  the 39 training points faiss asks for), trained on a seeded random subsample of ``min(N, 64·nlist)`` rows,
  and searched with ``nprobe = default_nprobe(nlist)`` = ``max(16, ceil(sqrt(nlist) / 2))`` lists (N = 10^5:
  1265 lists, 18 probed; N = 10^6: 4000 lists, 32 probed, 0.8 % of the data scanned per query). On the
  clustered 256-d embeddings of ``benchmarks/knn_scaling.py`` recall@10 against exact search stays near 1
  (0.998 at 10^6 with 32 or 64 probes); recall did not degrade with N at a fixed nprobe (neighbours get
  closer as fast as the lists shrink), and doubling nprobe bought < 1 % recall for ~2x the scan time,
  which is memory-bound. Rows that come back with fewer than k
  hits (faiss pads with -1 when the probed lists hold fewer than k vectors) are searched again over all
  lists.
* faiss-GPU cannot return more than 2048 neighbours (``GPU_MAX_K``) nor probe more than 2048 lists: a
  search with a larger k runs on the CPU for that call (one warning), and nprobe is capped on the GPU.
* No faiss: scikit-learn ``NearestNeighbors`` (exact brute force; Euclidean on the normalised vectors for
  cosine, which gives the same neighbours), announced by one warning line.

Queries are processed ``chunk_size`` rows at a time so that faiss's temporary memory (and, on a GPU, the
result buffers) stay bounded however many queries there are. faiss uses :func:`backends.cpu_threads`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from nrcc_scale.cluster import backends

__all__ = [
    "GPU_MAX_K",
    "KNNResult",
    "METRICS",
    "SearchPlan",
    "check_metric",
    "default_nlist",
    "default_nprobe",
    "drop_self",
    "knn_search",
    "l2_normalize",
    "plan_search",
    "prepare_rows",
    "progress_bar",
    "search_chunked",
    "weighted_knn_accuracy",
]

log = logging.getLogger("nrcc_scale.cluster")

METRICS = ("cosine", "euclidean")
#: Largest k (and nprobe) faiss-GPU's selection kernels support.
GPU_MAX_K = 2048
#: faiss warns below 39 training points per centroid; we size nlist to stay above it.
MIN_POINTS_PER_LIST = 39
#: IVF training sample: this many points per list (capped at N).
TRAIN_POINTS_PER_LIST = 64


@dataclass
class KNNResult:
    """Neighbours of each query row, nearest first.

    ``indices`` int64 (n, k) into the database; ``distances`` float32 (n, k) (cosine distance ``1 - sim`` or
    Euclidean distance); ``similarities`` float32 (n, k) cosine similarities (None for Euclidean);
    ``backend`` says what ran (``"faiss-cpu exact"``, ``"faiss-gpu ivf"``, ``"sklearn"``).
    """

    indices: np.ndarray
    distances: np.ndarray
    similarities: np.ndarray | None
    backend: str
    metric: str = "cosine"
    recall: float | None = None  # against exact search on recall_rows random rows (knn_graph)
    recall_rows: int = 0
    choice: Any = None  # the GraphChoice that built it (knn_graph)
    build_seconds: float = 0.0

    @property
    def n_neighbors(self) -> int:
        return int(self.indices.shape[1])


@dataclass(frozen=True)
class SearchPlan:
    """How one search will run; computed by :func:`plan_search` before any work, so the rules (exact vs
    IVF, GPU limits) can be unit-tested without data or a GPU."""

    library: str  # "faiss" | "sklearn" | "cuvs" (when faiss-GPU has no kernels for the device)
    device: str  # "cpu" | "gpu"
    index: str  # "exact" | "ivf"
    k: int  # neighbours asked from the index (k + 1 when the self-match is to be dropped)
    nlist: int = 0
    nprobe: int = 0
    train_size: int = 0
    notes: tuple[str, ...] = ()

    @property
    def backend(self) -> str:
        if self.library in ("sklearn", "cuvs"):
            return self.library if self.library == "sklearn" else f"cuvs {self.index}"
        return f"faiss-{self.device} {self.index}"


# ------------------------------------------------------------------------------------------------ planning
def default_nlist(n_database: int) -> int:
    """IVF lists: ~4·sqrt(N) (faiss's guideline for 10^5-10^7 vectors), at most N/39 (>= 39 points per
    list for training), at least 1."""
    return int(max(1, min(round(4.0 * math.sqrt(n_database)), n_database // MIN_POINTS_PER_LIST)))


def default_nprobe(nlist: int) -> int:
    """Lists probed per query: max(16, ceil(sqrt(nlist) / 2)), at most nlist. The scan of an IVF list is
    memory-bound (no BLAS), so nprobe is what makes IVF faster than exact search or not; sqrt(nlist) / 2
    grows slowly enough that the scanned fraction falls with N (0.8% of the lists at 10^6 rows, recall@10
    0.998 on clustered embeddings in ``benchmarks/knn_scaling.py``), and the floor of 16 keeps recall high
    on small indexes, whose lists are coarse."""
    return int(min(nlist, max(16, math.ceil(math.sqrt(nlist) / 2))))


def plan_search(n_database: int, k: int, *, exact_limit: int = 200_000, gpu: bool = False,
                faiss: bool = True, nprobe: int | None = None) -> SearchPlan:
    """Decide library, device, index type and IVF parameters for ``k`` neighbours among ``n_database`` rows.

    ``gpu`` is the already-resolved wish to use faiss-GPU. A k above :data:`GPU_MAX_K` moves the search to
    the CPU (faiss-GPU cannot select more); an nprobe above it is capped on the GPU. Both are reported in
    ``notes``.
    """
    if not faiss:
        notes = ()
        if n_database > exact_limit:
            notes = (f"scikit-learn has no IVF: exact brute force over {n_database} rows (slow)",)
        return SearchPlan("sklearn", "cpu", "exact", k, notes=notes)
    notes_list: list[str] = []
    if gpu and k > GPU_MAX_K:
        notes_list.append(f"k={k} exceeds faiss-GPU's limit of {GPU_MAX_K} neighbours; "
                          "this search runs on the CPU")
        gpu = False
    device = "gpu" if gpu else "cpu"
    if n_database <= exact_limit:
        return SearchPlan("faiss", device, "exact", k, notes=tuple(notes_list))
    nlist = default_nlist(n_database)
    probe = default_nprobe(nlist) if nprobe is None else int(nprobe)
    if probe < 1:
        raise ValueError(f"nprobe must be >= 1, got {nprobe}")
    probe = min(probe, nlist)
    if gpu and probe > GPU_MAX_K:
        notes_list.append(f"nprobe={probe} exceeds faiss-GPU's limit; capped at {GPU_MAX_K}")
        probe = GPU_MAX_K
    train_size = min(n_database, TRAIN_POINTS_PER_LIST * nlist)
    return SearchPlan("faiss", device, "ivf", k, nlist=nlist, nprobe=probe, train_size=train_size,
                      notes=tuple(notes_list))


# ------------------------------------------------------------------------------------------------- inputs
def l2_normalize(x: np.ndarray) -> np.ndarray:
    """A float32 C-contiguous copy of ``x`` with unit-norm rows; zero rows stay zero (not NaN)."""
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def prepare_rows(x: Any, metric: str, name: str) -> np.ndarray:
    """Validate a feature matrix and return it as float32 C-contiguous (normalised for cosine)."""
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (n, d), got shape {arr.shape}")
    # one float32 copy at most (10^6 x 256 is 1 GB); NaN/Inf survive the normalisation, so check after it
    out = l2_normalize(arr) if metric == "cosine" else np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return out


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


# --------------------------------------------------------------------------------------------------- faiss
_gpu_resources: Any = None


def _faiss_gpu_resources() -> Any:
    """One StandardGpuResources per process: each holds a large scratch allocation on the device."""
    global _gpu_resources
    if _gpu_resources is None:
        _gpu_resources = backends.faiss_module().StandardGpuResources()
    return _gpu_resources


def _faiss_index(database: np.ndarray, plan: SearchPlan, metric: str, seed: int, chunk_size: int) -> Any:
    """Build (and, for IVF, train) the faiss index the plan asks for and add the database in chunks."""
    faiss = backends.faiss_module()
    d = database.shape[1]
    inner = metric == "cosine"
    faiss_metric = faiss.METRIC_INNER_PRODUCT if inner else faiss.METRIC_L2
    if plan.device == "gpu":
        res = _faiss_gpu_resources()
        if plan.index == "exact":
            index = faiss.GpuIndexFlatIP(res, d) if inner else faiss.GpuIndexFlatL2(res, d)
        else:
            index = faiss.GpuIndexIVFFlat(res, d, plan.nlist, faiss_metric)
    elif plan.index == "exact":
        index = faiss.IndexFlatIP(d) if inner else faiss.IndexFlatL2(d)
    else:
        quantizer = faiss.IndexFlatIP(d) if inner else faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, plan.nlist, faiss_metric)
    if plan.index == "ivf":
        if hasattr(index, "cp"):
            index.cp.seed = int(seed)  # the coarse k-means; its default seed is fixed, ours follows `seed`
        rows = np.sort(np.random.default_rng(seed).choice(database.shape[0], plan.train_size, replace=False))
        index.train(database[rows])
        index.nprobe = plan.nprobe
    for start in range(0, database.shape[0], chunk_size):
        index.add(database[start:start + chunk_size])
    return index


def search_chunked(index: Any, queries: np.ndarray, k: int, chunk_size: int, progress: bool = False,
                    desc: str = "kNN search") -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` over ``chunk_size`` query rows at a time into preallocated outputs."""
    n = queries.shape[0]
    scores = np.empty((n, k), dtype=np.float32)
    ids = np.empty((n, k), dtype=np.int64)
    for start in progress_bar(range(0, n, chunk_size), progress and n > chunk_size, desc, chunk_size):
        stop = min(n, start + chunk_size)
        scores[start:stop], ids[start:stop] = index.search(queries[start:stop], k)
    return scores, ids


def _faiss_search(database: np.ndarray, queries: np.ndarray | None, plan: SearchPlan, metric: str,
                  chunk_size: int, seed: int, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scores (inner products for cosine, squared L2 otherwise) and ids, nearest first."""
    backends.set_faiss_threads()
    index = _faiss_index(database, plan, metric, seed, chunk_size)
    q = database if queries is None else queries
    scores, ids = search_chunked(index, q, plan.k, chunk_size, progress, f"kNN {plan.backend}")
    if plan.index == "ivf":
        incomplete = np.flatnonzero((ids < 0).any(axis=1))
        if incomplete.size:  # the probed lists held fewer than k vectors: probe them all for those rows
            log.debug("knn: %d queries had fewer than %d IVF hits; searching all lists", incomplete.size,
                      plan.k)
            index.nprobe = min(plan.nlist, GPU_MAX_K) if plan.device == "gpu" else plan.nlist
            scores[incomplete], ids[incomplete] = search_chunked(index, q[incomplete], plan.k, chunk_size)
            if (ids < 0).any():  # only possible on a GPU index with more than GPU_MAX_K lists
                raise RuntimeError(f"IVF search found fewer than k={plan.k} neighbours for some queries even "
                                   "with all lists probed; use a smaller k or a larger exact_limit")
    return scores, ids


def _sklearn_search(database: np.ndarray, queries: np.ndarray | None, plan: SearchPlan, metric: str,
                    chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The faiss-less fallback, returning faiss's score conventions. Cosine runs as Euclidean on the
    normalised rows (same order, and scikit-learn's fast Euclidean path): sim = 1 - d^2 / 2."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(algorithm="brute", metric="euclidean", n_jobs=backends.cpu_threads())
    nn.fit(database)
    q = database if queries is None else queries
    scores = np.empty((q.shape[0], plan.k), dtype=np.float32)
    ids = np.empty((q.shape[0], plan.k), dtype=np.int64)
    for start in range(0, q.shape[0], chunk_size):
        dist, ind = nn.kneighbors(q[start:start + chunk_size], n_neighbors=plan.k)
        squared = dist.astype(np.float64) ** 2
        scores[start:start + chunk_size] = 1.0 - squared / 2.0 if metric == "cosine" else squared
        ids[start:start + chunk_size] = ind
    return scores, ids


def _gpu_library() -> str:
    """"faiss-gpu", "cuvs" or "none": what passed its kernel self-test (:mod:`nrcc_scale.cluster.gpu_knn`)."""
    from nrcc_scale.cluster.gpu_knn import gpu_knn_backend

    return gpu_knn_backend()[0]


def drop_self(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's self-match from a (n, k+1) self-query result.

    Exact duplicates tie with the point itself, so the self-match is not always in column 0 and, with more
    than k duplicates, may not be in the result at all; then the last (farthest) column is dropped instead,
    leaving k neighbours that are all at the self distance - the right answer.
    """
    n, m = ids.shape
    is_self = ids == np.arange(n, dtype=np.int64)[:, None]
    is_self[~is_self.any(axis=1), m - 1] = True
    keep = ~is_self
    return scores[keep].reshape(n, m - 1), ids[keep].reshape(n, m - 1)


# ---------------------------------------------------------------------------------------------- public API
def knn_search(database: np.ndarray, queries: np.ndarray | None, k: int, *, metric: str = "cosine",
               exact_limit: int = 200_000, use_gpu: bool | None = None, chunk_size: int = 65536,
               exclude_self: bool = False, nprobe: int | None = None, seed: int = 0,
               progress: bool = False) -> KNNResult:
    """The ``k`` nearest database rows of every query row (``queries=None``: of every database row).

    ``exclude_self`` (only with ``queries=None``) drops each point itself, robustly with duplicate points.
    ``use_gpu``: None = faiss-GPU when available, True = require it, False = CPU. ``nprobe`` overrides the IVF
    default; ``seed`` fixes the IVF training sample and k-means. See the module docstring for the rules.
    """
    check_metric(metric)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if exclude_self and queries is not None:
        raise ValueError("exclude_self=True needs queries=None (the kNN graph of the database itself)")
    db = prepare_rows(database, metric, "database")
    q = None if queries is None else prepare_rows(queries, metric, "queries")
    if q is not None and q.shape[1] != db.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} dimensions, the database {db.shape[1]}")
    k_index = k + 1 if exclude_self else k
    if k_index > db.shape[0]:
        raise ValueError(f"k={k} needs at least {k_index} database rows, got {db.shape[0]}")

    gpu = backends.select_faiss_gpu("knn", use_gpu)
    # faiss-GPU may import yet lack kernels for this device (faiss-wheels#151): then cuVS, else faiss on the CPU
    gpu_library = _gpu_library() if gpu else "faiss-gpu"
    gpu = gpu and gpu_library == "faiss-gpu"
    plan = plan_search(db.shape[0], k_index, exact_limit=exact_limit, gpu=gpu,
                       faiss=backends.faiss_available(), nprobe=nprobe)
    for note in plan.notes:
        backends.warn_once(f"stage knn: {note}")
    n_queries = db.shape[0] if q is None else q.shape[0]
    detail = f"N={db.shape[0]}, queries={n_queries}, k={k}, metric={metric}"
    if plan.index == "ivf":
        detail += f", nlist={plan.nlist}, nprobe={plan.nprobe}"
    if gpu_library == "cuvs":
        plan = SearchPlan("cuvs", "gpu", "exact", k_index)
        detail = f"N={db.shape[0]}, queries={n_queries}, k={k}, metric={metric}"
    backends.log_backend("knn", plan.backend, detail)

    if plan.library == "cuvs":
        from nrcc_scale.cluster.gpu_knn import cuvs_search

        scores, ids = cuvs_search(db, q, k_index, metric, chunk_size)
    elif plan.library == "faiss":
        scores, ids = _faiss_search(db, q, plan, metric, chunk_size, seed, progress)
    else:
        scores, ids = _sklearn_search(db, q, plan, metric, chunk_size)
    if exclude_self:
        scores, ids = drop_self(scores, ids)
    if metric == "cosine":
        return KNNResult(ids, np.maximum(1.0 - scores, 0.0, dtype=np.float32), scores, plan.backend, metric)
    return KNNResult(ids, np.sqrt(np.maximum(scores, 0.0)).astype(np.float32), None, plan.backend, metric)


def progress_bar(iterable: Any, enabled: bool, desc: str, rows_per_step: int = 1) -> Any:
    """A tqdm bar (rate and ETA) over ``iterable`` when ``enabled``; the iterable itself otherwise."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="chunk" if rows_per_step > 1 else "it", mininterval=2.0,
                postfix=f"{rows_per_step} rows/chunk" if rows_per_step > 1 else None)


def _as_labels(labels: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0):
        raise ValueError(f"{name} must be non-negative integers")
    return arr.astype(np.int64, copy=False)


def weighted_knn_accuracy(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                          test_labels: np.ndarray, k: int = 20, temperature: float = 0.07,
                          num_classes: int | None = None) -> float:
    """Top-1 accuracy of the weighted kNN classifier used as the SSL training monitor (InstDisc; the NRCC
    reference code's kNN monitor): cosine similarity of L2-normalised features, the k most similar train
    samples each vote for their class with weight ``exp(sim / temperature)``, the class with the largest
    total wins (ties: the lowest class id).

    The weights are computed as ``exp((sim - max_sim) / temperature)`` per test row: the same votes up to a
    per-row factor (so the same predictions), without overflow at small temperatures. k is capped at the
    number of train samples (small monitor subsets).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_train, n_test = np.asarray(train_features).shape[0], np.asarray(test_features).shape[0]
    y_train = _as_labels(train_labels, n_train, "train_labels")
    y_test = _as_labels(test_labels, n_test, "test_labels")
    if n_test == 0:
        raise ValueError("test_features is empty")
    n_classes = int(max(y_train.max(initial=-1), y_test.max(initial=-1)) + 1) if num_classes is None \
        else int(num_classes)
    if y_train.size and y_train.max() >= n_classes:
        raise ValueError(f"train label {y_train.max()} >= num_classes={n_classes}")
    if k > n_train:
        log.warning("weighted kNN: k=%d > %d train samples; using k=%d", k, n_train, n_train)
        k = n_train
    res = knn_search(train_features, test_features, k, metric="cosine")
    sims = res.similarities.astype(np.float64)
    weights = np.exp((sims - sims[:, :1]) / temperature)  # column 0 holds each row's largest similarity
    neighbour_labels = y_train[res.indices]
    rows_per_chunk = max(1, (1 << 24) // max(1, n_classes))  # bound the (rows, classes) vote table to 128 MB
    correct = 0
    for start in range(0, n_test, rows_per_chunk):
        lab = neighbour_labels[start:start + rows_per_chunk]
        m = lab.shape[0]
        flat = (np.arange(m, dtype=np.int64)[:, None] * n_classes + lab).ravel()
        votes = np.bincount(flat, weights=weights[start:start + m].ravel(), minlength=m * n_classes)
        predicted = votes.reshape(m, n_classes).argmax(axis=1)
        correct += int((predicted == y_test[start:start + m]).sum())
    return correct / n_test
