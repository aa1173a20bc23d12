"""What the training loop watches every few epochs (the paper's Fig. 4): kNN accuracy of the target
embedding, its global standard deviation (collapse check), and UMAP + GridShift clustering scores."""

from __future__ import annotations

import numpy as np
import torch

from nrcc_scale.config import Config
from nrcc_scale.data.base import DataBundle, SubsetSource
from nrcc_scale.evaluation.embed import embed_source
from nrcc_scale.evaluation.pipeline import global_std, reduce_and_gridshift

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
    train = embed_source(model, data.probe_train, resolution, device, cfg.eval.batch_size,
                         indices=_subsample(len(data.probe_train), MAX_MONITOR_SAMPLES, seed))
    test = embed_source(model, data.probe_test, resolution, device, cfg.eval.batch_size,
                        indices=_subsample(len(data.probe_test), MAX_MONITOR_SAMPLES, seed + 1))
    out = {
        "knn_acc": weighted_knn_accuracy(train.features, train.labels, test.features, test.labels,
                                         k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature,
                                         num_classes=data.train.num_classes),
        "global_std": global_std(train.features),
    }
    rows = _subsample(len(data.evaluate), MAX_MONITOR_SAMPLES, seed + 2)
    evaluate = data.evaluate if rows is None else SubsetSource(data.evaluate, rows)
    emb = embed_source(model, evaluate, resolution, device, cfg.eval.batch_size)
    if len(emb.features) > cfg.eval.n_neighbors + 1:
        clustering = reduce_and_gridshift(emb.features, emb.labels, cfg.eval, "monitor")
        out.update(monitor_nmi=clustering.scores["nmi"], monitor_acc=clustering.scores["acc"],
                   monitor_ari=clustering.scores["ari"],
                   monitor_clusters=float(clustering.scores["num_clusters"]))
    return out
