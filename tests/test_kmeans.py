"""k-means baseline (nrcc_scale.cluster.kmeans): exact recovery of separable blobs, determinism, agreement
with scikit-learn's objective, spherical (cosine) k-means, the scikit-learn fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from nrcc_scale.cluster import backends
from nrcc_scale.cluster.kmeans import kmeans
from nrcc_scale.cluster.knn import l2_normalize


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    x, y = make_blobs(n_samples=1500, n_features=10, centers=6, cluster_std=0.6, random_state=0)
    return x, y


def _sphere_blobs(n: int, k: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Tight groups of directions at different norms: separable only by angle, not by Euclidean distance."""
    rng = np.random.default_rng(seed)
    centres = l2_normalize(rng.standard_normal((k, d)))
    y = rng.integers(0, k, n)
    directions = centres[y] + 0.05 * rng.standard_normal((n, d))
    return directions * rng.uniform(0.2, 20.0, (n, 1)), y


def test_separable_blobs_are_recovered_exactly(blobs):
    x, y = blobs
    res = kmeans(x, 6, seed=0, use_gpu=False)
    assert res.backend == "faiss-cpu"
    assert res.labels.dtype == np.int64 and res.labels.shape == (x.shape[0],)
    assert res.centers.shape == (6, 10)
    assert adjusted_rand_score(y, res.labels) == 1.0
    # inertia is the sum of squared distances of every point to its assigned centre
    expected = ((x - res.centers[res.labels].astype(np.float64)) ** 2).sum()
    assert res.inertia == pytest.approx(expected, rel=1e-5)


def test_deterministic_for_a_fixed_seed(blobs):
    x, _ = blobs
    a, b = (kmeans(x, 8, seed=3, n_init=3, use_gpu=False) for _ in range(2))
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centers, b.centers)
    assert a.inertia == b.inertia


def test_inertia_agrees_with_sklearn(blobs):
    x, _ = blobs
    ours = kmeans(x, 6, seed=1)
    ref = KMeans(n_clusters=6, n_init=10, random_state=1).fit(x)
    assert ours.inertia == pytest.approx(ref.inertia_, rel=1e-3)


def test_spherical_kmeans_clusters_by_angle():
    x, y = _sphere_blobs(900, 5, 16, seed=2)
    res = kmeans(x, 5, seed=0, spherical=True)
    np.testing.assert_allclose(np.linalg.norm(res.centers, axis=1), 1.0, atol=1e-5)
    assert adjusted_rand_score(y, res.labels) == 1.0
    cos = (l2_normalize(x) * res.centers[res.labels]).sum(axis=1)
    assert res.inertia == pytest.approx(2.0 * (1.0 - cos.astype(np.float64)).sum(), rel=1e-4)
    # Euclidean k-means on the raw rows is misled by the spread of norms: spherical is the right tool here
    assert adjusted_rand_score(y, kmeans(x, 5, seed=0).labels) < 0.9


def test_sklearn_fallback(blobs, monkeypatch):
    x, y = blobs
    monkeypatch.setattr(backends, "faiss_available", lambda: False)
    res = kmeans(x, 6, seed=0, n_init=3)
    assert res.backend == "sklearn"
    assert adjusted_rand_score(y, res.labels) == 1.0
    sph_x, sph_y = _sphere_blobs(600, 4, 8, seed=4)
    sph = kmeans(sph_x, 4, seed=0, n_init=3, spherical=True)
    assert adjusted_rand_score(sph_y, sph.labels) == 1.0
    np.testing.assert_allclose(np.linalg.norm(sph.centers, axis=1), 1.0, atol=1e-5)


def test_invalid_arguments(blobs):
    x, _ = blobs
    with pytest.raises(ValueError, match="k must be in"):
        kmeans(x[:5], 6)
    bad = x.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        kmeans(bad, 3)
    with pytest.raises(ValueError, match="n_init"):
        kmeans(x, 3, n_init=0)


@pytest.mark.skipif(backends.faiss_gpu_available(), reason="faiss has a GPU here")
def test_explicit_gpu_without_gpu_raises(blobs):
    with pytest.raises(backends.BackendUnavailableError, match="use_gpu=True"):
        kmeans(blobs[0], 3, use_gpu=True)


@pytest.mark.skipif(not (torch.cuda.is_available() and backends.faiss_gpu_available()),
                    reason="needs CUDA and a faiss GPU build")
@pytest.mark.gpu
def test_gpu_kmeans_recovers_blobs(blobs):
    x, y = blobs
    res = kmeans(x, 6, seed=0, use_gpu=True)
    assert res.backend == "faiss-gpu"
    assert adjusted_rand_score(y, res.labels) == 1.0
