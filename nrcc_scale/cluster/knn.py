"""k-nearest-neighbour graphs (stage 2 of the evaluation) by the fastest builder that meets a recall floor.
Over 400 lines because about a third is the measured rule's documentation, kept beside the rule.

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
* CPU: faiss exact while ``N <= exact_max_rows(d, cores) = sqrt(2e11 · cores / d)`` (d = 256: 4.0·10^4
  rows on 2 cores, 1.6·10^5 on 32; d = 64: 7.9·10^4 on 2 cores), **faiss-cells** beyond
  (:mod:`nrcc_scale.cluster.knn_cells`: exact BLAS products between each fine cell of 128 rows and the 16
  cells its rows border on, from a two-level k-means, so the cost grows linearly with N),
  and where its recall is below the floor **pynndescent** - the builder umap-learn itself uses, run with
  umap-learn's own parameters (n_trees, n_iters, max_candidates=60, low_memory); pynndescent is also the
  builder without faiss. Exact search costs N^2·d / cores, faiss-cells ~N·2048·d / cores, so the break-even
  N grows as sqrt(cores / d). Measured on a quiet machine (``benchmarks/knn_scaling.py --grid 10000:64
  10000:256 10000:1024 100000:256``, docs/benchmarks/knn_scaling.json, 2 cores): 10^4 x 256 - exact 0.36 s,
  cells 0.35 s (recall .9997), pynndescent 0.24 s (compiled); 10^5 x 256 - exact 23.2 s, cells 4.3 s
  (.9996), pynndescent 4.4 s (.995, compiled), IVF 9.6 s, HNSW 11.7 s (.960); 10^6 x 256 (every builder on
  the whole graph) - cells 43 s (.996), pynndescent 83 s (.997), HNSW 393 s (.766), IVF 669 s (.998),
  exact 2405 s, scikit-learn brute 9446 s extrapolated from 4096 queries. The measured break-even with
  cells is ~2·10^4 rows at d = 256 on 2 cores; the rule keeps exact to twice that, where both take ~1 s,
  because exact needs no recall floor and cannot fall back to pynndescent's ~25 s numba compilation.
  The figures below predate faiss-cells (pynndescent was the rule beyond the break-even then).
* Measurements behind the rule (2 cores, k = 10, cosine, 256-d, whole graph):
  - issue 17's figures on this machine: 10^5 rows - faiss exact 41 s, pynndescent 39 s (its numba
    compilation included): even, hence the first break-even constant (1.3e12); 10^6 rows - faiss IVF (nlist 4000,
    nprobe 32) 327 s at recall .9998, pynndescent 64 s at recall .995: **pynndescent wins 5x**.
  - an earlier run of the same grid (the machine was loaded by other work, so absolute times are pessimistic), whole
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

The faiss search itself (exact / IVF planning, GPU limits, the scikit-learn fallback, conventions for
distances and similarities) is :mod:`nrcc_scale.cluster.faiss_search`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from nrcc_scale.cluster import backends
from nrcc_scale.cluster.faiss_search import (
    GPU_MAX_K,
    METRICS,
    KNNResult,
    SearchPlan,
    check_metric,
    default_nlist,
    default_nprobe,
    drop_self,
    knn_search,
    l2_normalize,
    plan_search,
    prepare_rows,
    progress_bar,
    search_chunked,
    weighted_knn_accuracy,
)

# the search names are re-exported: callers import the kNN API from this one module
__all__ = [
    "GPU_MAX_K",
    "GRAPH_BUILDERS",
    "METRICS",
    "GraphChoice",
    "choose_graph_builder",
    "exact_max_rows",
    "graph_recall",
    "build_graph",
    "KNNResult",
    "SearchPlan",
    "default_nlist",
    "default_nprobe",
    "knn_graph",
    "knn_search",
    "l2_normalize",
    "plan_search",
    "pynndescent_choice",
    "weighted_knn_accuracy",
]

log = logging.getLogger("nrcc_scale.cluster")

# ------------------------------------------------------------------------------------------ graph builders
#: The kNN-graph builders ``knn_graph`` can run (``eval.knn_backend``); "auto" picks by :func:`choose_graph_builder`.
GRAPH_BUILDERS = ("faiss-exact", "faiss-cells", "faiss-ivf", "faiss-hnsw", "pynndescent", "sklearn")
#: Exact search does N^2·d multiply-adds; it is the CPU builder while N^2·d / cores stays below this
#: (benchmarks/knn_scaling.py, see the module docstring: on 2 cores at d = 256 the break-even with faiss-cells
#: is ~2·10^4 rows, and the rule keeps exact to 4·10^4).
EXACT_WORK_PER_CORE = 2e11
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
    for start in progress_bar(range(0, data.shape[0], chunk_size), progress, "kNN hnsw add", chunk_size):
        index.add(data[start:start + chunk_size])
    index.hnsw.efSearch = max(HNSW_EF_SEARCH, 2 * k)
    return search_chunked(index, data, k, chunk_size, progress=progress, desc="kNN hnsw search")


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
    values, others = drop_self(scores_or_dists, ids)
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
    check_metric(metric)
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}")
    arr = np.asarray(X)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"X must be a non-empty 2-D array (n, d), got shape {arr.shape}")
    n, dim = arr.shape
    if n_neighbors > n:
        raise ValueError(f"n_neighbors={n_neighbors} exceeds the number of samples {n}")
    if n_neighbors == 1:
        prepare_rows(X, metric, "X")  # same validation as the searched case
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
    graph = build_graph(arr, n_neighbors, metric, choice, seed, cores, progress, use_gpu, kw)
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
            graph = build_graph(arr, n_neighbors, metric, choice, seed, cores, progress, use_gpu, kw)
            graph.recall = graph_recall(arr, graph, sample=recall_sample, seed=seed or 0)
            below = graph.recall < min_recall
        if below and choice.builder == "pynndescent" and choice.widen == 1:
            # a wider search is the cheap repair: at 1,281,167 x 256 (1000 near-isotropic classes) umap-learn's
            # parameters reached recall .85 in ~400 s, 2k neighbours trimmed to k .98 in ~310 s, while the faiss
            # IVF rebuild took ~12 min (2 loaded cores)
            log.warning("stage knn: pynndescent reached recall %.4f < eval.knn_min_recall %.3f on %d rows; "
                        "rebuilding with 2x the neighbours", graph.recall, min_recall, graph.recall_rows)
            choice = GraphChoice("pynndescent", False, f"recall at k {graph.recall:.4f} < {min_recall}", widen=2)
            graph = build_graph(arr, n_neighbors, metric, choice, seed, cores, progress, use_gpu, kw,
                           init_graph=graph.indices)
            graph.recall = graph_recall(arr, graph, sample=recall_sample, seed=seed or 0)
            below = graph.recall < min_recall
        if below and choice.builder not in ("faiss-exact", "sklearn") and backends.faiss_available():
            # exact while it costs at most ~16x the rule's break-even work, IVF (recall ~.999 on embeddings) beyond
            fallback = "faiss-exact" if n <= 4 * exact_max_rows(dim, cores) else "faiss-ivf"
            log.warning("stage knn: %s reached recall %.4f < eval.knn_min_recall %.3f on %d rows; rebuilding "
                        "with %s", choice.backend, graph.recall, min_recall, graph.recall_rows, fallback)
            choice = GraphChoice(fallback, gpu, f"recall of {choice.builder} {graph.recall:.4f} < {min_recall}")
            graph = build_graph(arr, n_neighbors, metric, choice, seed, cores, progress, use_gpu, kw)
            graph.recall = graph_recall(arr, graph, sample=recall_sample, seed=seed or 0)
            graph.recall_rows = min(recall_sample, n)
    graph.choice = choice
    graph.build_seconds = seconds
    return graph


def build_graph(arr: np.ndarray, n_neighbors: int, metric: str, choice: GraphChoice, seed: int | None, cores: int,
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

        data = prepare_rows(arr, metric, "X")
        dists, ids = cell_knn(data, n_neighbors, metric, seed=seed or 0, threads=cores, progress=progress)
        del data
        dists, ids = _self_first(dists, ids.astype(np.int32), 0.0)
    elif choice.builder == "faiss-hnsw":
        data = prepare_rows(arr, metric, "X")
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
