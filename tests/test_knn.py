"""faiss kNN search/graph (nrcc_scale.cluster.knn): exactness against numpy, IVF recall, chunking, self
exclusion with duplicates, the GPU planning rules, the scikit-learn fallback and the weighted kNN monitor."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from nrcc_scale.cluster import backends
from nrcc_scale.cluster.knn import (
    GPU_MAX_K,
    default_nlist,
    default_nprobe,
    knn_graph,
    knn_search,
    l2_normalize,
    plan_search,
    weighted_knn_accuracy,
)

needs_faiss_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and backends.faiss_gpu_available()),
                                     reason="needs CUDA and a faiss GPU build")


def _random(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _brute(db: np.ndarray, q: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Reference: full distance matrix in float64, stable argsort."""
    db64, q64 = db.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        db64 /= np.linalg.norm(db64, axis=1, keepdims=True)
        q64 /= np.linalg.norm(q64, axis=1, keepdims=True)
        dist = 1.0 - q64 @ db64.T
    else:
        dist = np.sqrt(np.maximum(((q64[:, None, :] - db64[None, :, :]) ** 2).sum(-1), 0.0))
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(dist, order, axis=1)


@pytest.fixture(autouse=True)
def _fresh_warnings():
    backends._warned.clear()
    yield


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_search_equals_numpy(metric):
    db, q = _random(400, 24, 0), _random(60, 24, 1)
    res = knn_search(db, q, 7, metric=metric, use_gpu=False)
    ref_idx, ref_dist = _brute(db, q, 7, metric)
    assert res.backend == "faiss-cpu exact"
    assert res.indices.dtype == np.int64 and res.distances.dtype == np.float32
    np.testing.assert_array_equal(res.indices, ref_idx)
    np.testing.assert_allclose(res.distances, ref_dist, atol=2e-5)
    if metric == "cosine":
        np.testing.assert_allclose(res.similarities, 1.0 - ref_dist, atol=2e-5)
    else:
        assert res.similarities is None


def test_inputs_are_not_modified_and_any_dtype_layout_works():
    db = np.asfortranarray(_random(200, 16, 2).astype(np.float64) * 3.0)
    before = db.copy()
    res = knn_search(db, db[:10], 3)
    np.testing.assert_array_equal(db, before)
    np.testing.assert_array_equal(res.indices[:, 0], np.arange(10))


def test_chunking_gives_identical_results():
    db = _random(1000, 32, 3)
    whole = knn_search(db, None, 9)
    for chunk in (64, 333):
        chunked = knn_search(db, None, 9, chunk_size=chunk)
        np.testing.assert_array_equal(chunked.indices, whole.indices)
        np.testing.assert_array_equal(chunked.distances, whole.distances)


def test_exclude_self_with_duplicates():
    base = _random(300, 12, 4)
    # row 0 has 2 copies (fewer than k), row 1 has 8 copies (more than k+1: self may be pushed out)
    x = np.vstack([base, base[[0, 0]], np.repeat(base[[1]], 8, axis=0)])
    k = 4
    res = knn_search(x, None, k, exclude_self=True)
    n = x.shape[0]
    assert res.indices.shape == (n, k)
    assert not (res.indices == np.arange(n)[:, None]).any()
    dist = 1.0 - l2_normalize(x).astype(np.float64) @ l2_normalize(x).astype(np.float64).T
    np.fill_diagonal(dist, np.inf)
    np.testing.assert_allclose(res.distances, np.sort(dist, axis=1)[:, :k], atol=2e-5)
    copies_of_0 = {0, 300, 301}
    for i in copies_of_0:
        assert set(res.indices[i, :2]) == copies_of_0 - {i}
    copies_of_1 = {1, *range(302, 310)}
    for i in copies_of_1:
        assert set(res.indices[i]) <= copies_of_1 - {i}
        np.testing.assert_allclose(res.distances[i], 0.0, atol=1e-6)


def test_knn_graph_has_self_first_then_nearest_others():
    x = np.vstack([_random(150, 8, 5), _random(150, 8, 5)[:20]])  # 20 exact duplicates
    graph = knn_graph(x, 6)
    n = x.shape[0]
    np.testing.assert_array_equal(graph.indices[:, 0], np.arange(n))
    np.testing.assert_array_equal(graph.distances[:, 0], 0.0)
    np.testing.assert_array_equal(graph.similarities[:, 0], 1.0)
    others = knn_search(x, None, 5, exclude_self=True)
    np.testing.assert_array_equal(graph.indices[:, 1:], others.indices)
    assert (np.diff(graph.distances, axis=1) >= 0).all()
    euclid = knn_graph(x, 4, metric="euclidean")
    assert euclid.metric == "euclidean" and euclid.similarities is None
    np.testing.assert_array_equal(euclid.indices[:, 0], np.arange(n))


