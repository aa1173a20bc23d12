"""GridShift: exact on separable blobs, row-order independent, floor (not truncation) binning, the same
partition as a plain MeanShift++, backend/dtype agreement, and clear input errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from nrcc_scale.cluster import GridShift, estimate_bandwidth
from nrcc_scale.cluster import gridshift_backends as gridshift_module


def meanshift_pp(X: np.ndarray, h: float, max_iter: int = 100) -> tuple[np.ndarray, int]:
    """Plain MeanShift++ (Jang & Jiang 2021) with a Python dict as the grid, written for clarity only.

    Every point keeps its own position; each pass bins the positions into cells floor(x / h), moves every
    point to the mean of the positions in the 3^d cells around its cell, and stops when the pass did not
    reduce the number of occupied cells. Returns (the final cell of each point, as ids; passes run).
    """
    positions = [tuple(float(v) for v in row) for row in X]
    d = len(positions[0])
    offsets = list(itertools.product((-1, 0, 1), repeat=d))

    def cell_of(p: tuple[float, ...]) -> tuple[int, ...]:
        return tuple(math.floor(v / h) for v in p)

    passes = 0
    while passes < max_iter:
        passes += 1
        grid: dict[tuple[int, ...], list] = {}
        for p in positions:
            entry = grid.setdefault(cell_of(p), [0, [0.0] * d])
            entry[0] += 1
            entry[1] = [s + v for s, v in zip(entry[1], p, strict=True)]
        target = {}
        for cell in grid:
            count, total = 0, [0.0] * d
            for off in offsets:
                nb = grid.get(tuple(c + o for c, o in zip(cell, off, strict=True)))
                if nb is not None:
                    count += nb[0]
                    total = [s + v for s, v in zip(total, nb[1], strict=True)]
            target[cell] = tuple(s / count for s in total)
        positions = [target[cell_of(p)] for p in positions]
        if len({cell_of(p) for p in positions}) == len(grid):
            break
    ids: dict[tuple[int, ...], int] = {}
    return np.array([ids.setdefault(cell_of(p), len(ids)) for p in positions]), passes


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True iff a and b group the points identically (equal up to renaming the clusters)."""
    pairs = np.unique(np.stack([a, b], axis=1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def lattice_blobs(n_per: int = 200, d: int = 3, spacing: float = 8.0, std: float = 0.4,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """2^d well separated Gaussian blobs on a lattice centred on the origin (negative coordinates too)."""
    rng = np.random.default_rng(seed)
    centers = (np.array(list(itertools.product((-0.5, 0.5), repeat=d))) * spacing)
    y = np.repeat(np.arange(len(centers)), n_per)
    return centers[y] + std * rng.normal(size=(len(y), d)), y


@pytest.mark.parametrize("d", [2, 3, 4])
def test_separable_blobs_are_recovered_exactly(d: int) -> None:
    X, y = lattice_blobs(d=d, seed=d)
    gs = GridShift(bandwidth=1.5).fit(X)
    assert adjusted_rand_score(y, gs.labels_) == 1.0
    assert len(gs.cluster_centers_) == 2**d
    assert gs.labels_.dtype == np.int64 and gs.labels_.min() == 0
    assert gs.backend_ == "numpy" and gs.bandwidth_ == 1.5 and 1 <= gs.n_iter_ <= 100
    # each mode sits at its blob's centre
    for k in range(2**d):
        assert np.allclose(gs.cluster_centers_[k], X[gs.labels_ == k].mean(0), atol=0.2)


def test_row_permutation_gives_identical_labels() -> None:
    rng = np.random.default_rng(1)
    X = np.concatenate([lattice_blobs(seed=1)[0], rng.uniform(-6, 6, size=(400, 3))])  # blobs + noise
    labels = GridShift(bandwidth=0.9).fit_predict(X)
    assert len(np.unique(labels)) > 8  # noise makes extra modes, so the test is not trivial
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(len(X))
        relabelled = GridShift(bandwidth=0.9).fit_predict(X[perm])
        # numbering depends only on the modes' cells, not on row order: identical after un-permuting
        assert np.array_equal(relabelled, labels[perm])


def test_labels_are_numbered_by_the_modes_cells() -> None:
    X, _ = lattice_blobs(seed=2)
    gs = GridShift(bandwidth=1.5).fit(X)
    cells = np.floor(gs.cluster_centers_ / gs.bandwidth_)
    assert [tuple(c) for c in cells] == sorted(tuple(c) for c in cells)


def test_floor_binning_keeps_blobs_across_zero_apart() -> None:
    """Blobs at x = -1.5h and x = +0.5h: with floor they sit in cells -2 and 0 (not neighbours), so they stay
    apart. Truncation toward zero would put them in cells -1 and 0 - neighbours - and merge them."""
    h = 1.0
    rng = np.random.default_rng(3)
    a = np.array([-1.5, -1.5]) + 0.05 * rng.normal(size=(100, 2))
    b = np.array([0.5, 0.5]) + 0.05 * rng.normal(size=(100, 2))
    X = np.concatenate([a, b])
    y = np.repeat([0, 1], 100)
    assert np.abs(np.trunc(a / h).mean(0) - np.trunc(b / h).mean(0)).max() == 1  # the bug's adjacency
    labels = GridShift(bandwidth=h).fit_predict(X)
    assert adjusted_rand_score(y, labels) == 1.0
    # the same geometry mirrored into all-negative coordinates still gives two clusters
    assert adjusted_rand_score(y, GridShift(bandwidth=h).fit_predict(X - 10.0)) == 1.0


def test_blobs_straddling_zero_in_every_dimension() -> None:
    X, y = lattice_blobs(d=3, spacing=5.0, std=0.3, seed=4)
    assert (X < 0).any() and (X > 0).any()
    assert adjusted_rand_score(y, GridShift(bandwidth=1.0).fit_predict(X)) == 1.0


@pytest.mark.parametrize(
    ("d", "h", "seed"),
    [(1, 0.3, 0), (2, 0.4, 1), (2, 1.3, 2), (3, 0.7, 3), (3, 2.0, 4), (4, 1.2, 5)],
)
def test_equals_plain_meanshift_pp(d: int, h: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-5, 5, size=(5, d))
    X = centers[rng.integers(0, 5, 600)] + rng.normal(size=(600, d))  # overlapping blobs: many merges
    ref, passes = meanshift_pp(X, h)
    gs = GridShift(bandwidth=h).fit(X)
    assert same_partition(gs.labels_, ref)
    assert gs.n_iter_ == passes
    assert len(np.unique(ref)) > 1


def test_max_iter_caps_the_iterations() -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(2000, 2))
    gs = GridShift(bandwidth=0.1, max_iter=2).fit(X)
    assert gs.n_iter_ == 2
    assert same_partition(gs.labels_, meanshift_pp(X, 0.1, max_iter=2)[0])


def test_float32_input_gives_the_partition_of_its_float64_copy() -> None:
    X, y = lattice_blobs(seed=6)
    noisy = np.concatenate([X, np.random.default_rng(6).uniform(-6, 6, size=(300, 3))])
    x32 = noisy.astype(np.float32)
    a = GridShift(bandwidth=0.8).fit(x32)
    b = GridShift(bandwidth=0.8).fit(x32.astype(np.float64))
    assert np.array_equal(a.labels_, b.labels_)
    assert a.cluster_centers_.dtype == np.float64
    assert adjusted_rand_score(y, GridShift(bandwidth=1.5).fit_predict(X.astype(np.float32))) == 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_backend_matches_numpy(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(7)
    X = np.concatenate([lattice_blobs(seed=7)[0], rng.uniform(-6, 6, size=(500, 3))])
    tensor = torch.as_tensor(X, dtype=dtype)
    ref = GridShift(bandwidth=0.7).fit(tensor.double().numpy())
    gs = GridShift(bandwidth=0.7, backend="torch").fit(tensor)
    assert gs.backend_ == "torch-cpu"
    assert np.array_equal(gs.labels_, ref.labels_)
    assert gs.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(gs.cluster_centers_, ref.cluster_centers_, rtol=0, atol=1e-12)
    # a CPU tensor with backend="auto" runs on NumPy
    assert GridShift(bandwidth=0.7).fit(tensor).backend_ == "numpy"


@pytest.mark.parametrize("backend", ["numpy", "torch-cpu"])
def test_sparse_grid_paths_match_dense(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sort/searchsorted grouping and neighbour search give the partition of the direct-address tables."""
    rng = np.random.default_rng(8)
    X = np.concatenate([lattice_blobs(seed=8)[0], rng.uniform(-6, 6, size=(500, 3))])
    ref = GridShift(bandwidth=0.6, backend=backend).fit(X)
    monkeypatch.setattr(gridshift_module, "_DENSE_GROUP_MAX", 0)
    monkeypatch.setattr(gridshift_module, "_DENSE_LOOKUP_MAX", 0)
    gs = GridShift(bandwidth=0.6, backend=backend).fit(X)
    assert np.array_equal(gs.labels_, ref.labels_)
    assert gs.n_iter_ == ref.n_iter_


@pytest.mark.parametrize("backend", ["numpy", "torch-cpu"])
def test_far_outlier_uses_the_compressed_grid(backend: str) -> None:
    """An outlier 1e9 bandwidths away makes the bounding box too big for an int64 key; the compressed grid
    must give the same partition as plain MeanShift++ (the outlier is a cluster of its own)."""
    X, y = lattice_blobs(n_per=60, seed=9)
    X = np.concatenate([X, [[1e9, -1e9, 1e9]]])
    y = np.append(y, 8)
    assert math.prod(int(v) + 3 for v in np.ptp(np.floor(X / 1.5), axis=0)) >= 2**62
    gs = GridShift(bandwidth=1.5, backend=backend).fit(X)
    assert adjusted_rand_score(y, gs.labels_) == 1.0
    assert same_partition(gs.labels_, meanshift_pp(X, 1.5)[0])


def test_automatic_bandwidth_is_used_when_none() -> None:
    X, y = lattice_blobs(seed=10)
    gs = GridShift().fit(X)
    assert gs.bandwidth_ == pytest.approx(estimate_bandwidth(X))
    assert adjusted_rand_score(y, gs.labels_) == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_backend_matches_numpy() -> None:
    rng = np.random.default_rng(11)
    X = np.concatenate([lattice_blobs(seed=11)[0], rng.uniform(-6, 6, size=(500, 3))])
    ref = GridShift(bandwidth=0.7).fit(X)
    gs = GridShift(bandwidth=0.7).fit(torch.as_tensor(X, device="cuda"))
    assert gs.backend_ == "torch-cuda"
    assert np.array_equal(gs.labels_, ref.labels_)
    gs32 = GridShift(bandwidth=0.7).fit(torch.as_tensor(X, dtype=torch.float32, device="cuda"))
    ref32 = GridShift(bandwidth=0.7).fit(X.astype(np.float32))
    assert np.array_equal(gs32.labels_, ref32.labels_)


# ------------------------------------------------------------------------------------------- errors
def test_nan_and_inf_rows_are_counted_in_the_error() -> None:
    X = np.zeros((10, 3))
    X[2, 1] = np.nan
    X[5, 0] = np.inf
    X[5, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN or Inf in 2 of 10 rows"):
        GridShift(bandwidth=1.0).fit(X)
    with pytest.raises(ValueError, match=r"NaN or Inf in 2 of 10 rows"):
        GridShift(bandwidth=1.0).fit(torch.as_tensor(X))


@pytest.mark.parametrize(
    ("X", "message"),
    [
        (np.zeros((0, 3)), "empty"),
        (np.zeros(5), "2-D"),
        (np.zeros((4, 3, 2)), "2-D"),
        (np.zeros((4, 0)), "0 features"),
        (np.array([["a", "b"]]), "numeric"),
    ],
)
def test_bad_shapes_and_types(X: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GridShift(bandwidth=1.0).fit(X)


def test_too_many_dimensions_points_to_umap() -> None:
    with pytest.raises(ValueError, match=r"9 dimensions.*d <= 8.*UMAP.*reduce the dimension"):
        GridShift(bandwidth=1.0).fit(np.zeros((5, 9)))
    GridShift(bandwidth=1.0).fit(np.random.default_rng(0).normal(size=(50, 8)))  # d = 8 is accepted


@pytest.mark.parametrize("bandwidth", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_bandwidth(bandwidth: float) -> None:
    with pytest.raises(ValueError, match="bandwidth must be a finite number > 0"):
        GridShift(bandwidth=bandwidth).fit(np.zeros((5, 2)))


def test_bad_max_iter_and_backend() -> None:
    with pytest.raises(ValueError, match="max_iter"):
        GridShift(bandwidth=1.0, max_iter=0).fit(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="backend must be one of"):
        GridShift(bandwidth=1.0, backend="jax").fit(np.zeros((5, 2)))


def test_bandwidth_too_small_for_the_coordinates() -> None:
    with pytest.raises(ValueError, match="too small"):
        GridShift(bandwidth=1e-300).fit(np.array([[0.0, 1.0], [1.0, 0.0]]))
