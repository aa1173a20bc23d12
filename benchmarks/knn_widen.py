"""pynndescent below the recall floor: umap-learn's own graph vs the two ways ``knn_graph`` reaches the floor.

    python benchmarks/knn_widen.py --quick                 # 20,000 x 256, 20 classes (< 1 min)
    python benchmarks/knn_widen.py --n 1281167 --classes 1000 --json docs/benchmarks/knn_widen.json

Data: ``make_embeddings.generate`` (class means plus isotropic noise, unit rows): with ~1000 rows per class
every within-class neighbour is nearly tied, the case where NN-descent with umap-learn's parameters stops
short of the .98 floor (``eval.knn_min_recall``). Strategies, each a whole graph of k = 10, cosine, on all
cores, recall by ``graph_recall`` on 1000 rows:

* **umap-learn's graph**: pynndescent with umap-learn's parameters at k - what ``umap.UMAP`` builds itself.
* **k, then continued at 2k**: that graph, then NN-descent continued from it with 2k neighbours (no new
  random-projection forest) and trimmed to k - ``knn_graph``'s repair below the floor.
* **2k from the start**: one pynndescent build with 2k neighbours, trimmed - what ``knn_graph`` does above
  ``PYNNDESCENT_WIDE_ABOVE`` rows.

pynndescent's numba compilation (of the fresh and the continued path) is done on a small warm-up set before
any timing.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import parse_args, print_table, write_json
from make_embeddings import generate

from nrcc_scale.cluster import backends
from nrcc_scale.cluster.knn import PYNNDESCENT_WIDE_ABOVE, GraphChoice, build_graph, graph_recall

K = 10


def timed_build(x: np.ndarray, widen: int, init_graph: np.ndarray | None = None) -> tuple[Any, float]:
    choice = GraphChoice("pynndescent", False, "benchmark", widen=widen)
    start = time.perf_counter()
    graph = build_graph(x, K, "cosine", choice, 0, backends.cpu_threads(), False, None, {}, init_graph=init_graph)
    return graph, time.perf_counter() - start


def main() -> None:
    def add_arguments(p) -> None:
        p.add_argument("--n", type=int, default=1_281_167)
        p.add_argument("--classes", type=int, default=1000)
        p.add_argument("--dim", type=int, default=256)
        p.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "evaldata")

    args = parse_args(__doc__.splitlines()[0], add_arguments)
    if args.quick:
        args.n, args.classes = 20_000, 20
    stem = args.data_dir / f"n{args.n}_c{args.classes}_d{args.dim}"
    if not Path(f"{stem}_X.npy").is_file():
        generate(args.n, args.classes, args.dim, 1.0, 0, str(stem))
    x = np.load(f"{stem}_X.npy")
    warm, _ = timed_build(x[:2000], 1)  # numba compilation of both paths, once per process
    timed_build(x[:2000], 2, init_graph=warm.indices)
    base, base_s = timed_build(x, 1)
    continued, cont_s = timed_build(x, 2, init_graph=base.indices)
    wide, wide_s = timed_build(x, 2)
    rows = [{"strategy": "umap-learn's graph (k)", "seconds": base_s, "recall": graph_recall(x, base)},
            {"strategy": "k, then continued at 2k", "seconds": base_s + cont_s, "recall": graph_recall(x, continued),
             "note": f"continuation alone {cont_s:.1f} s"},
            {"strategy": "2k from the start", "seconds": wide_s, "recall": graph_recall(x, wide)}]
    for row in rows:
        row["x umap-learn's"] = row["seconds"] / base_s
        row["meets .98"] = row["recall"] >= 0.98
    columns = ["strategy", "seconds", "x umap-learn's", "recall", "meets .98", "note"]
    title = (f"pynndescent at N = {args.n:,} x {args.dim} ({args.classes} classes), k = {K}, "
             f"{backends.cpu_threads()} threads")
    print_table(rows, columns, title=title, floatfmt="{:.4g}")
    notes = [f"knn_graph searches 2k from the start above {PYNNDESCENT_WIDE_ABOVE:,} rows and continues at 2k "
             "below the floor otherwise", "numba compilation done before timing (umap-learn pays it too)"]
    if args.json:
        write_json(args.json, {"benchmark": "knn_widen", "n": args.n, "classes": args.classes, "dim": args.dim,
                               "rows": rows, "report": {"title": title, "columns": columns, "rows": rows,
                                                        "notes": notes, "plots": []}})


if __name__ == "__main__":
    main()
