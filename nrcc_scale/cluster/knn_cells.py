"""The kNN graph by exact matrix products inside neighbouring fine cells ("faiss-cells", CPU).

Why this module exists
----------------------
Beyond ~10^5 rows exact search costs N^2·d, and the approximate alternatives each pay somewhere else on a
CPU: faiss IVF scans its lists one vector at a time (no BLAS; ~12 minutes at 1.28M x 256 on 2 cores),
pynndescent compiles with numba in every fresh process (~25 s) and, where every within-class neighbour is
nearly tied, needs twice the neighbours to reach the recall floor (~5 minutes at 1.28M). Embeddings that
cluster allow a cheaper exact-in-practice search: cut the rows into fine cells of ``rows_per_cell`` rows
(smaller than a cluster), and search each cell's rows exactly - one BLAS product - against the rows of the
``probe_cells`` cells that its rows lie closest to. The recall check that every graph gets
(``knn.graph_recall``) catches data where that misses, and ``knn_graph`` then falls back (knn.py's
"Recall floor").

How (every step costs O(N) at a fixed cell size, so the builder scales linearly)
--------------------------------------------------------------------------------
1. **Cells, two levels.** A k-means with C = sqrt(coarse_probe · F) coarse centres (F = N / rows_per_cell
   fine cells in all, C = 283 at 1.28M), trained on 256 rows per centre; then, inside each coarse cell (the
   rows whose nearest coarse centre it is), a k-means with (its rows / rows_per_cell) fine centres, trained
   on 32 rows per centre, all coarse cells side by side in the thread pool. 10 Lloyd rounds each: the
   cells only need to be compact, not converged. One flat k-means with F centres (the first version) costs
   N·F·d to assign, which grows as N^2 at a fixed cell size (10^4 centres at 1.28M), or as N^1.5 with cells
   of sqrt(N) rows (16x the time for 10x the rows, measured); two levels cost N·(C + coarse_probe·F/C)·d.
2. **Routing each row.** Each row is compared with the fine centres of ITS OWN ``coarse_probe`` (8) nearest
   coarse cells - one BLAS product per coarse cell over the rows that have it among theirs - and keeps its
   ``TOP_CENTRES`` nearest fine centres; the first is its cell. Where classes are near-isotropic in high
   dimension (``benchmarks/make_embeddings.py``), a coarse centre averages many classes and its signal for
   any one is weak: routing whole coarse cells (a cell's rows through the coarse cells nearest to that
   cell) scattered classes over dozens of fine cells (recall .45 at 128k x 1000 classes), and 3 coarse cells
   per row still left 12 % of rows in unrelated cells. Then the rows that fit their cell worst (the 10 % with
   the largest gap to their cell's median fit) are routed again through 8 x as many coarse cells and move
   where that finds a nearer centre (recall .988 -> .996 at 128k).
3. **Which cells to search.** Cells f and g are linked by how many rows have one as their cell and the
   other among their runners-up (both directions). Each cell searches itself and its ``probe_cells - 1``
   most-linked cells: the cells its rows actually lie on the border of. Ranking neighbours by centre
   distance instead (the first version) missed neighbours across elongated clusters: recall .947 at 10^6
   on ``benchmarks/knn_scaling.py``'s data, .996 with links.
4. **Search.** Rows sorted by fine cell, so that a cell is a contiguous block; per cell, one matrix product
   of its rows with its candidates' rows and a partial sort for the k best, in a thread pool (NumPy's BLAS
   and partition release the GIL); BLAS is held to one thread per worker so that the pool does not
   oversubscribe. Euclidean distances of the k found are recomputed from differences (the expansion
   |q|^2 + |c|^2 - 2 q.c cancels in float32 for close rows).

Cost: N·probe_cells·rows_per_cell·d multiply-adds for the search (2048 candidates a row at the defaults)
plus ~N·2·sqrt(coarse_probe·F)·d for the routing (566 centres a row at 1.28M; the one term that grows
faster than N, slowly); memory: one sorted float32 copy of X and (N, k) results. The name is kept from the
first version, which trained its cells with faiss; the builder now needs only NumPy.

Where cells miss: classes much smaller than a cell that are also near-isotropic (20-row classes in 64-d:
recall ~.6, ``tests/test_knn_cells.py``), and clusters larger than the 2048 candidates whose neighbours are
all nearly tied. The recall check reports it, and under "auto" pynndescent rebuilds the graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from scipy import sparse

from nrcc_scale.cluster import backends

__all__ = ["PROBE_CELLS", "ROWS_PER_CELL", "cell_knn", "coarse_cells_for"]

T = TypeVar("T")

#: Rows per fine cell: many more than k, few enough that 16 cells are a small candidate set.
ROWS_PER_CELL = 128
#: Fine cells searched per cell (its own included): 2048 candidates a row at the defaults.
PROBE_CELLS = 16
#: Coarse cells whose fine centres each row is compared with (its own included).
COARSE_PROBE = 8
#: Nearest fine centres kept per row: its cell and two runners-up, which link cells (module docstring, 3).
TOP_CENTRES = 3
#: Share of rows routed a second time, through REROUTE_WIDEN x coarse_probe coarse cells: those that fit
#: their cell worst (module docstring, 2).
REROUTE_FRACTION = 0.1
REROUTE_WIDEN = 8
#: k-means iterations and training rows per centre: the cells only need to be compact, not converged.
KMEANS_ITERATIONS = 10
TRAIN_ROWS_PER_CENTRE = 32
#: The coarse centres need many more: each must see every cluster it will hold several times, or rows of
#: one cluster scatter over many coarse cells (16 rows per centre at 128k x 1000 classes: a class over 29 cells).
COARSE_TRAIN_ROWS_PER_CENTRE = 256
#: Rows per BLAS product when rows are compared with centres: bounds the transient memory (products and
#: partition indices) at a few MB per thread however many rows are compared at once.
NEAREST_BLOCK_ROWS = 4096


def coarse_cells_for(n_fine: int, coarse_probe: int = COARSE_PROBE) -> int:
    """sqrt(coarse_probe · F): it minimises the assignment's C + coarse_probe · F / C centres per row."""
    return max(1, min(n_fine, int(round(math.sqrt(coarse_probe * n_fine)))))


