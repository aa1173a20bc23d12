"""The clustering evaluation of docs/spec/EVALUATION.md on a matrix of embeddings.

    embeddings --(kNN graph, cluster/knn.py)--> UMAP to 3-d --> GridShift (no k) --> NMI / ACC / ARI / AMI

next to the baselines: k-means with the true k on the embeddings (the paper's), HDBSCAN on the same UMAP
output (what UMAP's documentation recommends; issue 11) and the same UMAP + GridShift on raw pixels. Every
stage records the backend that ran it and its wall time, and logs one line when it ends.

Extras never dominate (issue 17): above ``eval.baseline_sample`` points the baselines run on one fixed
random subsample of that size (seeded by ``eval.seed``; reported in the table and in metrics.json as
``sample_size``), so that they stay a small share of the pipeline; the scatter plot subsamples likewise.
The kNN graph's recall against exact search on 1000 rows is measured in every run (``knn`` in metrics.json).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nrcc_scale.cluster import GridShift, clustering_scores
from nrcc_scale.config import EvalConfig

log = logging.getLogger("nrcc_scale.evaluate")


@dataclass
class ClusteringOutcome:
    """One clustering of one representation, with its scores."""

    name: str
    scores: dict[str, Any]
    predicted: np.ndarray
    reduced: np.ndarray | None = None  # the low-dimensional embedding GridShift ran on
    bandwidth: float | None = None
    backends: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # e.g. knn recall, sample_size, noise_fraction
    modes: np.ndarray | None = None  # GridShift's cluster centres in the reduced space, row c = cluster c
    # each row's cosine distance to its nearest other row, read off the kNN graph (assign's calibration
    # reuses it instead of searching every row again); None without a cosine graph
    nearest_distance: np.ndarray | None = None

    def summary(self) -> dict[str, Any]:
        out = dict(self.scores)
        if self.bandwidth is not None:
            out["bandwidth"] = self.bandwidth
        out.update(self.info)
        out["backends"] = self.backends
        out["seconds"] = {k: round(v, 3) for k, v in self.seconds.items()}
        return out


def global_std(features: np.ndarray) -> float:
    """Mean over dimensions of the std of L2-normalised embeddings: about 1/sqrt(d) when healthy, 0 when
    the representation has collapsed (SimSiam's collapse check, the paper's Fig. 4)."""
    n, d = features.shape
    total, squares = np.zeros(d), np.zeros(d)
    for start in range(0, n, 65536):  # row blocks: no N x d temporaries (10^6 x 256 is 1 GB each)
        x = np.asarray(features[start:start + 65536], dtype=np.float32)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        total += x.sum(axis=0, dtype=np.float64)
        squares += (x.astype(np.float64) ** 2).sum(axis=0)
    mean = total / n
    return float(np.sqrt(np.maximum(squares / n - mean ** 2, 0.0)).mean())


def cluster_size_spread(predicted: np.ndarray) -> dict[str, float]:
    sizes = np.bincount(np.unique(predicted, return_inverse=True)[1])
    return {"largest_cluster": int(sizes.max()), "smallest_cluster": int(sizes.min()),
            "singleton_clusters": int((sizes == 1).sum())}


#: n·k above which the k-means baseline runs one restart of <= 50 iterations instead of 10 of <= 300.
KMEANS_LARGE_WORK = 5_000_000
#: Progress bars only from this many points on (the training monitor's 10^4 points would only add noise).
PROGRESS_MIN_ROWS = 50_000


def _stage_done(name: str, stage: str, seconds: float, detail: str = "") -> None:
    """The one line per stage, with its time, that tells where an evaluation's minutes went."""
    log.info("%s: %s done in %.1f s%s", name, stage, seconds, f" ({detail})" if detail else "")


def fixed_subsample(n: int, size: int, seed: int) -> np.ndarray | None:
    """Sorted rows of one seeded random subsample of ``size`` rows; None when ``n <= size`` (use all)."""
    if n <= size:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def _scores(labels: np.ndarray | None, predicted: np.ndarray) -> dict[str, Any]:
    """Scores against ground truth when every sample has a label; else only what needs none."""
    from nrcc_scale.evaluation.label_free import has_labels

    scores = clustering_scores(labels, predicted) if has_labels(labels) else \
        {"num_clusters": int(len(np.unique(predicted)))}
    scores.update(cluster_size_spread(predicted))
    return scores


