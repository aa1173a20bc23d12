"""The kNN graph by exact matrix products inside neighbouring fine cells ("faiss-cells", CPU).

Why this module exists
----------------------
Beyond ~10^5 rows exact search costs N^2·d, and the approximate alternatives each pay somewhere else on a
CPU: faiss IVF scans its lists one vector at a time (no BLAS; ~12 minutes at 1.28M x 256 on 2 cores),
pynndescent compiles with numba in every fresh process (~25 s) and, where every within-class neighbour is
nearly tied, needs twice the neighbours to reach the recall floor (~5 minutes at 1.28M). Embeddings that
cluster allow a cheaper exact-in-practice search: cut the rows into fine cells of ~``rows_per_cell`` rows
(much smaller than a cluster), and search each cell's rows exactly - one BLAS product - against the rows of
the ``probe_cells`` cells whose centres are nearest to its centre (its own included). A row's true
neighbours sit in its own cell or an adjacent one, so recall is ~1 where cells are finer than the clusters;
the recall check that every graph gets (``knn.graph_recall``) catches data where that does not hold, and
``knn_graph`` then falls back (knn.py's "Recall floor").

How
---
1. One faiss k-means (10 iterations on 16 rows per centre, spherical for cosine) with F = N / rows_per_cell
   centres, ``rows_per_cell = max(100, sqrt(N / probe_cells))`` (:func:`rows_per_cell_for`: it balances the
   N^2·d / rows_per_cell of assigning rows to centres against the N·probe_cells·rows_per_cell·d of the
   search; 127 rows at 128k, 400 at 1.28M). Two levels (coarse cells split again) would be cheaper but fail
   where a coarse cell is larger than a cluster: a cluster cut by a coarse boundary gets fine cells whose
   centres are not each other's nearest (recall .65 at 128k x 256 with 1000 classes).
2. Each fine centre's ``probe_cells`` nearest fine centres (itself first), by exact search over the F centres.
3. Rows sorted by fine cell, so that a cell is a contiguous block; per cell, one matrix product of its rows
   with its candidates' rows and a partial sort for the k best, in a thread pool (NumPy's BLAS and
   partition release the GIL); BLAS is held to one thread per worker so that the pool does not oversubscribe.
   Euclidean distances of the k found are recomputed from differences (the expansion |q|^2 + |c|^2 - 2 q.c
   cancels in float32 for close rows).

Measured (2 cores, shared machine, ``benchmarks/eval_end_to_end.py`` data, recall on 1000 rows):
128,117 x 256, 1000 classes: 7.3 s, recall .9999 (pynndescent 40 s with its compilation, .996);
1,281,167 x 256: 90 s, recall 1.0000 (pynndescent with 2k neighbours 301-318 s, .982). Where rows do not
cluster finely the cells miss neighbours: the same 128k classes at noise 1.6 gave .87 (32 probed cells:
.93), and ``knn_graph`` falls back to pynndescent (.989 there).

Cost: N·(probe_cells·rows_per_cell)·d multiply-adds for the search (800-3200 candidates a row, 1/400 of exact
search at 1.28M) plus N·F·d for the assignment; memory: one sorted float32 copy of X and (N, k) results.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from nrcc_scale.cluster import backends

__all__ = ["PROBE_CELLS", "cell_knn", "rows_per_cell_for"]

#: Fewest rows per fine cell: many more than k (module docstring, "Cost", for the rule above it).
MIN_ROWS_PER_CELL = 100
#: Fine cells searched per cell (its own included): 800 candidates a row at the defaults.
PROBE_CELLS = 8
#: k-means iterations and training rows per centre: the cells only need to be compact, not converged.
KMEANS_ITERATIONS = 10
TRAIN_ROWS_PER_CELL = 16


def _kmeans(x: np.ndarray, k: int, spherical: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(centres, nearest-centre id per row) of a faiss k-means trained on at most 64 rows per centre."""
    faiss = backends.faiss_module()
    k = max(1, min(k, x.shape[0]))
    km = faiss.Kmeans(x.shape[1], k, niter=KMEANS_ITERATIONS, spherical=spherical, seed=seed,
                      max_points_per_centroid=TRAIN_ROWS_PER_CELL, min_points_per_centroid=1, verbose=False)
    km.train(x)
    _, assigned = km.index.search(x, 1)
    return km.centroids, assigned.ravel()


