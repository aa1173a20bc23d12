"""kNN graph builders on the CPU: faiss exact / cells / IVF / HNSW vs pynndescent (what umap-learn builds by itself)
vs scikit-learn brute force - the measurements behind ``nrcc_scale.cluster.knn.choose_graph_builder``.

    python benchmarks/knn_scaling.py [--quick] [--json docs/benchmarks/knn_scaling.json]
    python benchmarks/knn_scaling.py --grid 10000:64 100000:256 1000000:256

Task: the graph UMAP needs - each row's 10 nearest rows (itself first), cosine - of N clustered unit
vectors in d dimensions (``clustered_embeddings``: N // 1000 clusters, 10 to 1000, each a centre on the
sphere plus a Gaussian in its own random 32-d subspace with a decaying spectrum and isotropic noise; the
nearest-neighbour structure of a trained encoder's embeddings, not of uniform noise).

Every builder goes through ``knn_graph(X, 10, backend=...)``, i.e. exactly the code the evaluation runs,
on all :func:`backends.cpu_threads` cores, and builds the WHOLE graph (all N queries): every figure in the
table is measured in full. ``recall`` is :func:`graph_recall` on 1000 random rows (distances of the reported
neighbours vs the exact 9th-nearest distance). pynndescent's numba compilation happens once per process
(umap-learn pays it too); it is done on a small warm-up set first and reported separately as
``pynndescent_jit_s``. scikit-learn brute force (``NearestNeighbors(algorithm="brute")`` on normalised rows)
is timed on all N queries while that fits ``--budget`` seconds; beyond that on a prefix of the queries, the
time scaled to N and the row marked ``extrapolated_from: <rows>``.

A builder that took more than ``--skip-factor`` x the fastest one at the previous N (same d) is not run at
the next N; the table lists it as "not run" with the reason, never as a number.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
from _common import parse_args, print_table, write_json

from nrcc_scale.cluster import backends
from nrcc_scale.cluster.knn import choose_graph_builder, exact_max_rows, knn_graph, l2_normalize

K = 10
BUILDERS = ("faiss-exact", "faiss-cells", "faiss-ivf", "faiss-hnsw", "pynndescent")


def clustered_embeddings(n: int, d: int = 256, seed: int = 0, intrinsic: int = 32, spread: float = 2.0,
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


def sklearn_brute(x: np.ndarray, budget_s: float) -> dict[str, Any]:
    """scikit-learn's fastest exact configuration, all queries if they fit the budget, else a prefix."""
    from sklearn.neighbors import NearestNeighbors

    n = x.shape[0]
    start = time.perf_counter()
    nn = NearestNeighbors(n_neighbors=K, algorithm="brute", metric="euclidean",
                          n_jobs=backends.cpu_threads()).fit(x)
    build = time.perf_counter() - start
    m = min(n, 4096)
    start = time.perf_counter()
    nn.kneighbors(x[:m])
    per_query = (time.perf_counter() - start) / m
    if m < n and per_query * n <= budget_s:
        start = time.perf_counter()
        nn.kneighbors(x)
        per_query, m = (time.perf_counter() - start) / n, n
    out = {"seconds": build + per_query * n, "recall": 1.0}
    if m < n:
        out["extrapolated_from"] = m
    return out


