"""kNN graph scaling: faiss (exact and IVF, as used by ``nrcc_scale.cluster.knn``) vs scikit-learn.

    python benchmarks/knn_scaling.py [--quick] [--json results/knn_scaling.json] [--budget SECONDS]

Task: the k = 10 nearest neighbours (self excluded, cosine) of every row of N L2-normalised 256-d
embeddings - the graph UMAP needs. N = 10^4, 10^5 (``--quick``) and 10^6 (full mode).

Data: synthetic "learned embeddings": N // 1000 clusters (10 to 1000), each a centre on the sphere plus a
Gaussian in its own random 32-d subspace with a decaying spectrum (scale 2/i for the i-th direction) and
isotropic noise, then normalised. Nearest-neighbour cosine similarities come out at ~0.85, and almost all
neighbours share the cluster, as with a trained encoder. (Uniform random vectors would be the worst case
for IVF and nothing like an embedding.)

Methods, each timed as ``build`` (fit / train + add) plus the search of all N rows as queries:

* ``faiss exact``   - ``IndexFlatIP`` (what ``knn_search`` uses up to ``exact_limit`` = 2·10^5 rows);
* ``faiss ivf``     - ``IndexIVFFlat`` with the module's defaults (nlist ~ 4·sqrt(N), nprobe =
                      max(16, ceil(sqrt(nlist) / 2))), what ``knn_search`` uses beyond ``exact_limit``;
* ``sklearn brute`` - ``NearestNeighbors(algorithm="brute", metric="euclidean")`` on the normalised rows:
                      scikit-learn's fastest exact configuration (same neighbours as cosine; its
                      ``metric="cosine"`` brute path is ~3x slower);
* ``sklearn ball_tree`` - tree search, up to 10^5 rows (10^4 with ``--quick``); in 256-d it degenerates to
                      far worse than brute force.

Every method runs on all :func:`backends.cpu_threads` cores. Searching all N queries is linear in the
number of queries, so where that would exceed ``--budget`` seconds per method, a prefix of the (shuffled)
rows - at least 4096, so that the BLAS methods run at full batch efficiency - is searched and the time is
scaled to N queries; ``queries`` shows how many rows were actually timed.
``speedup`` = sklearn brute time / this method's time at the same N; ``recall@10`` is measured against the
exact faiss neighbours of up to 2000 query rows. ``pipeline`` marks the faiss index ``knn_search`` picks.
The faiss rows call the module's own index builder and chunked search (``knn._faiss_index``,
``knn._search_chunked``) so that build and search can be timed apart.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _common import parse_args, print_table, write_json

from nrcc_scale.cluster import backends
from nrcc_scale.cluster.knn import _faiss_index, _search_chunked, l2_normalize, plan_search

K = 10
DIM = 256
GROUND_TRUTH_ROWS = 2000
EXACT_LIMIT = 200_000  # knn_search's default switch from exact to IVF


def clustered_embeddings(n: int, d: int = DIM, seed: int = 0, intrinsic: int = 32, spread: float = 2.0,
                         noise: float = 0.4) -> np.ndarray:
    """Normalised clustered embeddings with low intrinsic dimension (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n_clusters = int(np.clip(n // 1000, 10, 1000))
    centres = l2_normalize(rng.standard_normal((n_clusters, d)))
    scales = spread / np.arange(1, intrinsic + 1)
    counts = rng.multinomial(n, np.full(n_clusters, 1.0 / n_clusters))
    x = np.empty((n, d), dtype=np.float32)
    row = 0
    for c, m in enumerate(counts):
        basis = rng.standard_normal((intrinsic, d)) / math.sqrt(d)
        z = rng.standard_normal((m, intrinsic)) * scales
        x[row:row + m] = centres[c] + z @ basis + noise / math.sqrt(d) * rng.standard_normal((m, d))
        row += m
    return l2_normalize(x[rng.permutation(n)])


def time_method(build: Callable[[], Any], search: Callable[[Any, np.ndarray], np.ndarray], x: np.ndarray,
                budget_s: float, probe_rows: int) -> dict[str, Any]:
    """Build once, estimate the per-query cost on ``probe_rows`` queries (4096 for the BLAS methods: smaller
    batches would understate their throughput), then time as many query rows as fit in ``budget_s`` (all N
    if possible) and scale the search time to N queries."""
    n = x.shape[0]
    start = time.perf_counter()
    index = build()
    build_s = time.perf_counter() - start
    m = min(n, probe_rows)
    start = time.perf_counter()
    ids = search(index, x[:m])
    per_query = (time.perf_counter() - start) / m
    target = n if per_query * n <= budget_s else int(budget_s / per_query)
    if target > m:
        m = target
        start = time.perf_counter()
        ids = search(index, x[:m])
        per_query = (time.perf_counter() - start) / m
    return {"build_s": build_s, "search_s": per_query * n, "seconds": build_s + per_query * n, "queries": m,
            "ids": ids}


def _drop_first(ids: np.ndarray) -> np.ndarray:
    """Neighbours without the self-match (column 0 of a k+1 self-query on distinct points)."""
    return ids[:, 1:]


def faiss_runner(x: np.ndarray, exact_limit: int, budget_s: float, probe_rows: int) -> dict[str, Any]:
    plan = plan_search(x.shape[0], K + 1, exact_limit=exact_limit)
    out = time_method(lambda: _faiss_index(x, plan, "cosine", 0, 65536),
                      lambda index, q: _drop_first(_search_chunked(index, q, K + 1, 65536)[1]),
                      x, budget_s, probe_rows)
    out.update(nlist=plan.nlist or None, nprobe=plan.nprobe or None)
    return out


def sklearn_runner(x: np.ndarray, algorithm: str, budget_s: float, probe_rows: int) -> dict[str, Any]:
    from sklearn.neighbors import NearestNeighbors

    def build() -> Any:
        return NearestNeighbors(n_neighbors=K + 1, algorithm=algorithm, metric="euclidean",
                                n_jobs=backends.cpu_threads()).fit(x)

    return time_method(build, lambda nn, q: _drop_first(nn.kneighbors(q, return_distance=False)), x,
                       budget_s, probe_rows)


def recall(ids: np.ndarray, truth: np.ndarray) -> float:
    rows = min(ids.shape[0], truth.shape[0])
    hits = sum(len(set(a) & set(b)) for a, b in zip(ids[:rows], truth[:rows], strict=True))
    return hits / (rows * truth.shape[1])


def run_size(n: int, budget_s: float, probe_rows: int, ball_tree_max: int) -> list[dict[str, Any]]:
    start = time.perf_counter()
    x = clustered_embeddings(n)
    print(f"N={n}: data {time.perf_counter() - start:.1f} s", flush=True)
    results = {
        "faiss exact": faiss_runner(x, n, budget_s, probe_rows),
        "faiss ivf": faiss_runner(x, 0, budget_s, probe_rows),
        "sklearn brute": sklearn_runner(x, "brute", budget_s, probe_rows),
    }
    if n <= ball_tree_max:
        results["sklearn ball_tree"] = sklearn_runner(x, "ball_tree", budget_s, 20)
    gt_index = _faiss_index(x, plan_search(n, K + 1, exact_limit=n), "cosine", 0, 65536)
    truth = _drop_first(_search_chunked(gt_index, x[:GROUND_TRUTH_ROWS], K + 1, 65536)[1])
    pipeline = "faiss exact" if n <= EXACT_LIMIT else "faiss ivf"
    reference = results["sklearn brute"]["seconds"]
    rows = []
    for method, r in results.items():
        rows.append({"N": n, "method": method, "pipeline": method == pipeline, "seconds": r["seconds"],
                     "build_s": r["build_s"], "search_s": r["search_s"], "queries": r["queries"],
                     "speedup": reference / r["seconds"], "recall@10": recall(r["ids"], truth),
                     "nlist": r.get("nlist"), "nprobe": r.get("nprobe")})
        print(f"  {method}: {r['seconds']:.1f} s ({r['queries']} queries timed)", flush=True)
    return rows


def main() -> None:
    def add_arguments(p) -> None:
        p.add_argument("--budget", type=float, default=None, help="seconds of search timed per method and "
                       "size (default 5 with --quick, 60 otherwise); beyond it the search time is extrapolated "
                       "from a prefix")
        p.add_argument("--sizes", type=int, nargs="+", default=None, help="N values (default: 1e4 1e5 [1e6])")

    args = parse_args(__doc__.splitlines()[0], add_arguments)
    budget = args.budget if args.budget is not None else (5.0 if args.quick else 60.0)
    sizes = args.sizes or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    threads = backends.set_faiss_threads()
    print(f"k = {K}, d = {DIM}, {threads} CPU threads, budget {budget:g} s per method", flush=True)
    rows = [row for n in sizes
            for row in run_size(n, budget, 4096, ball_tree_max=10_000 if args.quick else 100_000)]
    columns = ["N", "method", "pipeline", "seconds", "build_s", "search_s", "queries", "speedup", "recall@10",
               "nlist", "nprobe"]
    print_table(rows, columns, title=f"kNN graph, k = {K}, cosine, d = {DIM} (seconds for all N queries)")
    if args.json:
        write_json(args.json, {"benchmark": "knn_scaling", "k": K, "dim": DIM, "budget_s": budget,
                               "threads": threads, "rows": rows})


if __name__ == "__main__":
    main()
