"""What the training loop watches every few epochs (the paper's Fig. 4): kNN accuracy of the target
embedding, its global standard deviation (collapse check), UMAP + GridShift clustering scores, and the
label-free scores (RankMe, partition stability, silhouette, size spread, singletons) that a run without
labels can be watched by. Without labels the kNN accuracy and the scores against classes are left out."""

from __future__ import annotations

import numpy as np
import torch

from nrcc_scale.config import Config
from nrcc_scale.data.base import DataBundle, SubsetSource
from nrcc_scale.evaluation.embed import embed_source
from nrcc_scale.evaluation.label_free import has_labels, label_free_scores
from nrcc_scale.evaluation.pipeline import global_std, reduce_and_gridshift

#: label-free scores the monitor reports (as ``monitor_<name>``; the cluster count is ``monitor_clusters``)
MONITORED_LABEL_FREE = ("rankme", "stability", "silhouette", "cluster_size_cv", "singleton_fraction")
MAX_MONITOR_SAMPLES = 10_000  # a seeded subsample keeps the monitor cheap on large data sets


def _subsample(n: int, limit: int, seed: int) -> np.ndarray | None:
    if n <= limit:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def training_monitor(method, cfg: Config, data: DataBundle, resolution: int,
                     device: torch.device) -> dict[str, float]:
    from nrcc_scale.cluster.knn import weighted_knn_accuracy

    model = method.embedding_model()
    seed = cfg.eval.seed
    out: dict[str, float] = {}
    labelled = has_labels(data.evaluate.labels)
    if labelled:  # the kNN monitor needs labels; without them global std is taken on the clustered set
        train = embed_source(model, data.probe_train, resolution, device, cfg.eval.batch_size,
                             indices=_subsample(len(data.probe_train), MAX_MONITOR_SAMPLES, seed))
        test = embed_source(model, data.probe_test, resolution, device, cfg.eval.batch_size,
                            indices=_subsample(len(data.probe_test), MAX_MONITOR_SAMPLES, seed + 1))
        out["knn_acc"] = weighted_knn_accuracy(train.features, train.labels, test.features, test.labels,
                                               k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature,
                                               num_classes=data.train.num_classes)
        out["global_std"] = global_std(train.features)
    rows = _subsample(len(data.evaluate), MAX_MONITOR_SAMPLES, seed + 2)
    evaluate = data.evaluate if rows is None else SubsetSource(data.evaluate, rows)
    emb = embed_source(model, evaluate, resolution, device, cfg.eval.batch_size)
    if not labelled:
        out["global_std"] = global_std(emb.features)
    if len(emb.features) > cfg.eval.n_neighbors + 1:
        clustering = reduce_and_gridshift(emb.features, emb.labels, cfg.eval, "monitor")
        if labelled:
            out.update(monitor_nmi=clustering.scores["nmi"], monitor_acc=clustering.scores["acc"],
                       monitor_ari=clustering.scores["ari"])
        out["monitor_clusters"] = float(clustering.scores["num_clusters"])
        out.update(label_free_monitor(emb.features, clustering, cfg))
    return out


def label_free_monitor(features: np.ndarray, clustering, cfg: Config) -> dict[str, float]:
    """The label-free scores of :mod:`nrcc_scale.evaluation.label_free` as ``monitor_<score>`` (None
    scores, e.g. silhouette of a single cluster, are left out: a history holds numbers only)."""
    scores = label_free_scores(features, clustering.reduced, clustering.predicted, clustering.bandwidth,
                               seed=cfg.eval.seed, max_iter=cfg.eval.gridshift_max_iter)
    return {f"monitor_{k}": float(v) for k, v in scores.items()
            if k in MONITORED_LABEL_FREE and v is not None}
