"""The clustering evaluation of EVALUATION.md on a matrix of embeddings.

    embeddings --(faiss kNN graph)--> UMAP to 3-d --> GridShift (no k) --> NMI / ACC / ARI / AMI

next to the paper's baselines: k-means with the true k on the embeddings, and the same UMAP + GridShift
on raw pixels. Every stage records the backend that ran it and its wall time.
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
    modes: np.ndarray | None = None  # GridShift's cluster centres in the reduced space, row c = cluster c

    def summary(self) -> dict[str, Any]:
        out = dict(self.scores)
        if self.bandwidth is not None:
            out["bandwidth"] = self.bandwidth
        out["backends"] = self.backends
        out["seconds"] = {k: round(v, 3) for k, v in self.seconds.items()}
        return out


def global_std(features: np.ndarray) -> float:
    """Mean over dimensions of the std of L2-normalised embeddings: about 1/sqrt(d) when healthy, 0 when
    the representation has collapsed (SimSiam's collapse check, the paper's Fig. 4)."""
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return float(x.std(axis=0).mean())


def cluster_size_spread(predicted: np.ndarray) -> dict[str, float]:
    sizes = np.bincount(np.unique(predicted, return_inverse=True)[1])
    return {"largest_cluster": int(sizes.max()), "smallest_cluster": int(sizes.min()),
            "singleton_clusters": int((sizes == 1).sum())}


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
    backends: dict[str, str] = {}
    seconds: dict[str, float] = {}
    knn = None
    if cfg.reducer == "umap":  # UMAP takes the faiss graph; t-SNE computes its own affinities
        t0 = time.perf_counter()
        knn = knn_graph(features, cfg.n_neighbors, metric=metric)
        backends["knn"], seconds["knn"] = knn.backend, time.perf_counter() - t0
    reduced = reduce_dimension(features, method=cfg.reducer, n_components=cfg.n_components,
                               n_neighbors=cfg.n_neighbors, min_dist=cfg.min_dist, metric=metric,
                               backend=cfg.umap_backend, seed=cfg.seed, knn=knn)
    backends["reduce"], seconds["reduce"] = reduced.backend, reduced.seconds
    t0 = time.perf_counter()
    gs_backend, gs_input = gridshift_input(reduced.embedding, cfg.gridshift_backend)
    gridshift = GridShift(bandwidth=cfg.bandwidth, max_iter=cfg.gridshift_max_iter, backend=gs_backend)
    predicted = gridshift.fit_predict(gs_input)
    backends["cluster"], seconds["cluster"] = f"gridshift-{gridshift.backend_}", time.perf_counter() - t0
    scores = _scores(labels, predicted)
    nmi, acc = (f"{scores[k]:.4f}" if k in scores else "-" for k in ("nmi", "acc"))
    log.info("%s: %s clusters (bandwidth %.4g) NMI %s ACC %s | %s", name, scores["num_clusters"],
             gridshift.bandwidth_, nmi, acc, backends)
    return ClusteringOutcome(name, scores, predicted, reduced.embedding, float(gridshift.bandwidth_),
                             backends, seconds, modes=np.asarray(gridshift.cluster_centers_))


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
    result = kmeans(features, num_classes, seed=seed, spherical=True)
    scores = clustering_scores(labels, result.labels)
    scores.update(cluster_size_spread(result.labels))
    return ClusteringOutcome(name, scores, result.labels, backends={"cluster": result.backend},
                             seconds={"cluster": time.perf_counter() - t0})


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
        out["baselines"] = {name: b.summary() for name, b in self.baselines.items()}
        return out


def evaluate_embeddings(features: np.ndarray, labels: np.ndarray, num_classes: int, cfg: EvalConfig,
                        raw_features: np.ndarray | None = None) -> EvaluationResult:
    """The learned embedding through UMAP + GridShift, and the paper's baselines when configured. Without
    labels (all -1) only what needs none runs: no k-means with the true k, no scores against classes."""
    from nrcc_scale.evaluation.label_free import has_labels, label_free_scores

    main = reduce_and_gridshift(features, labels, cfg, "learned: UMAP + GridShift")
    baselines: dict[str, ClusteringOutcome] = {}
    labelled = has_labels(labels)
    if cfg.baselines and not labelled and raw_features is not None:
        baselines["raw_pixels_umap_gridshift"] = reduce_and_gridshift(
            raw_features, labels, cfg, "raw pixels: UMAP + GridShift", metric="euclidean")
    if cfg.baselines and labelled:
        baselines["kmeans_true_k"] = kmeans_true_k(features, labels, num_classes, cfg.seed,
                                                   name=f"learned: k-means (k = {num_classes})")
        if raw_features is not None:
            # pixels are not unit vectors: Euclidean neighbourhoods, as UMAP's default for images
            baselines["raw_pixels_umap_gridshift"] = reduce_and_gridshift(
                raw_features, labels, cfg, "raw pixels: UMAP + GridShift", metric="euclidean")
    extra = {"global_std": global_std(features), "embedding_dim": int(features.shape[1]),
             "num_samples": int(features.shape[0]), "labelled": labelled}
    extra.update(label_free_scores(features, main.reduced, main.predicted, main.bandwidth, seed=cfg.seed,
                                   max_iter=cfg.gridshift_max_iter))
    return EvaluationResult(main, baselines, extra)