def reduce_and_gridshift(features: np.ndarray, labels: np.ndarray | None, cfg: EvalConfig, name: str,
                         metric: str | None = None) -> ClusteringOutcome:
    """kNN graph -> UMAP (or t-SNE) -> GridShift -> scores."""
    from nrcc_scale.cluster.knn import knn_graph
    from nrcc_scale.cluster.reduce import reduce_dimension

    metric = metric or cfg.metric
    progress = cfg.progress and features.shape[0] >= PROGRESS_MIN_ROWS
    backends: dict[str, str] = {}
    seconds: dict[str, float] = {}
    info: dict[str, Any] = {}
    knn = None
    if cfg.reducer == "umap":  # UMAP takes the precomputed graph; t-SNE computes its own affinities
        t0 = time.perf_counter()
        knn = knn_graph(features, cfg.n_neighbors, metric=metric, backend=cfg.knn_backend, seed=cfg.seed,
                        n_jobs=1 if cfg.deterministic else None, progress=progress, min_recall=cfg.knn_min_recall)
        backends["knn"], seconds["knn"] = knn.backend, time.perf_counter() - t0
        info["knn"] = {"builder": knn.backend, "reason": knn.choice.reason, "recall": round(knn.recall, 5),
                       "recall_rows": knn.recall_rows, "min_recall": cfg.knn_min_recall}
        if knn.recall < cfg.knn_min_recall:
            log.warning("%s: kNN graph recall %.4f is below eval.knn_min_recall %.3f (%s chosen by "
                        "eval.knn_backend)", name, knn.recall, cfg.knn_min_recall, knn.backend)
        _stage_done(name, "kNN graph", seconds["knn"], f"{knn.backend}, recall {knn.recall:.4f} on "
                    f"{knn.recall_rows} rows")
    reduced = reduce_dimension(features, method=cfg.reducer, n_components=cfg.n_components,
                               n_neighbors=cfg.n_neighbors, min_dist=cfg.min_dist, metric=metric,
                               backend=cfg.umap_backend, seed=cfg.seed, knn=knn, init=cfg.umap_init,
                               n_epochs=cfg.umap_epochs or None, deterministic=cfg.deterministic,
                               progress=progress)
    # only a cosine graph's distances are what assign's calibration measures
    nearest = nearest_other_from_graph(knn.indices, knn.distances) if knn is not None and metric == "cosine" \
        else None
    del knn
    backends["reduce"], seconds["reduce"] = reduced.backend, reduced.seconds
    if reduced.params:
        info["reduce"] = reduced.params
    _stage_done(name, cfg.reducer.upper() if cfg.reducer == "umap" else "t-SNE", seconds["reduce"],
                ", ".join(f"{k}={v}" for k, v in reduced.params.items()))
    t0 = time.perf_counter()
    gs_backend, gs_input = gridshift_input(reduced.embedding, cfg.gridshift_backend)
    gridshift = GridShift(bandwidth=cfg.bandwidth, max_iter=cfg.gridshift_max_iter, backend=gs_backend,
                          progress=progress)
    predicted = gridshift.fit_predict(gs_input)
    backends["cluster"], seconds["cluster"] = f"gridshift-{gridshift.backend_}", time.perf_counter() - t0
    _stage_done(name, "GridShift", seconds["cluster"], f"{gridshift.n_iter_} iterations, bandwidth "
                f"{gridshift.bandwidth_:.4g}")
    t0 = time.perf_counter()
    scores = _scores(labels, predicted)
    seconds["metrics"] = time.perf_counter() - t0
    _stage_done(name, "metrics", seconds["metrics"])
    nmi, acc = (f"{scores[k]:.4f}" if k in scores else "-" for k in ("nmi", "acc"))
    log.info("%s: %s clusters (bandwidth %.4g) NMI %s ACC %s | %s", name, scores["num_clusters"],
             gridshift.bandwidth_, nmi, acc, backends)
    return ClusteringOutcome(name, scores, predicted, reduced.embedding, float(gridshift.bandwidth_),
                             backends, seconds, info, modes=np.asarray(gridshift.cluster_centers_),
                             nearest_distance=nearest)