def _clustered(n: int, seed: int) -> np.ndarray:
    x, _ = make_blobs(n_samples=n, n_features=32, centers=40, cluster_std=1.0, center_box=(-10, 10),
                      random_state=seed)
    return x.astype(np.float32)


def test_ivf_recall_above_exact_limit():
    x = _clustered(6000, 6)
    exact = knn_search(x, None, 10, exclude_self=True, use_gpu=False)
    approx = knn_search(x, None, 10, exclude_self=True, exact_limit=1000, use_gpu=False)
    assert exact.backend == "faiss-cpu exact" and approx.backend == "faiss-cpu ivf"
    hits = [len(set(a) & set(e)) for a, e in zip(approx.indices, exact.indices, strict=True)]
    recall = float(np.mean(hits)) / 10
    assert recall >= 0.95, recall
    assert (approx.indices >= 0).all()


def test_ivf_rows_with_too_few_hits_are_searched_again():
    x = _clustered(2000, 7)
    nlist = default_nlist(x.shape[0])  # 51 lists of ~39 points: one probed list cannot hold 500 neighbours
    res = knn_search(x, None, 500, exact_limit=100, nprobe=1, use_gpu=False)
    exact = knn_search(x, None, 500)
    assert nlist == 2000 // 39 and res.backend == "faiss-cpu ivf"
    assert (res.indices >= 0).all()
    np.testing.assert_allclose(res.distances, exact.distances, atol=1e-5)


def test_ivf_is_deterministic_for_a_seed():
    x = _clustered(3000, 8)
    a = knn_search(x, None, 5, exact_limit=100, nprobe=2, seed=3)
    b = knn_search(x, None, 5, exact_limit=100, nprobe=2, seed=3)
    np.testing.assert_array_equal(a.indices, b.indices)


def test_plan_rules():
    exact = plan_search(1000, 10, exact_limit=1000)
    assert (exact.library, exact.device, exact.index) == ("faiss", "cpu", "exact")
    ivf = plan_search(1_000_000, 11, exact_limit=200_000)
    assert ivf.index == "ivf" and ivf.nlist == 4000 and ivf.nprobe == default_nprobe(4000) == 32
    assert ivf.train_size == 64 * 4000 and ivf.backend == "faiss-cpu ivf"
    assert plan_search(1000, 5, nprobe=10_000, exact_limit=10).nprobe == default_nlist(1000)
    # faiss-GPU selects at most 2048 neighbours: a larger k moves that search to the CPU, and says so
    gpu_ok = plan_search(10_000, GPU_MAX_K, gpu=True)
    assert gpu_ok.device == "gpu" and gpu_ok.notes == () and gpu_ok.backend == "faiss-gpu exact"
    too_many = plan_search(10_000, GPU_MAX_K + 1, gpu=True)
    assert too_many.device == "cpu" and "2048" in too_many.notes[0]
    big_ivf = plan_search(1_000_000, GPU_MAX_K + 1, exact_limit=10, gpu=True)
    assert (big_ivf.device, big_ivf.index) == ("cpu", "ivf")
    capped = plan_search(10**8, 10, gpu=True, nprobe=5000)
    assert capped.device == "gpu" and capped.nprobe == GPU_MAX_K and capped.notes
    fallback = plan_search(10**6, 10, faiss=False)
    assert fallback.backend == "sklearn" and fallback.index == "exact" and fallback.notes
    with pytest.raises(ValueError, match="nprobe"):
        plan_search(10**6, 10, nprobe=0)


