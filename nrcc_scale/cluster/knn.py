"""k-nearest-neighbour graphs (stage 2 of the evaluation) by the fastest builder that meets a recall floor,
faiss search, and the weighted kNN monitor.

Why this module exists
----------------------
UMAP needs each point's 10 nearest neighbours; at 10^6 256-d embeddings building that graph is a large
share of the evaluation. No single library is fastest everywhere: exact BLAS search (faiss) wins while
N^2·d is small, approximate builders beyond, and on a GPU faiss wins at every size. So the graph is built
here, by a rule measured per device, and handed to UMAP (``precomputed_knn``); every run checks the
graph's recall against exact search (``graph_recall``, 1000 rows) and reports it.

Graph builder (:func:`choose_graph_builder`, ``eval.knn_backend`` overrides it)
-------------------------------------------------------------------------------
* GPU (faiss-GPU usable): faiss exact up to 2·10^5 rows, faiss IVF beyond.
* CPU: faiss exact while ``N <= exact_max_rows(d, cores) = sqrt(1.3e12 · cores / d)`` (d = 256: 1.0·10^5
  rows on 2 cores, 4.0·10^5 on 32; d = 64: 2.0·10^5 on 2 cores), **faiss-cells** beyond
  (:mod:`nrcc_scale.cluster.knn_cells`: exact BLAS products inside each fine k-means cell's 8 nearest
  cells; 128k x 256: 7.3 s at recall .9999, 1.28M x 256: 90 s at recall 1.0000 on clustered embeddings),
  and where its recall is below the floor **pynndescent** - the builder umap-learn itself uses, run with
  umap-learn's own parameters (n_trees, n_iters, max_candidates=60, low_memory); pynndescent is also the
  builder without faiss. Exact search costs N^2·d / cores; pynndescent ~N·log N and does not care much about
  d, so the break-even N grows as sqrt(cores / d). The measurements below the first bullet predate
  faiss-cells (pynndescent was the rule beyond the break-even then).
* Measurements behind the rule (2 cores, k = 10, cosine, 256-d, whole graph):
  - issue 17's figures on this machine: 10^5 rows - faiss exact 41 s, pynndescent 39 s (its numba
    compilation included): even, hence the break-even constant; 10^6 rows - faiss IVF (nlist 4000,
    nprobe 32) 327 s at recall .9998, pynndescent 64 s at recall .995: **pynndescent wins 5x**.
  - ``benchmarks/knn_scaling.py --grid 10000:64 10000:256 10000:1024 100000:256`` (docs/benchmarks/
    knn_scaling.json; the machine was loaded by other work, so absolute times are pessimistic), whole
    graph, recall on 1000 rows, pynndescent already compiled:
    10^4 x 64: pynndescent 0.50 s, IVF 0.51 s, HNSW 1.4 s, exact 15 s (an outlier under load; 2.1 s at d=256);
    10^4 x 256: pynndescent 0.61 s, IVF 1.0 s, exact 2.1 s, HNSW 2.3 s;
    10^4 x 1024: exact 4.7 s, IVF 6.1 s, pynndescent 8.7 s, HNSW 19.7 s;
    10^5 x 256: pynndescent 20.6 s / 8.2 s (two runs; recall .995), IVF 59.8 s / 51.5 s (recall 1.000),
    HNSW 28.2 s (recall .960), exact 208.8 s, scikit-learn brute 255 s / 108 s (extrapolated from 4096
    queries). faiss HNSW never won on this CPU; exact suffers most from the load (OpenMP on busy cores).
    **pynndescent's numba compilation costs 36-102 s in a fresh process** (measured under load; umap-learn
    pays it too). That is why the rule keeps faiss exact below the break-even even where compiled
    pynndescent is faster (10^4 rows at d <= 256): there the compile, not the search, is the cost.
  - ``benchmarks/eval_end_to_end.py`` at 128,117 x 256 (1000 classes): pynndescent recall .996.
  On clustered embeddings pynndescent's recall stays >= .99 up to 10^5 rows; on structure-less
  high-dimensional noise it can fall far below (uniform 64-d Gaussians: ~0.4), and at 1,281,167 x 256 (1000
  near-isotropic classes, every within-class neighbour nearly tied) umap-learn's parameters reached only .855,
  which is what the recall floor is for.
* 2k from the start above ``PYNNDESCENT_WIDE_ABOVE`` (4·10^5) rows: at 1,281,167 x 256 (same data, 2 cores,
  other work niced; ``benchmarks/knn_widen.py`` compares the three ways) k = 10 took 623 s to recall .855 and NN-descent
  continued from it at k = 20 another 200 s to .980 (823 s), while k = 20 from the start took 301 s to .982.
  At 128k, k alone reaches .996, so the wider search is kept for the sizes where it pays.
* Recall floor ``eval.knn_min_recall`` (.98): under "auto", a faiss-cells graph below it is rebuilt by
  pynndescent (2k from the start above 4·10^5 rows, as above); a pynndescent graph (at k) below it is first
  repaired by NN-descent continued from it with 2 x n_neighbors and trimmed (no new random-projection forest),
  and a graph still below is rebuilt with faiss exact (up to 4 x ``exact_max_rows``) or IVF (beyond; ~12 min
  at 1.28M here); a warning says which. With an explicit ``eval.knn_backend`` the pipeline only warns.
* The graph is kept as int32 indices and float32 distances (10^6 x 10: 80 MB); pynndescent works on its
  own normalised copy of X (the faiss builders on ours), so the builder adds one float32 copy of X at most.
* Progress: tqdm bars over the faiss query chunks; pynndescent prints its own per-iteration lines.

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
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from nrcc_scale.cluster import backends

__all__ = [
    "GPU_MAX_K",
    "GRAPH_BUILDERS",
    "GraphChoice",
    "choose_graph_builder",
    "exact_max_rows",
    "graph_recall",
    "KNNResult",
    "SearchPlan",
    "default_nlist",
    "default_nprobe",
    "knn_graph",
    "knn_search",
    "l2_normalize",
    "plan_search",
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


def _prepare(x: Any, metric: str, name: str) -> np.ndarray:
    """Validate a feature matrix and return it as float32 C-contiguous (normalised for cosine)."""
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (n, d), got shape {arr.shape}")
    # one float32 copy at most (10^6 x 256 is 1 GB); NaN/Inf survive the normalisation, so check after it
    out = l2_normalize(arr) if metric == "cosine" else np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return out


def _check_metric(metric: str) -> None:
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


def _search_chunked(index: Any, queries: np.ndarray, k: int, chunk_size: int, progress: bool = False,
                    desc: str = "kNN search") -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` over ``chunk_size`` query rows at a time into preallocated outputs."""
    n = queries.shape[0]
    scores = np.empty((n, k), dtype=np.float32)
    ids = np.empty((n, k), dtype=np.int64)
    for start in _progress(range(0, n, chunk_size), progress and n > chunk_size, desc, chunk_size):
        stop = min(n, start + chunk_size)
        scores[start:stop], ids[start:stop] = index.search(queries[start:stop], k)
    return scores, ids


