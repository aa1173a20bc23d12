"""The clustering evaluation end to end on synthetic embeddings shaped like ImageNet-1k's.

N samples of a 1000-class mixture on the 256-d unit sphere (class means spread at random; each sample its
class mean plus isotropic noise, normalised) go through every stage of ``nrcc_scale.evaluation.pipeline``:
faiss kNN graph -> UMAP to 3-d -> GridShift (automatic bandwidth) -> NMI / ACC / ARI / AMI. For each stage
the table gives wall time, peak resident memory (sampled every 20 ms) and the backend, with the baseline
that stage replaces timed on the same data where it finishes in reasonable time: scikit-learn's
NearestNeighbors for the kNN graph, scikit-learn's metrics for the scores.

    python benchmarks/eval_end_to_end.py --quick                 # 20k samples, 100 classes
    python benchmarks/eval_end_to_end.py                         # 100k samples (this 2-core machine)
    python benchmarks/eval_end_to_end.py --n 1000000 --json e2e_1m.json   # on a GPU host
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import _common
import numpy as np
import psutil


class PeakMemory:
    """Peak RSS of this process while the ``with`` block runs (a sampling thread, 20 ms period)."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> PeakMemory:
        self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def mixture(n: int, classes: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, dim)).astype(np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    labels = rng.integers(0, classes, n)
    x = means[labels] + noise * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels.astype(np.int64)


def stage(rows: list[dict[str, Any]], name: str, fn: Callable[[], Any], backend: Callable[[Any], str]) -> Any:
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    rows.append({"stage": name, "seconds": seconds, "peak RSS (GiB)": mem.peak / 2**30, "backend": backend(out)})
    print(f"  {name}: {seconds:.2f} s", flush=True)
    return out


def _add_arguments(parser) -> None:
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--noise", type=float, default=1.0, help="noise norm relative to the unit class means")
    parser.add_argument("--baselines", action="store_true", default=True)
    parser.add_argument("--no-baselines", dest="baselines", action="store_false")


def main() -> None:
    args = _common.parse_args(__doc__.splitlines()[0], _add_arguments)
    if args.quick:
        args.n, args.classes = 20_000, 100
    from sklearn import metrics as skm
    from sklearn.neighbors import NearestNeighbors

    from nrcc_scale.cluster import GridShift, clustering_scores
    from nrcc_scale.cluster.knn import knn_graph
    from nrcc_scale.cluster.reduce import reduce_dimension

    x, y = mixture(args.n, args.classes, args.dim, args.noise, seed=0)
    print(f"{args.n:,} samples, {args.classes} classes, {args.dim}-d", flush=True)
    rows: list[dict[str, Any]] = []
    knn = stage(rows, "kNN graph (k=10)", lambda: knn_graph(x, 10, metric="cosine"), lambda r: r.backend)
    red = stage(rows, "UMAP to 3-d", lambda: reduce_dimension(x, n_neighbors=10, min_dist=0.0, knn=knn, seed=0),
                lambda r: r.backend)
    gs = GridShift()
    pred = stage(rows, "GridShift (auto bandwidth)", lambda: gs.fit_predict(red.embedding),
                 lambda _: f"{gs.backend_}, h={gs.bandwidth_:.3g}")
    scores = stage(rows, "NMI/ACC/ARI/AMI", lambda: clustering_scores(y, pred), lambda _: "nrcc_scale sparse")
    if args.baselines:
        def sk_knn():
            return NearestNeighbors(n_neighbors=10, metric="cosine", algorithm="brute").fit(x).kneighbors(x)

        def sk_scores():
            return (skm.normalized_mutual_info_score(y, pred), skm.adjusted_rand_score(y, pred),
                    skm.adjusted_mutual_info_score(y, pred))

        stage(rows, "baseline: kNN graph", sk_knn, lambda _: "sklearn brute")
        stage(rows, "baseline: NMI/ARI/AMI", sk_scores, lambda _: "sklearn")
    _common.print_table(rows, floatfmt="{:.3f}")
    total = sum(r["seconds"] for r in rows if not r["stage"].startswith("baseline"))
    print(f"pipeline total {total:.1f} s; found {scores['num_clusters']} clusters for {args.classes} classes; "
          f"NMI {scores['nmi']:.3f} ACC {scores['acc']:.3f} AMI {scores['ami']:.3f}")
    if args.json:
        _common.write_json(args.json, {"settings": {k: v for k, v in vars(args).items() if k != "json"},
                                       "stages": rows, "scores": scores, "pipeline_seconds": total})


if __name__ == "__main__":
    main()
