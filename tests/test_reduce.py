"""Dimension reduction (nrcc_scale.cluster.reduce): UMAP fed with the faiss kNN graph against umap-learn's own
neighbour search, reproducibility, umap-learn's precomputed-kNN quirks, t-SNE, input validation and the
backend rules (auto falls back without CUDA; an explicit cuML request without cuML fails clearly).

umap-learn is real and slow to JIT-compile, so all UMAP fits share one small module-scoped data set."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.manifold import trustworthiness
from sklearn.metrics import adjusted_rand_score

from nrcc_scale.cluster import backends
from nrcc_scale.cluster.kmeans import kmeans
from nrcc_scale.cluster.knn import knn_graph, knn_search
from nrcc_scale.cluster.reduce import reduce_dimension, resolve_backend

cuml_usable = backends.cuml_missing() is None


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    x, y = make_blobs(n_samples=400, n_features=32, centers=4, cluster_std=2.0, random_state=0)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def faiss_umap(blobs):
    x, _ = blobs
    return reduce_dimension(x, backend="umap-learn", knn=knn_graph(x, 10), seed=0)


def _clusters_found(embedding: np.ndarray, y: np.ndarray) -> float:
    return adjusted_rand_score(y, kmeans(embedding, len(np.unique(y)), seed=0).labels)


def test_umap_with_faiss_knn_matches_umap_own_knn(blobs, faiss_umap):
    import umap

    x, y = blobs
    own = umap.UMAP(n_neighbors=10, n_components=3, min_dist=0.0, metric="cosine", random_state=0,
                    n_jobs=1).fit_transform(x)
    ours = faiss_umap.embedding
    assert faiss_umap.backend == "umap-learn" and faiss_umap.seconds > 0
    assert ours.shape == (400, 3) and ours.dtype == np.float32 and np.isfinite(ours).all()
    t_ours = trustworthiness(x, ours, n_neighbors=10, metric="cosine")
    t_own = trustworthiness(x, own, n_neighbors=10, metric="cosine")
    assert t_ours > 0.85 and abs(t_ours - t_own) < 0.02, (t_ours, t_own)
    assert _clusters_found(ours, y) == 1.0 and _clusters_found(own, y) == 1.0


def test_deterministic_umap_is_bit_for_bit_and_builds_the_same_graph_itself(blobs):
    x, _ = blobs
    first = reduce_dimension(x, backend="umap-learn", knn=knn_graph(x, 10), seed=0, deterministic=True)
    assert first.params["n_jobs"] == 1 and first.params["random_state"] == 0
    # knn=None: the graph is built inside; "auto" falls back to umap-learn where cuML cannot run
    again = reduce_dimension(x, backend="umap-learn" if cuml_usable else "auto", seed=0, deterministic=True)
    assert again.backend == "umap-learn"
    np.testing.assert_array_equal(again.embedding, first.embedding)


def test_n_epochs_reaches_umap_learn(blobs):
    """eval.umap_epochs: the deterministic path with n_epochs=20 is bit for bit umap-learn's own call with the
    same graph and n_epochs=20, and differs from the default number of epochs."""
    import umap

    from nrcc_scale.cluster.reduce import _umap_knn

    x, _ = blobs
    graph = knn_graph(x, 10)
    short = reduce_dimension(x, backend="umap-learn", knn=graph, seed=0, deterministic=True, n_epochs=20)
    assert short.params["n_epochs"] == 20
    direct = umap.UMAP(n_neighbors=10, n_components=3, min_dist=0.0, metric="cosine", random_state=0, n_jobs=1,
                       n_epochs=20, precomputed_knn=_umap_knn(graph, len(x), 10, "cosine")).fit_transform(x)
    np.testing.assert_array_equal(short.embedding, direct.astype(np.float32))
    default = reduce_dimension(x, backend="umap-learn", knn=graph, seed=0, deterministic=True)
    assert default.params["n_epochs"] is None and not np.array_equal(default.embedding, short.embedding)
    with pytest.raises(ValueError, match="n_epochs.*got 0"):
        reduce_dimension(x, n_epochs=0)


def test_default_umap_uses_every_core_of_the_process(blobs, faiss_umap):
    import os

    assert faiss_umap.params["n_jobs"] == len(os.sched_getaffinity(0)) == backends.cpu_threads()
    assert faiss_umap.params["random_state"] is None and faiss_umap.params["deterministic"] is False


def test_default_umap_is_stable_in_quality():
    from nrcc_scale.cluster import GridShift, clustering_scores

    # 12 overlapping-ish classes: a clustering that is good but not perfect, so an unstable run would show
    x, y = make_blobs(n_samples=3000, n_features=24, centers=12, cluster_std=3.5, random_state=3)
    x = x.astype(np.float32)
    graph = knn_graph(x, 10)
    nmis = [clustering_scores(y, GridShift().fit_predict(reduce_dimension(x, knn=graph, seed=0,
                                                                             backend="umap-learn").embedding))["nmi"]
            for _ in range(2)]
    assert min(nmis) > 0.5 and abs(nmis[0] - nmis[1]) <= 0.01, nmis


def test_pca_init_matches_scikit_learn_pca():
    from sklearn.decomposition import PCA

    from nrcc_scale.cluster.reduce import pca_init

    rng = np.random.default_rng(4)
    x = (rng.standard_normal((5000, 16)) * np.linspace(4, 0.5, 16)).astype(np.float32) + 3.0
    ours = pca_init(x, 3, seed=0, block=700)  # several row blocks
    ref = PCA(n_components=3).fit_transform(x.astype(np.float64))
    for j in range(3):
        assert abs(np.corrcoef(ours[:, j], ref[:, j])[0, 1]) > 0.9999
    assert np.abs(ours).max() == pytest.approx(10.0, abs=1e-3) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, pca_init(x, 3, seed=0, block=700))


def test_wider_precomputed_knn_is_trimmed_to_n_neighbors(blobs, faiss_umap):
    # umap-learn < 4096 samples skips its own trimming of a wider graph; we must trim it
    x, _ = blobs
    wide = reduce_dimension(x, knn=knn_graph(x, 25), seed=0, deterministic=True)
    narrow = reduce_dimension(x, knn=knn_graph(x, 10), seed=0, deterministic=True)
    np.testing.assert_array_equal(wide.embedding, narrow.embedding)


def test_precomputed_knn_is_checked(blobs):
    x, _ = blobs
    with pytest.raises(ValueError, match="column 0"):
        reduce_dimension(x, knn=knn_search(x, None, 10, exclude_self=True))
    with pytest.raises(ValueError, match="metric='euclidean'"):
        reduce_dimension(x, knn=knn_graph(x, 10, metric="euclidean"))
    with pytest.raises(ValueError, match="at least"):
        reduce_dimension(x, knn=knn_graph(x, 5))
    with pytest.raises(ValueError, match="rows"):
        reduce_dimension(x[:300], knn=knn_graph(x, 10))


def test_tsne_cpu(blobs):
    x, y = blobs
    res = reduce_dimension(x[:150], method="tsne", n_components=2, backend="umap-learn", seed=0)
    assert res.backend == "sklearn-tsne"
    assert res.embedding.shape == (150, 2) and np.isfinite(res.embedding).all()
    assert _clusters_found(res.embedding, y[:150]) == 1.0


def test_invalid_inputs_name_the_value(blobs):
    x, _ = blobs
    bad = x[:50].copy()
    bad[7, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf.*row 7"):
        reduce_dimension(bad)
    with pytest.raises(ValueError, match="n_neighbors=10.*got 8"):
        reduce_dimension(x[:8])
    with pytest.raises(ValueError, match="n_components <= 3"):
        reduce_dimension(x, method="tsne", n_components=4)
    with pytest.raises(ValueError, match="method"):
        reduce_dimension(x, method="pca")
    with pytest.raises(ValueError, match="min_dist"):
        reduce_dimension(x, min_dist=-0.1)


@pytest.mark.skipif(cuml_usable, reason="cuML and CUDA are usable here")
def test_backend_rules_without_cuml():
    assert resolve_backend("umap", "auto", 3) == "umap-learn"
    assert resolve_backend("tsne", "auto", 2) == "sklearn"
    with pytest.raises(backends.BackendUnavailableError, match=r"'cuml' but .*fall back to umap-learn"):
        resolve_backend("umap", "cuml", 3)


def test_backend_names():
    # the one config key eval.umap_backend serves both methods: CPU names are interchangeable
    for name in ("cpu", "umap-learn", "sklearn"):
        assert resolve_backend("umap", name, 3) == "umap-learn"
        assert resolve_backend("tsne", name, 2) == "sklearn"
    assert resolve_backend("tsne", "auto", 3) == "sklearn"  # cuML t-SNE is 2-D only
    with pytest.raises(ValueError, match="2-D"):
        resolve_backend("tsne", "cuml", 3)
    with pytest.raises(ValueError, match="expected one of"):
        resolve_backend("umap", "rapids", 3)


@pytest.mark.skipif(not cuml_usable, reason="needs CUDA and cuML")
@pytest.mark.gpu
def test_cuml_umap_and_tsne(blobs):
    x, y = blobs
    res = reduce_dimension(x, backend="cuml", knn=knn_graph(x, 10), seed=0)
    assert res.backend == "cuml" and res.embedding.shape == (400, 3)
    assert trustworthiness(x, res.embedding, n_neighbors=10, metric="cosine") > 0.85
    assert _clusters_found(res.embedding, y) == 1.0
    own = reduce_dimension(x, backend="cuml", seed=0)
    assert _clusters_found(own.embedding, y) == 1.0
    tsne = reduce_dimension(x, method="tsne", n_components=2, backend="cuml", seed=0)
    assert tsne.backend == "cuml-tsne" and tsne.embedding.shape == (400, 2)