def _faiss_search(database: np.ndarray, queries: np.ndarray | None, plan: SearchPlan, metric: str,
                  chunk_size: int, seed: int, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scores (inner products for cosine, squared L2 otherwise) and ids, nearest first."""
    backends.set_faiss_threads()
    index = _faiss_index(database, plan, metric, seed, chunk_size)
    q = database if queries is None else queries
    scores, ids = _search_chunked(index, q, plan.k, chunk_size, progress, f"kNN {plan.backend}")
    if plan.index == "ivf":
        incomplete = np.flatnonzero((ids < 0).any(axis=1))
        if incomplete.size:  # the probed lists held fewer than k vectors: probe them all for those rows
            log.debug("knn: %d queries had fewer than %d IVF hits; searching all lists", incomplete.size,
                      plan.k)
            index.nprobe = min(plan.nlist, GPU_MAX_K) if plan.device == "gpu" else plan.nlist
            scores[incomplete], ids[incomplete] = _search_chunked(index, q[incomplete], plan.k, chunk_size)
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


def _drop_self(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    _check_metric(metric)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if exclude_self and queries is not None:
        raise ValueError("exclude_self=True needs queries=None (the kNN graph of the database itself)")
    db = _prepare(database, metric, "database")
    q = None if queries is None else _prepare(queries, metric, "queries")
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
        scores, ids = _drop_self(scores, ids)
    if metric == "cosine":
        return KNNResult(ids, np.maximum(1.0 - scores, 0.0, dtype=np.float32), scores, plan.backend, metric)
    return KNNResult(ids, np.sqrt(np.maximum(scores, 0.0)).astype(np.float32), None, plan.backend, metric)


# ------------------------------------------------------------------------------------------ graph builders
#: The kNN-graph builders ``knn_graph`` can run (``eval.knn_backend``); "auto" picks by :func:`choose_graph_builder`.
GRAPH_BUILDERS = ("faiss-exact", "faiss-cells", "faiss-ivf", "faiss-hnsw", "pynndescent", "sklearn")
#: Exact search does N^2·d multiply-adds; it is the fastest CPU builder while N^2·d / cores stays below this
#: (fitted in benchmarks/knn_scaling.py, see the module docstring: on 2 cores at d = 256 the break-even with
#: pynndescent is ~1.0·10^5 rows).
EXACT_WORK_PER_CORE = 1.3e12
#: Rows whose neighbours are checked against exact search in every run (``graph_recall``).
RECALL_SAMPLE = 1000
#: faiss HNSW parameters (M links per node, construction / search beam widths), see the module docstring.
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 40, 64


#: CPU pynndescent above this many rows searches 2 x n_neighbors from the start (module docstring: at 1.28M
#: umap-learn's k reached recall .855, at 128k .996; a failed first build costs more than the wider one).
PYNNDESCENT_WIDE_ABOVE = 400_000


def exact_max_rows(dim: int, cores: int) -> int:
    """Largest N for which exact search is the fastest CPU builder: N^2·d <= EXACT_WORK_PER_CORE · cores."""
    return int(math.sqrt(EXACT_WORK_PER_CORE * max(1, cores) / max(1, dim)))


@dataclass(frozen=True)
class GraphChoice:
    """Which builder a graph is built with, on which device, and why (logged and written to metrics.json)."""

    builder: str
    gpu: bool
    reason: str
    widen: int = 1  # pynndescent only: search widen x n_neighbors, keep the nearest n_neighbors

    @property
    def backend(self) -> str:
        if self.builder.startswith("faiss-"):
            return f"faiss-{'gpu' if self.gpu else 'cpu'} {self.builder.removeprefix('faiss-')}"
        return self.builder


def _pynndescent_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("pynndescent") is not None


def choose_graph_builder(n: int, dim: int, cores: int, *, requested: str = "auto", gpu: bool = False,
                         faiss: bool = True, pynndescent: bool = True) -> GraphChoice:
    """The rule (module docstring, "Graph builder"): GPU -> faiss-GPU exact up to 2·10^5 rows, IVF beyond;
    CPU -> faiss exact while ``N <= exact_max_rows(d, cores)``, faiss-cells beyond (pynndescent when faiss
    is missing; scikit-learn when both are). ``requested`` (a name in :data:`GRAPH_BUILDERS`)
    overrides the rule; a builder whose library is missing raises ``BackendUnavailableError``."""
    if requested != "auto":
        if requested not in GRAPH_BUILDERS:
            raise ValueError(f"eval.knn_backend = {requested!r}; expected 'auto' or one of {GRAPH_BUILDERS}")
        if requested.startswith("faiss-") and not faiss:
            raise backends.BackendUnavailableError(f"stage knn: eval.knn_backend = {requested!r} but faiss is "
                                                   "not installed (pip install faiss-cpu)")
        if requested == "pynndescent" and not pynndescent:
            raise backends.BackendUnavailableError("stage knn: eval.knn_backend = 'pynndescent' but pynndescent "
                                                   "is not installed (pip install pynndescent)")
        on_gpu = gpu and requested in ("faiss-exact", "faiss-ivf")
        return GraphChoice(requested, on_gpu, "eval.knn_backend")
    if gpu and faiss:
        if n <= 200_000:
            return GraphChoice("faiss-exact", True, "GPU, N <= 2e5")
        return GraphChoice("faiss-ivf", True, "GPU, N > 2e5")
    limit = exact_max_rows(dim, cores)
    if n <= limit and faiss:
        return GraphChoice("faiss-exact", False, f"CPU, N <= {limit} (exact_max_rows(d={dim}, cores={cores}))")
    beyond = f"CPU, N > {limit} (exact_max_rows(d={dim}, cores={cores}))"
    if faiss:
        return GraphChoice("faiss-cells", False, beyond)
    if pynndescent:
        return pynndescent_choice(n, f"{beyond}, faiss not installed")
    return GraphChoice("sklearn", False, "neither faiss nor pynndescent installed")


def pynndescent_choice(n: int, reason: str) -> GraphChoice:
    """pynndescent, searching 2k neighbours from the start above :data:`PYNNDESCENT_WIDE_ABOVE` rows."""
    if n > PYNNDESCENT_WIDE_ABOVE:
        return GraphChoice("pynndescent", False, f"{reason}; N > {PYNNDESCENT_WIDE_ABOVE}: 2k neighbours searched",
                           widen=2)
    return GraphChoice("pynndescent", False, reason)


def _check_finite_rows(x: np.ndarray, name: str, chunk: int = 65536) -> None:
    """NaN/Inf check in row blocks (no N x d boolean temporary)."""
    for start in range(0, x.shape[0], chunk):
        if not np.isfinite(x[start:start + chunk]).all():
            raise ValueError(f"{name} contains NaN or Inf values")


def _pynndescent_graph(x: np.ndarray, n_neighbors: int, metric: str, seed: int | None, n_jobs: int,
                       verbose: bool, init_graph: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """pynndescent with umap-learn's own parameters (``umap_.nearest_neighbors``: n_trees, n_iters,
    max_candidates=60, low_memory), so that "ours" and "umap-learn alone" build the same kind of graph.
    ``init_graph`` (n, m) neighbour ids: NN-descent continues from that graph instead of a random-projection
    forest (the recall repair: cheaper than starting again). Returns (int32 ids, float32 distances),
    (n, n_neighbors), self included where pynndescent found it."""
    from pynndescent import NNDescent

    n = x.shape[0]
    n_trees = min(64, 5 + int(round(n ** 0.5 / 20.0)))
    n_iters = max(5, int(round(np.log2(n))))
    init = {} if init_graph is None else {"init_graph": np.ascontiguousarray(init_graph, dtype=np.int32)}
    index = NNDescent(x, n_neighbors=n_neighbors, metric=metric, random_state=seed, n_trees=n_trees,
                      n_iters=n_iters, max_candidates=60, low_memory=True, n_jobs=n_jobs, verbose=verbose,
                      compressed=False, **init)
    ids, dists = index.neighbor_graph
    return np.asarray(ids, dtype=np.int32), np.asarray(dists, dtype=np.float32)


def _hnsw_graph(data: np.ndarray, k: int, metric: str, chunk_size: int,
                progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """faiss ``IndexHNSWFlat`` (CPU only); returns faiss scores (inner product / squared L2) and ids."""
    faiss = backends.faiss_module()
    backends.set_faiss_threads()
    inner = metric == "cosine"
    index = faiss.IndexHNSWFlat(data.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT if inner else faiss.METRIC_L2)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    for start in _progress(range(0, data.shape[0], chunk_size), progress, "kNN hnsw add", chunk_size):
        index.add(data[start:start + chunk_size])
    index.hnsw.efSearch = max(HNSW_EF_SEARCH, 2 * k)
    return _search_chunked(index, data, k, chunk_size, progress=progress, desc="kNN hnsw search")


def _progress(iterable: Any, enabled: bool, desc: str, rows_per_step: int = 1) -> Any:
    """A tqdm bar (rate and ETA) over ``iterable`` when ``enabled``; the iterable itself otherwise."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="chunk" if rows_per_step > 1 else "it", mininterval=2.0,
                postfix=f"{rows_per_step} rows/chunk" if rows_per_step > 1 else None)