def test_sklearn_fallback_matches_faiss(monkeypatch, caplog):
    db, q = _random(300, 16, 9), _random(40, 16, 10)
    with_faiss = {m: knn_search(db, q, 5, metric=m) for m in ("cosine", "euclidean")}
    with_graph = knn_search(db, None, 5, exclude_self=True)
    monkeypatch.setattr(backends, "faiss_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="nrcc_scale.cluster"):
        for metric, ref in with_faiss.items():
            res = knn_search(db, q, 5, metric=metric)
            assert res.backend == "sklearn"
            np.testing.assert_array_equal(res.indices, ref.indices)
            np.testing.assert_allclose(res.distances, ref.distances, atol=1e-5)
        graph = knn_search(db, None, 5, exclude_self=True)
    np.testing.assert_array_equal(graph.indices, with_graph.indices)
    # one line, not one per call
    assert sum("faiss is not installed" in r.message for r in caplog.records) == 1


@pytest.mark.skipif(backends.faiss_gpu_available(), reason="faiss has a GPU here")
def test_explicit_gpu_request_without_gpu_raises_one_clear_error():
    with pytest.raises(backends.BackendUnavailableError, match=r"use_gpu=True but .*None \(auto\)"):
        knn_search(_random(50, 4, 11), None, 3, use_gpu=True)
    assert knn_search(_random(50, 4, 11), None, 3).backend == "faiss-cpu exact"  # auto falls back


def test_invalid_inputs_are_rejected():
    x = _random(20, 4, 12)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        knn_search(bad, None, 3)
    with pytest.raises(ValueError, match="k=20 needs at least 21"):
        knn_search(x, None, 20, exclude_self=True)
    with pytest.raises(ValueError, match="exclude_self"):
        knn_search(x, x, 3, exclude_self=True)
    with pytest.raises(ValueError, match="metric"):
        knn_search(x, None, 3, metric="manhattan")
    with pytest.raises(ValueError, match="dimensions"):
        knn_search(x, x[:, :3], 3)
    with pytest.raises(ValueError, match="n_neighbors=21"):
        knn_graph(x, 21)


def test_zero_rows_do_not_produce_nan_under_cosine():
    x = _random(30, 5, 13)
    x[4] = 0.0
    res = knn_search(x, None, 3, exclude_self=True)
    assert np.isfinite(res.distances).all()


def _weighted_knn_loop(train, y_train, test, y_test, k, temperature, num_classes):
    """Reference: the InstDisc / NRCC monitor, one test sample at a time."""
    train_n = train / np.linalg.norm(train, axis=1, keepdims=True)
    test_n = test / np.linalg.norm(test, axis=1, keepdims=True)
    correct = 0
    for feature, label in zip(test_n, y_test, strict=True):
        sims = train_n @ feature
        top = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for j in top:
            votes[y_train[j]] += np.exp(sims[j] / temperature)
        correct += int(np.argmax(votes) == label)
    return correct / len(y_test)


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_weighted_knn_accuracy_matches_loop(temperature):
    x, y = make_blobs(n_samples=700, n_features=16, centers=6, cluster_std=4.0, center_box=(-3, 3),
                      random_state=14)
    train, test, y_train, y_test = x[:500], x[500:], y[:500], y[500:]
    ours = weighted_knn_accuracy(train, y_train, test, y_test, k=20, temperature=temperature, num_classes=6)
    ref = _weighted_knn_loop(train, y_train, test, y_test, 20, temperature, 6)
    assert ours == pytest.approx(ref, abs=1e-12)
    assert 0.2 < ours < 1.0  # the data are overlapping blobs: neither trivial nor hopeless


def test_weighted_knn_small_temperature_is_one_nn_without_overflow():
    x, y = make_blobs(n_samples=400, n_features=8, centers=5, cluster_std=5.0, random_state=15)
    train, test, y_train, y_test = x[:300], x[300:], y[:300], y[300:]
    nearest = knn_search(train, test, 1).indices[:, 0]
    one_nn = float(np.mean(y_train[nearest] == y_test))
    sharp = weighted_knn_accuracy(train, y_train, test, y_test, k=20, temperature=1e-5)
    assert sharp == pytest.approx(one_nn)
    with pytest.raises(ValueError, match="temperature"):
        weighted_knn_accuracy(train, y_train, test, y_test, temperature=0.0)


@needs_faiss_gpu
@pytest.mark.gpu
def test_gpu_search_matches_cpu_and_large_k_falls_back():
    db = _random(5000, 64, 16)
    cpu = knn_search(db, None, 10, use_gpu=False)
    gpu = knn_search(db, None, 10, use_gpu=True)
    assert gpu.backend == "faiss-gpu exact"
    assert np.mean(gpu.indices == cpu.indices) > 0.99
    np.testing.assert_allclose(gpu.distances, cpu.distances, atol=1e-4)
    ivf = knn_search(db, None, 10, use_gpu=True, exact_limit=1000)
    assert ivf.backend == "faiss-gpu ivf"
    big = knn_search(db, db[:50], GPU_MAX_K + 10, use_gpu=True)
    assert big.backend == "faiss-cpu exact" and big.indices.shape == (50, GPU_MAX_K + 10)


# --------------------------------------------------------------------- graph builders, the rule, recall
from nrcc_scale.cluster import knn as knn_module  # noqa: E402
from nrcc_scale.cluster.knn import (  # noqa: E402
    GRAPH_BUILDERS,
    choose_graph_builder,
    exact_max_rows,
    graph_recall,
)


def test_rule_picks_each_builder_where_it_should():
    # CPU: exact up to the break-even N (which grows with cores and shrinks with d), faiss-cells beyond
    limit = exact_max_rows(256, 2)
    assert 35_000 < limit < 45_000  # 4·10^4 at d = 256 on 2 cores (module docstring's measurements)
    assert exact_max_rows(64, 2) == pytest.approx(2 * limit, rel=0.01)
    assert exact_max_rows(256, 32) == pytest.approx(4 * limit, rel=0.01)
    assert choose_graph_builder(limit, 256, 2).builder == "faiss-exact"
    assert choose_graph_builder(limit + 1, 256, 2).builder == "faiss-cells"
    assert choose_graph_builder(1_281_167, 256, 2).backend == "faiss-cpu cells"
    # pynndescent (the fallback, or the builder without faiss) searches 2k neighbours from the start above
    # PYNNDESCENT_WIDE_ABOVE rows (k reached .855 at 1.28M)
    assert choose_graph_builder(1_281_167, 256, 2, faiss=False).widen == 2
    assert knn_module.pynndescent_choice(knn_module.PYNNDESCENT_WIDE_ABOVE, "").widen == 1
    assert choose_graph_builder(limit + 1, 256, 2, faiss=False).widen == 1
    assert choose_graph_builder(128_117, 256, 32).builder == "faiss-exact"  # many cores: exact goes further
    assert choose_graph_builder(10_000, 1024, 2).builder == "faiss-exact"
    # missing libraries
    assert choose_graph_builder(10**6, 256, 2, pynndescent=False).builder == "faiss-cells"
    assert choose_graph_builder(10**6, 256, 2, pynndescent=False, faiss=False).builder == "sklearn"
    assert choose_graph_builder(10**6, 256, 2, faiss=False).builder == "pynndescent"
    # GPU: faiss on the device, exact then IVF
    gpu_small = choose_graph_builder(10**5, 256, 2, gpu=True)
    assert (gpu_small.builder, gpu_small.gpu, gpu_small.backend) == ("faiss-exact", True, "faiss-gpu exact")
    assert choose_graph_builder(10**6, 256, 2, gpu=True).backend == "faiss-gpu ivf"
    # the override wins, and a missing library is one clear error
    for name in GRAPH_BUILDERS:
        assert choose_graph_builder(10**6, 256, 2, requested=name).builder == name
    with pytest.raises(ValueError, match="eval.knn_backend"):
        choose_graph_builder(10, 4, 2, requested="annoy")
    with pytest.raises(backends.BackendUnavailableError, match="pynndescent is not installed"):
        choose_graph_builder(10, 4, 2, requested="pynndescent", pynndescent=False)


@pytest.mark.parametrize("builder", ["faiss-exact", "faiss-cells", "faiss-ivf", "faiss-hnsw", "pynndescent",
                                     "sklearn"])
def test_every_builder_gives_the_umap_layout_and_its_recall(builder):
    x = _clustered(3000, 11)
    graph = knn_graph(x, 10, backend=builder, recall_sample=500)
    n = x.shape[0]
    assert graph.indices.shape == (n, 10) and graph.indices.dtype == np.int32
    assert graph.distances.dtype == np.float32 and graph.similarities.dtype == np.float32
    np.testing.assert_array_equal(graph.indices[:, 0], np.arange(n))
    np.testing.assert_array_equal(graph.distances[:, 0], 0.0)
    assert (graph.indices[:, 1:] != np.arange(n)[:, None]).all()
    assert graph.backend == graph.choice.backend and graph.recall_rows == 500
    assert graph.recall >= (0.999 if builder in ("faiss-exact", "sklearn") else 0.95), graph.recall
    # the reported distances are the true cosine distances of the reported neighbours
    xn = l2_normalize(x)
    true = 1.0 - np.einsum("id,ijd->ij", xn, xn[graph.indices])
    np.testing.assert_allclose(graph.distances[:, 1:], np.maximum(true[:, 1:], 0), atol=2e-3)


def test_graph_recall_matches_a_brute_force_count():
    x = _random(800, 16, 12)
    exact = knn_graph(x, 8, backend="faiss-exact", recall_sample=0)
    corrupted = knn_module.KNNResult(exact.indices.copy(), exact.distances.copy(), None, "test", "cosine")
    rng = np.random.default_rng(0)
    wrong = rng.random((800, 7)) < 0.3  # replace ~30% of the neighbours by random rows
    corrupted.indices[:, 1:][wrong] = rng.integers(0, 800, wrong.sum())
    got = graph_recall(x, corrupted, sample=800)
    # independent count: reported neighbours (self excluded) that are among the true 7 nearest others
    order, _ = _brute(x, x, 8, "cosine")
    truth = [set(row[row != i][:7]) for i, row in enumerate(order)]
    count = np.mean([len(truth[i] & set(corrupted.indices[i, 1:])) / 7 for i in range(800)])
    # set counting misses tie-free random data by nothing; random replacements can hit a true neighbour
    assert got == pytest.approx(count, abs=0.01)
    assert graph_recall(x, exact, sample=800) == 1.0


def test_low_recall_under_auto_is_rebuilt_with_faiss(monkeypatch, caplog):
    # uniform 128-d noise is pynndescent's worst case (recall ~0.4 with umap-learn's parameters); make the
    # rule pick it at this N, and check the floor sends the graph back to exact search with a warning
    x = _random(4000, 128, 13)
    monkeypatch.setattr(knn_module, "EXACT_WORK_PER_CORE", 4000**2 * 128 / 2 / 4)  # limit = 2000 rows
    assert choose_graph_builder(4000, 128, 2).builder == "faiss-cells"
    with caplog.at_level(logging.WARNING, logger="nrcc_scale.cluster"):
        graph = knn_graph(x, 10, n_jobs=2, min_recall=0.98)
    assert graph.choice.builder == "faiss-exact" and graph.recall == 1.0
    # structure-less noise: the cells fail, then pynndescent (and its wider repair), then exact search
    assert "faiss-cells reached recall" in caplog.text and "rebuilding with pynndescent" in caplog.text
    assert "rebuilding with faiss-exact" in caplog.text


def test_low_recall_pynndescent_is_first_rebuilt_wider(monkeypatch, caplog):
    """Below the floor, NN-descent continues from the pynndescent graph with 2x the neighbours (trimmed to k)
    before faiss is tried. The first, k-neighbour call is degraded on purpose (a third of its neighbours
    replaced by random rows, as a poor NN-descent would return); the widened call is real pynndescent,
    started from that degraded graph."""
    real = knn_module._pynndescent_graph
    calls: list[int] = []
    starts: list[np.ndarray | None] = []

    def degraded_at_k(x, n_neighbors, *args, **kwargs):
        calls.append(n_neighbors)
        starts.append(kwargs.get("init_graph"))
        ids, dists = real(x, n_neighbors, *args, **kwargs)
        if n_neighbors == 10:
            rng = np.random.default_rng(0)
            ids, dists = ids.copy(), dists.copy()
            rows = np.arange(len(x))[:, None]  # random other rows, never the row itself
            ids[:, 7:] = (rows + 1 + rng.integers(0, len(x) - 1, (len(x), 3))) % len(x)
            dists[:, 7:] = 1.0
        return ids, dists

    x = _random(4000, 16, 5)
    monkeypatch.setattr(knn_module, "_pynndescent_graph", degraded_at_k)
    # the rule's pick without faiss-cells (whose recall on these rows would end the test before pynndescent)
    monkeypatch.setattr(knn_module, "choose_graph_builder",
                        lambda n, *a, **k: knn_module.pynndescent_choice(n, "test: the rule picks pynndescent"))
    with caplog.at_level(logging.WARNING, logger="nrcc_scale.cluster"):
        graph = knn_graph(x, 10, n_jobs=2, min_recall=0.98)
    assert calls == [10, 20]
    assert starts[0] is None and starts[1].shape == (4000, 10)  # the repair continues from the first graph
    assert graph.choice.builder == "pynndescent" and graph.choice.widen == 2 and graph.recall >= 0.98
    assert graph.indices.shape == (4000, 10) and (graph.indices[:, 0] == np.arange(4000)).all()
    assert "rebuilding with 2x the neighbours" in caplog.text and "faiss" not in caplog.text