def fine_cells(x: np.ndarray, rows_per_cell: int, spherical: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(F fine centres, fine cell id per row) of one k-means with F = N / rows_per_cell centres."""
    return _kmeans(x, max(1, x.shape[0] // rows_per_cell), spherical, seed)


def _nearest_cells(centres: np.ndarray, probe: int, inner: bool) -> np.ndarray:
    """Each centre's ``probe`` nearest centres (itself first), by exact faiss search."""
    faiss = backends.faiss_module()
    index = faiss.IndexFlatIP(centres.shape[1]) if inner else faiss.IndexFlatL2(centres.shape[1])
    index.add(centres)
    _, near = index.search(centres, min(probe, centres.shape[0]))
    near[:, 0] = np.arange(centres.shape[0])  # its own cell, whatever ties among equal centres say
    return near


def rows_per_cell_for(n: int, probe_cells: int = PROBE_CELLS) -> int:
    """sqrt(N / probe_cells), at least MIN_ROWS_PER_CELL: it balances the assignment to the cells
    (N^2·d / rows_per_cell) against the search (N·probe_cells·rows_per_cell·d)."""
    return max(MIN_ROWS_PER_CELL, int(round(math.sqrt(n / probe_cells))))


def cell_knn(data: np.ndarray, k: int, metric: str, *, seed: int = 0, rows_per_cell: int | None = None,
             probe_cells: int = PROBE_CELLS, threads: int | None = None,
             progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of every row of ``data`` (itself included where it is among them) within the
    ``probe_cells`` fine cells nearest its own. ``data``: float32 C-contiguous, L2-normalised for
    ``metric="cosine"``. Returns (distances float32, ids int64), each (n, k), nearest first; cosine
    distances are 1 - similarity, Euclidean distances are not squared."""
    if (rows_per_cell is not None and rows_per_cell < 1) or probe_cells < 1:
        raise ValueError(f"rows_per_cell and probe_cells must be >= 1, got {rows_per_cell}, {probe_cells}")
    if rows_per_cell is None:
        rows_per_cell = rows_per_cell_for(data.shape[0], probe_cells)
    n = data.shape[0]
    inner = metric == "cosine"
    backends.set_faiss_threads()
    centres, cell = fine_cells(data, rows_per_cell, inner, seed)
    near = _nearest_cells(centres, probe_cells, inner)
    order = np.argsort(cell, kind="stable")
    bounds = np.searchsorted(cell[order], np.arange(centres.shape[0] + 1))
    rows = data[order]
    sq = None if inner else np.einsum("ij,ij->i", rows, rows)
    k_eff = min(k, n)
    dist = np.empty((n, k_eff), dtype=np.float32)
    ids = np.empty((n, k_eff), dtype=np.int64)

    def search(f: int) -> int:
        q0, q1 = bounds[f], bounds[f + 1]
        if q1 == q0:
            return 0
        cand = np.concatenate([np.arange(bounds[j], bounds[j + 1]) for j in near[f]])
        prod = rows[q0:q1] @ rows[cand].T
        # ascending distance: -similarity for cosine, squared L2 (|c|^2 - 2 q.c; |q|^2 is constant per row)
        score = -prod if inner else sq[cand][None, :] - 2.0 * prod
        kk = min(k_eff, cand.size)
        top = np.argpartition(score, kk - 1, axis=1)[:, :kk] if kk < cand.size else \
            np.broadcast_to(np.arange(cand.size), (q1 - q0, cand.size)).copy()
        part = np.take_along_axis(score, top, axis=1)
        sort = np.argsort(part, axis=1, kind="stable")
        top, part = np.take_along_axis(top, sort, axis=1), np.take_along_axis(part, sort, axis=1)
        if kk < k_eff:  # fewer candidates than k: pad with the farthest found (never happens at the defaults)
            top = np.pad(top, ((0, 0), (0, k_eff - kk)), mode="edge")
            part = np.pad(part, ((0, 0), (0, k_eff - kk)), mode="edge")
        ids[q0:q1] = cand[top]
        if inner:
            dist[q0:q1] = np.maximum(1.0 + part, 0.0)
        else:  # recomputed from differences: |q|^2 + |c|^2 - 2 q.c cancels badly in float32 for close rows
            diff = rows[cand[top]] - rows[q0:q1, None, :]
            exact = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
            resort = np.argsort(exact, axis=1, kind="stable")
            dist[q0:q1] = np.take_along_axis(exact, resort, axis=1)
            ids[q0:q1] = np.take_along_axis(ids[q0:q1], resort, axis=1)
        return q1 - q0

    workers = threads or backends.cpu_threads()
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=workers) as pool:
        done: Any = pool.map(search, range(centres.shape[0]))
        if progress:
            from tqdm.auto import tqdm

            done = tqdm(done, total=centres.shape[0], desc="kNN cells", unit="cell", mininterval=2.0)
        for _ in done:
            pass
    out_ids = np.empty_like(ids)
    out_dist = np.empty_like(dist)
    out_ids[order] = order[ids]
    out_dist[order] = dist
    return out_dist, out_ids