def main() -> None:
    def add_arguments(p) -> None:
        p.add_argument("--grid", nargs="+", default=None, metavar="N:d",
                       help="sizes to run (default: 1e4 x {64,256,1024}, 3e4 x 1024, 1e5 x {64,256}, 1e6 x 256)")
        p.add_argument("--budget", type=float, default=60.0, help="seconds of scikit-learn search per size")
        p.add_argument("--skip-factor", type=float, default=3.0)
        p.add_argument("--builders", nargs="+", default=list(BUILDERS), choices=BUILDERS,
                       help="which builders to run, in this order (default: all)")
        p.add_argument("--no-sklearn", action="store_true", help="leave out the scikit-learn row")

    args = parse_args(__doc__.splitlines()[0], add_arguments)
    if args.grid:
        grid = [tuple(int(float(v)) for v in g.split(":")) for g in args.grid]
    elif args.quick:
        grid = [(10_000, 64), (10_000, 256), (30_000, 256)]
        args.budget = 5.0
    else:
        grid = [(10_000, 64), (10_000, 256), (10_000, 1024), (30_000, 1024), (100_000, 64), (100_000, 256),
                (1_000_000, 256)]
    cores = backends.cpu_threads()
    load_at_start = os.getloadavg()[0]
    start = time.perf_counter()
    knn_graph(clustered_embeddings(2000, 32), K, backend="pynndescent", recall_sample=0)
    jit_s = time.perf_counter() - start
    print(f"k = {K}, {cores} CPU threads; pynndescent numba warm-up {jit_s:.1f} s", flush=True)
    rows: list[dict[str, Any]] = []
    best_prev: dict[int, dict[str, float]] = {}
    for n, d in grid:
        x = clustered_embeddings(n, d)
        times: dict[str, float] = {}
        rule = choose_graph_builder(n, d, cores).builder
        prev = best_prev.get(d)
        for builder in args.builders:
            row: dict[str, Any] = {"N": n, "d": d, "builder": builder, "rule picks": builder == rule}
            if prev and builder in prev and prev[builder] > args.skip_factor * min(prev.values()):
                row["note"] = f"not run: > {args.skip_factor:g}x the fastest at the previous N"
                rows.append(row)
                continue
            if builder == "faiss-exact" and n * n * d > 3e14:
                row["note"] = "not run: N^2·d too large for this machine"
                rows.append(row)
                continue
            t0 = time.perf_counter()
            g = knn_graph(x, K, backend=builder)
            times[builder] = row["seconds"] = time.perf_counter() - t0 - 0.0
            row["recall"] = g.recall
            row["recall_rows"] = g.recall_rows
            rows.append(row)
            print(f"  N={n} d={d} {builder}: {row['seconds']:.1f} s recall {g.recall:.4f}", flush=True)
        best_prev[d] = times
        if args.no_sklearn:
            continue
        sk = sklearn_brute(x, args.budget)
        rows.append({"N": n, "d": d, "builder": "sklearn brute", "rule picks": False, "seconds": sk["seconds"],
                     "recall": sk["recall"], "extrapolated_from": sk.get("extrapolated_from"),
                     "note": f"extrapolated_from: {sk['extrapolated_from']} rows" if "extrapolated_from" in sk
                     else None})
    for n, d in grid:  # 'x fastest' among the builders run at that size, scikit-learn included
        at_size = [r for r in rows if r["N"] == n and r["d"] == d and "seconds" in r]
        fastest = min((r["seconds"] for r in at_size), default=float("nan"))
        for r in at_size:
            r["x fastest"] = r["seconds"] / fastest
    columns = ["N", "d", "builder", "rule picks", "seconds", "x fastest", "recall", "note"]
    print_table(rows, columns, title=f"kNN graph (k = {K}, cosine, whole graph) on {cores} cores; recall on 1000 "
                "rows; 'seconds' includes the recall check", floatfmt="{:.4g}")
    notes = [f"{cores} CPU threads; load average {load_at_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the "
             "end (above the thread count means other work shared the machine: absolute times are pessimistic)",
             f"pynndescent numba compile (once per process, umap-learn pays it too): {jit_s:.1f} s, excluded",
             f"rule: faiss exact while N <= exact_max_rows(d, cores) = sqrt(2e11 * cores / d) "
             f"(d=256: {exact_max_rows(256, cores)} rows on {cores} cores), faiss-cells beyond, pynndescent where "
             "faiss-cells misses the recall floor",
             "seconds include the 1000-row recall check (a few % at 10^6)"]
    if any(r.get("extrapolated_from") for r in rows):
        notes.append("scikit-learn rows marked extrapolated_from were timed on that many queries and scaled")
    if args.json:
        write_json(args.json, {"benchmark": "knn_scaling", "k": K, "threads": cores, "pynndescent_jit_s": jit_s,
                               "rows": rows, "report": {"title": "kNN graph builders on the CPU",
                                                        "columns": columns, "rows": rows, "notes": notes,
                                                        "plots": []}})


if __name__ == "__main__":
    main()
