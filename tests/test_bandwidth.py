"""Automatic bandwidth: recovers the number of blobs, scale-equivariant, deterministic, uses no labels."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from nrcc_scale.cluster import GridShift, estimate_bandwidth
from nrcc_scale.cluster.bandwidth import bandwidth_scan


def unequal_blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Blobs of very different sizes (60..1500 points) and spreads (std 0.3..1.5), well apart."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 0, 0], [14, 0, 0], [0, 14, 0], [0, 0, 14], [14, 14, 14], [-14, 8, -6]], float)
    sizes = [1500, 60, 400, 900, 150, 700]
    stds = [1.5, 0.3, 0.8, 1.2, 0.5, 1.0]
    parts = [c + s * rng.normal(size=(n, 3)) for c, n, s in zip(centers, sizes, stds, strict=True)]
    X = np.concatenate(parts)
    return X, np.repeat(np.arange(len(sizes)), sizes)


def separated_centers(n_centers: int, d: int, min_distance: float, seed: int) -> np.ndarray:
    """Uniform random centres, redrawn until every pair is at least ``min_distance`` apart."""
    rng = np.random.default_rng(seed)
    centers = [rng.uniform(-30, 30, d)]
    while len(centers) < n_centers:
        c = rng.uniform(-30, 30, d)
        if min(np.linalg.norm(c - other) for other in centers) >= min_distance:
            centers.append(c)
    return np.array(centers)


@pytest.mark.parametrize(
    ("n_centers", "d", "seed"), [(3, 2, 0), (5, 3, 1), (12, 3, 2), (8, 2, 3), (20, 3, 4)]
)
def test_blobs_give_the_true_number_of_clusters(n_centers: int, d: int, seed: int) -> None:
    """Gaussian blobs (std 0.6) whose centres are >= 6 apart, i.e. separable: the automatic bandwidth must
    find exactly them. A far-tail point with no other point in its 3^d cells is a mode of its own in any
    grid method, so clusters of < 0.5% of the points are not counted; they may hold a handful of points."""
    centers = separated_centers(n_centers, d, min_distance=6.0, seed=seed)
    X, y = make_blobs(n_samples=3000, centers=centers, cluster_std=0.6, random_state=seed)
    labels = GridShift(bandwidth=estimate_bandwidth(X)).fit_predict(X)
    sizes = np.bincount(labels)
    assert (sizes >= 0.005 * len(X)).sum() == n_centers
    assert sizes[sizes < 0.005 * len(X)].sum() <= 3
    assert adjusted_rand_score(y, labels) >= 0.999


def test_unequal_size_and_density() -> None:
    X, y = unequal_blobs()
    labels = GridShift(bandwidth=estimate_bandwidth(X)).fit_predict(X)
    assert len(np.unique(labels)) == 6
    assert adjusted_rand_score(y, labels) == 1.0


@pytest.mark.parametrize("scale", [4.0, 0.125, 1024.0])
def test_scale_equivariance_is_exact_for_powers_of_two(scale: float) -> None:
    X, _ = unequal_blobs(seed=1)
    assert estimate_bandwidth(X * scale) == estimate_bandwidth(X) * scale


@pytest.mark.parametrize("scale", [3.0, 0.1])
def test_scale_equivariance_for_other_factors(scale: float) -> None:
    X, _ = make_blobs(n_samples=2000, n_features=3, centers=6, cluster_std=0.8, center_box=(-30, 30),
                      random_state=4)
    assert estimate_bandwidth(X * scale) == pytest.approx(estimate_bandwidth(X) * scale, rel=1e-9)


def test_uses_no_labels() -> None:
    params = inspect.signature(estimate_bandwidth).parameters
    assert list(params)[0] == "X"
    assert not {"y", "labels", "y_true", "n_clusters", "k"} & set(params)
    # every other parameter is a keyword-only tuning knob with a default: X alone is enough
    assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in list(params.values())[1:])


def test_deterministic_with_subsampling() -> None:
    X, _ = unequal_blobs(seed=2)
    a = estimate_bandwidth(X, max_samples=800)
    assert a == estimate_bandwidth(X, max_samples=800)
    assert bandwidth_scan(X, max_samples=800).n_samples == 800
    # a different subsample lands on the same plateau
    b = estimate_bandwidth(X, max_samples=800, random_state=1)
    assert 0.5 < b / a < 2.0


def test_scan_is_consistent() -> None:
    X, _ = unequal_blobs(seed=3)
    scan = bandwidth_scan(X)
    assert np.all(np.diff(scan.bandwidths) > 0)
    assert scan.bandwidth in scan.bandwidths
    assert len(scan.links) == len(scan.bandwidths) - 1 == len(scan.scores) - 1
    chosen = int(np.flatnonzero(scan.bandwidths == scan.bandwidth)[0])
    assert scan.scores[chosen] >= np.nanmax(scan.scores) - 0.005
    assert scan.n_clusters[-1] == 1  # the scan starts where everything is one cluster


def test_accepts_tensors_and_degenerate_input() -> None:
    X, _ = unequal_blobs(seed=4)
    assert estimate_bandwidth(torch.as_tensor(X, dtype=torch.float64)) == estimate_bandwidth(X)
    assert estimate_bandwidth(np.ones((50, 3))) == 1.0  # no spread: any positive bandwidth is as good
    with pytest.raises(ValueError, match="NaN or Inf in 1 of"):
        estimate_bandwidth(np.vstack([X, [np.nan, 0.0, 0.0]]))
