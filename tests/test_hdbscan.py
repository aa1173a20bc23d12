"""HDBSCAN baseline (nrcc_scale.cluster.hdbscan) and the evaluation's extras on a subsample: noise counts as one
extra cluster, the noise fraction is the library's, the automatic min_cluster_size, and the pipeline reports
the HDBSCAN row, the subsample and the kNN recall in metrics.json."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import HDBSCAN
from sklearn.datasets import make_blobs

from nrcc_scale.cluster.hdbscan import auto_min_cluster_size, hdbscan_cluster
from nrcc_scale.config import EvalConfig


def test_noise_is_one_extra_cluster_and_its_fraction_is_reported():
    x, _ = make_blobs(n_samples=1500, n_features=3, centers=5, cluster_std=0.4, random_state=0)
    noise = np.random.default_rng(1).uniform(-15, 15, size=(150, 3))
    x = np.vstack([x, noise]).astype(np.float32)
    result = hdbscan_cluster(x, min_cluster_size=30, backend="sklearn")
    raw = HDBSCAN(min_cluster_size=30, min_samples=10, copy=True).fit_predict(x)  # the library, called directly
    assert result.backend == "sklearn" and result.min_cluster_size == 30
    assert result.noise_fraction == pytest.approx(float((raw < 0).mean())) and result.noise_fraction > 0
    assert result.labels.min() >= 0
    extra = raw.max() + 1
    np.testing.assert_array_equal(result.labels[raw < 0], extra)
    np.testing.assert_array_equal(result.labels[raw >= 0], raw[raw >= 0])


def test_automatic_min_cluster_size():
    assert auto_min_cluster_size(1000) == 10 and auto_min_cluster_size(20_000) == 10
    assert auto_min_cluster_size(100_000) == 50
    x = np.random.default_rng(0).standard_normal((200, 2)).astype(np.float32)
    assert hdbscan_cluster(x, backend="sklearn").min_cluster_size == 10
    with pytest.raises(ValueError, match="eval.hdbscan_min_cluster_size"):
        hdbscan_cluster(x, min_cluster_size=1)


def test_pipeline_reports_hdbscan_subsample_and_recall():
    from nrcc_scale.evaluation.pipeline import evaluate_embeddings
    from nrcc_scale.evaluation.report import format_table

    x, y = make_blobs(n_samples=2400, n_features=32, centers=6, cluster_std=1.0, random_state=2)
    cfg = EvalConfig(baseline_sample=1000, plots=False)
    result = evaluate_embeddings(x.astype(np.float32), y, 6, cfg)
    metrics = result.to_metrics()
    hdb = metrics["baselines"]["umap_hdbscan"]
    assert hdb["sample_size"] == 1000 and 0 <= hdb["noise_fraction"] < 0.5 and hdb["nmi"] > 0.9
    assert metrics["baselines"]["kmeans_true_k"]["sample_size"] == 1000
    assert metrics["knn"]["recall"] == 1.0 and metrics["knn"]["recall_rows"] == 1000
    assert metrics["reduce"]["n_jobs"] >= 1 and {"knn", "reduce", "cluster", "metrics", "baselines"} <= set(
        metrics["seconds"])
    table = format_table(result)
    assert "UMAP + HDBSCAN [1,000-point subsample]" in table and "recall 1.0000" in table
