"""faiss-cells (nrcc_scale.cluster.knn_cells): exact products inside neighbouring fine cells, checked against
brute-force neighbours on clustered rows for both metrics, its size rule and its input checks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from nrcc_scale.cluster.knn import l2_normalize
from nrcc_scale.cluster.knn_cells import MIN_ROWS_PER_CELL, cell_knn, rows_per_cell_for

pytest.importorskip("faiss")


def _blobs(n: int, seed: int) -> np.ndarray:
    x, _ = make_blobs(n_samples=n, n_features=24, centers=12, cluster_std=1.0, center_box=(-20, 20),
                      random_state=seed)
    return x.astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_cells_find_the_brute_force_neighbours_of_clustered_rows(metric):
    x = _blobs(3000, 3)
    data = l2_normalize(x) if metric == "cosine" else np.ascontiguousarray(x)
    dist, ids = cell_knn(data, 8, metric, rows_per_cell=100, probe_cells=8)
    assert dist.shape == ids.shape == (3000, 8) and dist.dtype == np.float32
    # brute force in float64, an independent computation
    d64 = data.astype(np.float64)
    if metric == "cosine":
        full = 1.0 - d64 @ d64.T
    else:
        sq = (d64**2).sum(1)
        full = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * d64 @ d64.T, 0.0))
    kth = np.sort(full, axis=1)[:, 7]
    found = np.take_along_axis(full, ids, axis=1)
    assert np.mean(found <= kth[:, None] + 1e-5) > 0.999  # recall against exact search
    np.testing.assert_allclose(dist, found, atol=1e-4)  # the reported distances are the true ones
    assert (np.diff(dist, axis=1) >= -1e-6).all()  # nearest first
    assert (ids[:, 0] == np.arange(3000)).mean() > 0.99  # each row finds itself (ties aside)


def test_rows_per_cell_balances_assignment_and_search():
    assert rows_per_cell_for(10_000) == MIN_ROWS_PER_CELL
    assert rows_per_cell_for(1_281_167) == 400  # sqrt(1.28M / 8)
    assert rows_per_cell_for(128_117) == 127


def test_invalid_cell_parameters_are_rejected():
    with pytest.raises(ValueError, match="rows_per_cell and probe_cells"):
        cell_knn(np.zeros((50, 4), np.float32), 3, "euclidean", probe_cells=0)