def _kmeans_centres(x: np.ndarray, k: int, spherical: bool, seed: int,
                    rows_per_centre: int = TRAIN_ROWS_PER_CENTRE) -> np.ndarray:
    """Centres of a Lloyd k-means (KMEANS_ITERATIONS rounds) on at most ``rows_per_centre`` rows per centre.

    Written with NumPy rather than faiss: the fine level runs hundreds of small k-means side by side in the
    thread pool, where faiss's own OpenMP start-up per call cost more than the arithmetic (~0.1 s a call)."""
    rng = np.random.default_rng(seed)
    k = max(1, min(k, x.shape[0]))
    if x.shape[0] > rows_per_centre * k:
        x = x[np.sort(rng.choice(x.shape[0], rows_per_centre * k, replace=False))]
    centres = x[rng.choice(x.shape[0], k, replace=False)].astype(np.float32)
    for _ in range(KMEANS_ITERATIONS):
        nearest, score = _nearest(x, centres, 1, spherical, with_scores=True)
        nearest = nearest[:, 0]
        counts = np.bincount(nearest, minlength=k)
        filled = np.flatnonzero(counts)
        members = sparse.csr_matrix((np.ones(x.shape[0], np.float32), (nearest, np.arange(x.shape[0]))),
                                    shape=(k, x.shape[0]))
        centres[filled] = (members @ x)[filled] / counts[filled, None]
        empty = np.flatnonzero(counts == 0)
        if empty.size:  # re-seed an empty centre on the row that its centre fits worst
            centres[empty] = x[np.argsort(score[:, 0])[::-1][:empty.size]]
        if spherical:
            centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    return centres


def _nearest(rows: np.ndarray, centres: np.ndarray, count: int, inner: bool, with_scores: bool = False) -> Any:
    """Indices of each row's ``count`` nearest ``centres``, nearest first (one BLAS product per block of
    NEAREST_BLOCK_ROWS rows, so that the products and partition indices stay small); with ``with_scores``
    also their scores (ascending: -similarity, or squared distance less |row|^2)."""
    count = min(count, centres.shape[0])
    sq = None if inner else np.einsum("ij,ij->i", centres, centres)[None, :]
    top = np.empty((rows.shape[0], count), dtype=np.int64)
    best = np.empty((rows.shape[0], count), dtype=np.float32)
    for start in range(0, rows.shape[0], NEAREST_BLOCK_ROWS):
        block = slice(start, min(rows.shape[0], start + NEAREST_BLOCK_ROWS))
        prod = rows[block] @ centres.T
        score = -prod if inner else sq - 2.0 * prod
        found = np.argpartition(score, count - 1, axis=1)[:, :count] if count < centres.shape[0] else \
            np.broadcast_to(np.arange(centres.shape[0]), score.shape)
        picked = np.take_along_axis(score, found, axis=1)
        order = np.argsort(picked, axis=1, kind="stable")
        top[block] = np.take_along_axis(found, order, axis=1)
        best[block] = np.take_along_axis(picked, order, axis=1)
    return (top, best) if with_scores else top