def _exact_neighbours_of(x: np.ndarray, rows: np.ndarray, k: int, metric: str,
                         block: int = 65536) -> np.ndarray:
    """Exact distances (cosine distance or Euclidean) from ``x[rows]`` to their ``k`` nearest rows of ``x``
    (each row itself included, at 0), ascending, by plain NumPy matrix products over row blocks of ``x``:
    an implementation independent of every builder it checks."""
    q = np.asarray(x[rows], dtype=np.float32)
    if metric == "cosine":
        q = l2_normalize(q)
    best = np.full((len(rows), k), np.inf, dtype=np.float32)
    q_sq = (q * q).sum(axis=1)[:, None]
    for start in range(0, x.shape[0], block):
        b = np.asarray(x[start:start + block], dtype=np.float32)
        if metric == "cosine":
            b = l2_normalize(b)
            d = 1.0 - q @ b.T
        else:
            d = np.sqrt(np.maximum(q_sq - 2.0 * (q @ b.T) + (b * b).sum(axis=1)[None, :], 0.0))
        merged = np.concatenate([best, d.astype(np.float32)], axis=1)
        best = np.partition(merged, k - 1, axis=1)[:, :k]
    return np.sort(best, axis=1)


def graph_recall(x: np.ndarray, graph: KNNResult, sample: int = RECALL_SAMPLE, seed: int = 0,
                 tolerance: float = 1e-5) -> float:
    """Recall of a kNN graph against exact search on ``sample`` random rows: the fraction of each row's
    ``n_neighbors - 1`` reported neighbours (self excluded) that lie no farther than its true
    ``(n_neighbors - 1)``-th nearest other row (+ ``tolerance``). Distance-based, so ties and duplicate
    points do not count as misses; the distances of the reported neighbours are recomputed here, not taken
    from the graph."""
    n, m = graph.indices.shape
    if m < 2:
        return 1.0
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    exact = _exact_neighbours_of(x, rows, m, graph.metric)  # column 0 is each row itself (distance 0)
    threshold = exact[:, m - 1][:, None] + tolerance
    q = np.asarray(x[rows], dtype=np.float32)
    found = np.asarray(x[graph.indices[rows, 1:].ravel()], dtype=np.float32).reshape(len(rows), m - 1, -1)
    if graph.metric == "cosine":
        q, found = l2_normalize(q), l2_normalize(found.reshape(-1, found.shape[-1])).reshape(found.shape)
        dist = 1.0 - np.einsum("rd,rjd->rj", q, found)
    else:
        dist = np.linalg.norm(found - q[:, None, :], axis=2)
    return float((dist <= threshold).mean())