def nearest_other_from_graph(indices: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Each row's distance to its nearest neighbour other than itself, from a kNN graph whose rows are
    sorted nearest first (the row itself, where present, is among them at distance ~0)."""
    own = indices == np.arange(len(indices))[:, None]
    first_other = np.argmax(~own, axis=1)  # the first column that is not the row itself
    return distances[np.arange(len(indices)), first_other].astype(np.float32)


def gridshift_input(reduced: np.ndarray, setting: str) -> tuple[str, Any]:
    """(GridShift backend, its input) for ``eval.gridshift_backend``: ``auto`` hands GridShift a CUDA tensor
    when a GPU is there (its torch backend then runs on the device) and the NumPy array otherwise; ``torch``
    a tensor on CUDA if available, else on the CPU; ``numpy`` the array."""
    if setting == "numpy":
        return "numpy", reduced
    import torch

    if torch.cuda.is_available():
        return "torch", torch.from_numpy(np.ascontiguousarray(reduced)).to("cuda")
    if setting == "torch":
        return "torch", torch.from_numpy(np.ascontiguousarray(reduced))
    return "numpy", reduced


def kmeans_true_k(features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int,
                  name: str = "kmeans_true_k") -> ClusteringOutcome:
    """The paper's parametric baseline: k-means with the true number of classes, on the normalised
    embeddings (spherical, as the reference code)."""
    from nrcc_scale.cluster.kmeans import kmeans

    t0 = time.perf_counter()
    # 10 restarts of up to 300 iterations where that is cheap; one restart of <= 50 iterations on large
    # n·k (1000 classes), where each restart costs minutes and k-means++ starts well anyway
    large = features.shape[0] * num_classes > KMEANS_LARGE_WORK
    result = kmeans(features, num_classes, seed=seed, spherical=True, n_init=1 if large else 10,
                    max_iter=50 if large else 300)
    scores = clustering_scores(labels, result.labels)
    scores.update(cluster_size_spread(result.labels))
    return ClusteringOutcome(name, scores, result.labels, backends={"cluster": result.backend},
                             seconds={"cluster": time.perf_counter() - t0})


def umap_hdbscan(reduced: np.ndarray, labels: np.ndarray, cfg: EvalConfig,
                 name: str = "UMAP + HDBSCAN") -> ClusteringOutcome:
    """HDBSCAN on the UMAP output GridShift clustered (noise = one extra cluster; its fraction reported)."""
    from nrcc_scale.cluster.hdbscan import hdbscan_cluster

    result = hdbscan_cluster(reduced, min_cluster_size=cfg.hdbscan_min_cluster_size, backend=cfg.umap_backend
                             if cfg.umap_backend in ("auto", "cuml") else "sklearn")
    scores = clustering_scores(labels, result.labels)
    scores.update(cluster_size_spread(result.labels))
    return ClusteringOutcome(name, scores, result.labels, backends={"cluster": f"hdbscan-{result.backend}"},
                             seconds={"cluster": result.seconds},
                             info={"noise_fraction": round(result.noise_fraction, 5),
                                   "min_cluster_size": result.min_cluster_size})


@dataclass
class EvaluationResult:
    main: ClusteringOutcome
    baselines: dict[str, ClusteringOutcome]
    extra: dict[str, Any]

    def to_metrics(self) -> dict[str, Any]:
        """metrics.json: the main result's scores at the top level, baselines under ``baselines``."""
        out: dict[str, Any] = {k: v for k, v in self.main.scores.items()}
        out["bandwidth"] = self.main.bandwidth
        out.update(self.extra)
        out["backends"] = self.main.backends
        out["seconds"] = {k: round(v, 3) for k, v in self.main.seconds.items()}
        out.update(self.main.info)
        out["baselines"] = {name: b.summary() for name, b in self.baselines.items()}
        return out


def evaluate_embeddings(features: np.ndarray, labels: np.ndarray, num_classes: int, cfg: EvalConfig,
                        raw_features: np.ndarray | None = None) -> EvaluationResult:
    """The learned embedding through UMAP + GridShift, and the baselines when configured (on a fixed
    subsample of ``eval.baseline_sample`` points above that size). Without labels (all -1) only what needs
    none runs: no k-means with the true k, no HDBSCAN row, no scores against classes."""
    from nrcc_scale.evaluation.label_free import has_labels, label_free_scores

    main = reduce_and_gridshift(features, labels, cfg, "learned: UMAP + GridShift")
    baselines: dict[str, ClusteringOutcome] = {}
    labelled = has_labels(labels)
    if cfg.baselines and not labelled and raw_features is not None:
        baselines["raw_pixels_umap_gridshift"] = reduce_and_gridshift(
            raw_features, labels, cfg, "raw pixels: UMAP + GridShift", metric="euclidean")
    if cfg.baselines and labelled:
        t0 = time.perf_counter()
        rows = fixed_subsample(len(labels), cfg.baseline_sample, cfg.seed)
        sub_labels = labels if rows is None else labels[rows]
        tag = "" if rows is None else f" [{len(rows):,}-point subsample]"

        def sampled(outcome: ClusteringOutcome) -> ClusteringOutcome:
            if rows is not None:
                outcome.info["sample_size"] = int(len(rows))
            return outcome

        sub_reduced = main.reduced if rows is None else main.reduced[rows]
        baselines["umap_hdbscan"] = sampled(umap_hdbscan(sub_reduced, sub_labels, cfg,
                                                         name=f"learned: UMAP + HDBSCAN{tag}"))
        sub_features = features if rows is None else features[rows]
        baselines["kmeans_true_k"] = sampled(kmeans_true_k(sub_features, sub_labels, num_classes, cfg.seed,
                                                           name=f"learned: k-means (k = {num_classes}){tag}"))
        if raw_features is not None:
            # pixels are not unit vectors: Euclidean neighbourhoods, as UMAP's default for images
            sub_raw = raw_features if rows is None else raw_features[rows]
            baselines["raw_pixels_umap_gridshift"] = sampled(reduce_and_gridshift(
                sub_raw, sub_labels, cfg, f"raw pixels: UMAP + GridShift{tag}", metric="euclidean"))
        main.seconds["baselines"] = time.perf_counter() - t0
        _stage_done("learned", "baselines", main.seconds["baselines"],
                    "all points" if rows is None else f"{len(rows):,}-point subsample")
    extra = {"global_std": global_std(features), "embedding_dim": int(features.shape[1]),
             "num_samples": int(features.shape[0]), "labelled": labelled}
    extra.update(label_free_scores(features, main.reduced, main.predicted, main.bandwidth, seed=cfg.seed,
                                   max_iter=cfg.gridshift_max_iter))
    return EvaluationResult(main, baselines, extra)