def _group(keys: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, bounds): ``order`` lists the positions of ``keys`` group by group (stable), group g being
    ``order[bounds[g]:bounds[g + 1]]``. Keys below 2^15 sort as int16, which NumPy radix-sorts (~5x faster
    than its timsort of int64 at 10^7 keys)."""
    small = keys.astype(np.int16) if n_groups < 2**15 else keys
    order = np.argsort(small, kind="stable")
    return order, np.searchsorted(keys[order], np.arange(n_groups + 1))


def _run_parallel(fn: Callable[[T], Any], items: Iterable[T], total: int, workers: int, desc: str | None) -> None:
    """``fn`` over ``items`` in a thread pool with BLAS held to one thread per worker; a bar when ``desc``."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=workers) as pool:
        done: Any = pool.map(fn, items)
        if desc:
            from tqdm.auto import tqdm

            done = tqdm(done, total=total, desc=desc, unit="cell", mininterval=2.0)
        for _ in done:
            pass


def _cells_with_runners_up(data: np.ndarray, rows_per_cell: int, coarse_probe: int, inner: bool, seed: int,
                           workers: int, progress: bool) -> tuple[int, np.ndarray]:
    """(F, each row's TOP_CENTRES nearest fine centres as an (n, TOP_CENTRES) int array, its cell first)."""
    n = data.shape[0]
    n_fine = max(1, n // rows_per_cell)
    coarse = _kmeans_centres(data, coarse_cells_for(n_fine, coarse_probe), inner, seed, COARSE_TRAIN_ROWS_PER_CENTRE)
    probe = min(coarse_probe, coarse.shape[0])
    coarse_top = np.empty((n, probe), dtype=np.int64)

    def assign_coarse(block: slice) -> None:
        coarse_top[block] = _nearest(data[block], coarse, probe, inner)

    blocks = [slice(i, min(n, i + 65536)) for i in range(0, n, 65536)]
    _run_parallel(assign_coarse, blocks, len(blocks), workers, None)
    # fine centres: a k-means inside each coarse cell, on the rows whose nearest coarse centre it is
    members, bounds = _group(coarse_top[:, 0], coarse.shape[0])
    fine_parts: list[np.ndarray] = [np.empty((0, data.shape[1]), np.float32)] * coarse.shape[0]

    def train_fine(c: int) -> None:
        size = bounds[c + 1] - bounds[c]
        if size:
            fine_parts[c] = _kmeans_centres(data[members[bounds[c]:bounds[c + 1]]],
                                            max(1, int(round(size / rows_per_cell))), inner, seed + 1 + c)

    _run_parallel(train_fine, range(coarse.shape[0]), coarse.shape[0], workers, None)
    first_fine = np.concatenate([[0], np.cumsum([part.shape[0] for part in fine_parts])])
    fine = np.concatenate(fine_parts)
    m = min(TOP_CENTRES, fine.shape[0])
    top, fit = _route(data, np.arange(n), coarse_top, fine, first_fine, m, inner, workers, progress)
    # second chance for the rows that fit their cell worst (a row routed to the wrong coarse cells lands in an
    # unrelated fine cell: at 128k x 1000 isotropic classes 4.5 % of rows, similarity .43 to their cell's
    # centre against .58 to their class's): route them again through REROUTE_WIDEN x as many coarse cells.
    # ``fit`` lacks |row|^2 for Euclidean rows; that is added to compare rows, not to compare centres.
    gap = fit if inner else fit + np.einsum("ij,ij->i", data, data)
    typical = np.zeros(fine.shape[0], dtype=np.float64)
    order, starts = _group(top[:, 0], fine.shape[0])
    for f in np.flatnonzero(np.diff(starts)):
        typical[f] = np.median(gap[order[starts[f]:starts[f + 1]]])
    gap = gap - typical[top[:, 0]]
    count = int(REROUTE_FRACTION * n)
    worst = np.argpartition(gap, n - count)[n - count:] if 0 < count < n else np.arange(n)[:count]
    wide = min(REROUTE_WIDEN * coarse_probe, coarse.shape[0])
    if worst.size and wide > probe:
        again, again_fit = _route(data, worst, _nearest(data[worst], coarse, wide, inner), fine, first_fine, m,
                                  inner, workers, False)
        better = again_fit < fit[worst]
        top[worst[better]] = again[better]
    return fine.shape[0], top


def _route(data: np.ndarray, who: np.ndarray, coarse_top: np.ndarray, fine: np.ndarray, first_fine: np.ndarray,
           m: int, inner: bool, workers: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """The ``m`` nearest fine centres of rows ``who`` among the fine centres of their coarse cells
    ``coarse_top`` (one row per row of ``who``), and the nearest one's score; one BLAS product per coarse
    cell, over the rows that have it among theirs (per row, not per coarse cell: a row whose nearest coarse
    centre is not its cluster's still meets its cluster's fine centres)."""
    n, probe = coarse_top.shape
    best_id = np.full((n, probe, m), -1, dtype=np.int32)  # fine-centre ids; int32 halves the largest array
    best_score = np.full((n, probe, m), np.inf, dtype=np.float32)
    slots, slot_bounds = _group(coarse_top.ravel(), len(first_fine) - 1)

    def assign_fine(c: int) -> None:
        row_slot = slots[slot_bounds[c]:slot_bounds[c + 1]]
        ids = np.arange(first_fine[c], first_fine[c + 1])
        if row_slot.size == 0 or ids.size == 0:
            return
        row, j = np.divmod(row_slot, probe)
        count = min(m, ids.size)
        found, score = _nearest(data[who[row]], fine[ids], count, inner, with_scores=True)
        best_id[row, j, :count] = ids[found]
        best_score[row, j, :count] = score

    _run_parallel(assign_fine, range(len(first_fine) - 1), len(first_fine) - 1, workers,
                  "kNN cells: assign" if progress else None)
    best_id, best_score = best_id.reshape(n, -1), best_score.reshape(n, -1)
    pick = np.argsort(best_score, axis=1, kind="stable")[:, :m]
    return (np.take_along_axis(best_id, pick, axis=1).astype(np.int64),
            np.take_along_axis(best_score, pick[:, :1], axis=1)[:, 0])


def _linked_cells(top: np.ndarray, n_fine: int, probe_cells: int) -> list[np.ndarray]:
    """Per fine cell: itself, then up to ``probe_cells - 1`` cells most linked to it by rows that have one as
    their cell and the other as a runner-up (module docstring, 3)."""
    cell = top[:, 0]
    pairs = [np.stack([cell, top[:, j]], axis=1) for j in range(1, top.shape[1])]
    if not pairs:
        return [np.array([f]) for f in range(n_fine)]
    links = np.concatenate(pairs + [p[:, ::-1] for p in pairs])
    links = links[links[:, 0] != links[:, 1]]
    keys, counts = np.unique(links[:, 0] * n_fine + links[:, 1], return_counts=True)
    src, dst = keys // n_fine, keys % n_fine
    order = np.lexsort((-counts, src))  # by cell, then most links first
    src, dst = src[order], dst[order]
    starts = np.searchsorted(src, np.arange(n_fine + 1))
    return [np.concatenate([[f], dst[starts[f]:starts[f + 1]][:probe_cells - 1]]) for f in range(n_fine)]


def cell_knn(data: np.ndarray, k: int, metric: str, *, seed: int = 0, rows_per_cell: int = ROWS_PER_CELL,
             probe_cells: int = PROBE_CELLS, coarse_probe: int = COARSE_PROBE, threads: int | None = None,
             progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of every row of ``data`` (itself included where it is among them) within its
    cell's ``probe_cells`` linked cells. ``data``: float32 C-contiguous, L2-normalised for
    ``metric="cosine"``. Returns (distances float32, ids int64), each (n, k), nearest first; cosine
    distances are 1 - similarity, Euclidean distances are not squared."""
    if rows_per_cell < 1 or probe_cells < 1 or coarse_probe < 1:
        raise ValueError(f"rows_per_cell, probe_cells and coarse_probe must be >= 1, got {rows_per_cell}, "
                         f"{probe_cells}, {coarse_probe}")
    n = data.shape[0]
    inner = metric == "cosine"
    workers = threads or backends.cpu_threads()
    n_fine, top = _cells_with_runners_up(data, rows_per_cell, coarse_probe, inner, seed, workers, progress)
    near = _linked_cells(top, n_fine, probe_cells)
    cell = top[:, 0]
    del top
    order, bounds = _group(cell, n_fine)
    rows = data[order]
    sq = None if inner else np.einsum("ij,ij->i", rows, rows)
    k_eff = min(k, n)
    dist = np.empty((n, k_eff), dtype=np.float32)
    ids = np.empty((n, k_eff), dtype=np.int64)

    def search(f: int) -> None:
        q0, q1 = bounds[f], bounds[f + 1]
        if q1 == q0:
            return
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
        if kk < k_eff:  # fewer candidates than k (tiny inputs): pad with the farthest found
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

    _run_parallel(search, range(n_fine), n_fine, workers, "kNN cells: search" if progress else None)
    out_ids = np.empty_like(ids)
    out_dist = np.empty_like(dist)
    out_ids[order] = order[ids]
    out_dist[order] = dist
    return out_dist, out_ids