def _self_first(scores_or_dists: np.ndarray, ids: np.ndarray, self_value: float) -> tuple[np.ndarray, np.ndarray]:
    """(n, m) neighbour lists that may or may not contain each row -> (n, m) with the row itself in column 0
    (at ``self_value``) followed by its m - 1 nearest other rows (see :func:`_drop_self`)."""
    n = ids.shape[0]
    values, others = _drop_self(scores_or_dists, ids)
    own = np.arange(n, dtype=ids.dtype)[:, None]
    return (np.hstack([np.full((n, 1), self_value, values.dtype), values]),
            np.hstack([own, others]))


def knn_graph(X: np.ndarray, n_neighbors: int, metric: str = "cosine", *, backend: str = "auto",
              use_gpu: bool | None = None, seed: int | None = 0, n_jobs: int | None = None,
              progress: bool = False, recall_sample: int = RECALL_SAMPLE, min_recall: float | None = None,
              **kw: Any) -> KNNResult:
    """The kNN graph of ``X`` in umap-learn's ``precomputed_knn`` layout: ``n_neighbors`` columns, each
    point itself first (``indices[:, 0] == i``, distance 0, similarity 1), then its ``n_neighbors - 1``
    nearest other points. The self column is written, not searched, so duplicates cannot displace it.
    ``indices`` are int32, ``distances`` (and cosine ``similarities``) float32.

    ``backend``: "auto" (:func:`choose_graph_builder`) or a name in :data:`GRAPH_BUILDERS`. ``n_jobs``:
    threads for pynndescent (default :func:`backends.cpu_threads`). ``recall_sample`` rows (0 = none) are
    checked against exact search (:func:`graph_recall`); the result carries ``recall`` and ``choice``. With
    ``min_recall`` and ``backend="auto"``, a graph below it is rebuilt - a pynndescent graph first with twice
    the neighbours (trimmed to ``n_neighbors``), then, if still below, with faiss (exact up to the rule's
    limit, IVF beyond) - and a warning says so. ``kw`` goes to :func:`knn_search` for the faiss builders
    (``exact_limit`` is ignored: the builder decides; ``chunk_size``, ``nprobe``).
    """
    _check_metric(metric)
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}")
    arr = np.asarray(X)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"X must be a non-empty 2-D array (n, d), got shape {arr.shape}")
    n, dim = arr.shape
    if n_neighbors > n:
        raise ValueError(f"n_neighbors={n_neighbors} exceeds the number of samples {n}")
    if n_neighbors == 1:
        _prepare(X, metric, "X")  # same validation as the searched case
        sims = np.ones((n, 1), np.float32) if metric == "cosine" else None
        return KNNResult(np.arange(n, dtype=np.int32)[:, None], np.zeros((n, 1), np.float32), sims,
                         "none (self only)", metric)
    cores = backends.cpu_threads() if n_jobs is None else int(n_jobs)
    gpu = False
    if backend in ("auto", "faiss-exact", "faiss-ivf") and backends.faiss_available():
        gpu = backends.select_faiss_gpu("knn", use_gpu)
    choice = choose_graph_builder(n, dim, cores, requested=backend, gpu=gpu, faiss=backends.faiss_available(),
                                  pynndescent=_pynndescent_available())
    kw.pop("exact_limit", None)
    start = time.perf_counter()
    graph = _build(arr, n_neighbors, metric, choice, seed, cores, progress, use_gpu, kw)
    seconds = time.perf_counter() - start
    if recall_sample > 0:
        graph.recall = graph_recall(arr, graph, sample=recall_sample, seed=seed or 0)
        graph.recall_rows = min(recall_sample, n)
        below = min_recall is not None and graph.recall < min_recall and backend == "auto"
        if below and choice.builder == "faiss-cells" and _pynndescent_available():
            # the cells assume clustered rows; where they are not (recall below the floor), NN-descent
            log.warning("stage knn: faiss-cells reached recall %.4f < eval.knn_min_recall %.3f on %d rows; "
                        "rebuilding with pynndescent", graph.recall, min_recall, graph.recall_rows)
            choice = pynndescent_choice(n, f"recall of faiss-cells {graph.recall:.4f} < {min_recall}")
            graph = _build(arr, n_neighbors, metric, choice, seed, cores, progress, use_gpu, kw)
            graph.recall = graph_recall(arr, graph, sample=recall_sample, seed=seed or 0)
            below = graph.recall < min_recall
        if below and choice.builder == "pynndescent" and choice.widen == 1:
            # a wider search is the cheap repair: at 1,281,167 x 256 (1000 near-isotropic classes) umap-learn's
            # parameters reached recall .85 in ~400 s, 2k neighbours trimmed to k .98 in ~310 s, while the faiss
            # IVF rebuild took ~12 min (2 loaded cores)
            log.warning("stage knn: pynndescent reached recall %.4f < eval.knn_min_recall %.3f on %d rows; "
                        "rebuilding with 2x the neighbours", graph.recall, min_recall, graph.recall_rows)
            choice = GraphChoice("pynndescent", False, f"recall at k {graph.recall:.4f} < {min_recall}", widen=2)
            graph = _build(arr, n_neighbors, metric, choice, seed, cores, progress, use_gpu, kw,
                           init_graph=graph.indices)
            graph.recall = graph_recall(arr, graph, sample=recall_sample, seed=seed or 0)
            below = graph.recall < min_recall
        if below and choice.builder not in ("faiss-exact", "sklearn") and backends.faiss_available():
            # exact while it costs at most ~16x the rule's break-even work, IVF (recall ~.999 on embeddings) beyond
            fallback = "faiss-exact" if n <= 4 * exact_max_rows(dim, cores) else "faiss-ivf"
            log.warning("stage knn: %s reached recall %.4f < eval.knn_min_recall %.3f on %d rows; rebuilding "
                        "with %s", choice.backend, graph.recall, min_recall, graph.recall_rows, fallback)
            choice = GraphChoice(fallback, gpu, f"recall of {choice.builder} {graph.recall:.4f} < {min_recall}")
            graph = _build(arr, n_neighbors, metric, choice, seed, cores, progress, use_gpu, kw)
            graph.recall = graph_recall(arr, graph, sample=recall_sample, seed=seed or 0)
            graph.recall_rows = min(recall_sample, n)
    graph.choice = choice
    graph.build_seconds = seconds
    return graph


def _build(arr: np.ndarray, n_neighbors: int, metric: str, choice: GraphChoice, seed: int | None, cores: int,
           progress: bool, use_gpu: bool | None, kw: dict[str, Any],
           init_graph: np.ndarray | None = None) -> KNNResult:
    """Run one builder; return the graph in :func:`knn_graph`'s layout. ``init_graph``: pynndescent only,
    a graph to continue NN-descent from."""
    n = arr.shape[0]
    backends.log_backend("knn", choice.backend, f"N={n}, d={arr.shape[1]}, k={n_neighbors}, metric={metric}; "
                         f"{choice.reason}")
    if choice.builder == "pynndescent":
        _check_finite_rows(arr, "X")
        ids, dists = _pynndescent_graph(arr, n_neighbors * choice.widen, metric, seed, cores, progress,
                                        init_graph=init_graph)
        dists, ids = _self_first(dists, ids, 0.0)
        dists, ids = dists[:, :n_neighbors], ids[:, :n_neighbors]
    elif choice.builder == "faiss-cells":
        from nrcc_scale.cluster.knn_cells import cell_knn

        data = _prepare(arr, metric, "X")
        dists, ids = cell_knn(data, n_neighbors, metric, seed=seed or 0, threads=cores, progress=progress)
        del data
        dists, ids = _self_first(dists, ids.astype(np.int32), 0.0)
    elif choice.builder == "faiss-hnsw":
        data = _prepare(arr, metric, "X")
        scores, ids = _hnsw_graph(data, n_neighbors, metric, kw.get("chunk_size", 65536), progress)
        del data
        if metric == "cosine":
            dists = np.maximum(1.0 - scores, 0.0, dtype=np.float32)
        else:
            dists = np.sqrt(np.maximum(scores, 0.0)).astype(np.float32)
        dists, ids = _self_first(dists, ids.astype(np.int32), 0.0)
    else:
        limit = {"faiss-exact": n + 1, "faiss-ivf": 0, "sklearn": n + 1}[choice.builder]
        gpu_flag = use_gpu if choice.gpu else False
        res = knn_search(arr, None, n_neighbors - 1, metric=metric, exclude_self=True, exact_limit=limit,
                         use_gpu=gpu_flag, progress=progress, seed=seed or 0, **kw)
        self_col = np.arange(n, dtype=np.int32)[:, None]
        ids = np.hstack([self_col, res.indices.astype(np.int32)])
        dists = np.hstack([np.zeros((n, 1), np.float32), res.distances])
    dists = np.ascontiguousarray(dists, dtype=np.float32)
    if metric == "cosine":
        dists = np.maximum(dists, 0.0)
    sims = (1.0 - dists).astype(np.float32) if metric == "cosine" else None
    return KNNResult(np.ascontiguousarray(ids, dtype=np.int32), dists, sims, choice.backend, metric)


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
