"""Quality scores that need no labels: what a user without ground truth can select runs and checkpoints by.

* ``rankme`` — the effective rank of the embedding matrix (Garrido et al., ICML 2023, eq. 1):
  ``p_k = sigma_k / ||sigma||_1 + eps`` over the singular values of the N x D embeddings (at most
  :data:`RANKME_MAX_ROWS` seeded rows, as the paper's 25,600), ``RankMe = exp(-sum_k p_k log p_k)``
  with the paper's ``eps = 1e-7``. It lies in [1, min(N, D)]: 1 for a collapsed representation.
* ``stability`` — how reproducible the found partition is. Cost-conscious choice: the UMAP embedding is
  computed once (UMAP is the expensive stage) and GridShift, at the main run's bandwidth, is refitted on two
  seeded disjoint random halves of its points; each half's partition is extended to every point by its
  nearest mode (GridShift's cluster centres), and the score is the ARI between the two extended partitions.
  1: both halves find the same clusters; near 0: the partition is arbitrary (e.g. uniform noise).
* ``silhouette`` — the mean silhouette of the found clusters in the UMAP space GridShift ran on
  (Euclidean), on at most :data:`SILHOUETTE_MAX_ROWS` seeded rows; in [-1, 1], higher = tighter and
  better separated clusters. ``None`` when fewer than 2 or more than n-1 clusters exist.
* ``trustworthiness`` — how well the UMAP layout keeps each point's neighbours (Venna & Kaski 2001,
  scikit-learn's ``trustworthiness``: 1 minus a penalty for layout neighbours that were not neighbours in
  the embedding, by their rank there), k = 10, cosine in the embedding, on at most
  :data:`TRUSTWORTHINESS_MAX_ROWS` seeded rows (O(n^2)); in [0, 1], higher = more faithful. It scores the
  UMAP stage, not the clustering: the number to compare kNN graph builders or UMAP settings by.
* ``num_clusters``, ``cluster_size_cv`` (std / mean of the cluster sizes: the size spread),
  ``largest_cluster_fraction`` and ``singleton_fraction`` (the share of *samples* that are alone in their
  cluster: points GridShift could not attach to any mode).

Labels are optional everywhere in nrcc-scale: an unlabelled sample carries the label :data:`UNLABELLED`
(-1); :func:`has_labels` says whether a label array can be scored against.
"""

from __future__ import annotations

import numpy as np

UNLABELLED = -1
RANKME_EPS = 1e-7  # Garrido et al. 2023, section 3
RANKME_MAX_ROWS = 25_600  # the paper's evaluation size; the rank of a larger sample changes little
SILHOUETTE_MAX_ROWS = 5_000  # silhouette is O(n^2)
TRUSTWORTHINESS_MAX_ROWS = 2_000  # O(n^2) distances in both spaces; ~0.2 s
TRUSTWORTHINESS_NEIGHBOURS = 10  # the kNN graph's k
STABILITY_MIN_ROWS = 20  # fewer points than this: no meaningful halves

#: score name -> "max" or "min": the direction in which the score is better (for sweeps and selection)
LABEL_FREE_SCORES: dict[str, str] = {"rankme": "max", "stability": "max", "silhouette": "max",
                                     "singleton_fraction": "min"}


def has_labels(labels: np.ndarray | None) -> bool:
    """True when every sample has a ground-truth label (>= 0)."""
    return labels is not None and len(labels) > 0 and bool(np.all(np.asarray(labels) >= 0))


def _rows(n: int, limit: int, seed: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def rankme(features: np.ndarray, eps: float = RANKME_EPS, max_rows: int = RANKME_MAX_ROWS, seed: int = 0) -> float:
    """Effective rank of the embeddings (Garrido et al. 2023): exp of the entropy of the L1-normalised
    singular values (plus ``eps``)."""
    x = np.asarray(features, dtype=np.float64)[_rows(len(features), max_rows, seed)]
    # singular values as square roots of the eigenvalues of the smaller Gram matrix: D x D for N >> D is
    # ten times faster than an SVD of the N x D matrix (the test compares with np.linalg.svd)
    gram = x.T @ x if x.shape[1] <= x.shape[0] else x @ x.T
    sigma = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))
    p = sigma / max(float(sigma.sum()), np.finfo(np.float64).tiny) + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def silhouette(reduced: np.ndarray, predicted: np.ndarray, max_rows: int = SILHOUETTE_MAX_ROWS,
               seed: int = 0) -> float | None:
    from sklearn.metrics import silhouette_score

    rows = _rows(len(reduced), max_rows, seed)
    found = predicted[rows]
    k = len(np.unique(found))
    if k < 2 or k > len(rows) - 1:
        return None
    return float(silhouette_score(reduced[rows], found, metric="euclidean"))


def nearest_mode(points: np.ndarray, modes: np.ndarray) -> np.ndarray:
    """Index of the nearest mode of every point (squared Euclidean), in row blocks to bound memory."""
    out = np.empty(len(points), dtype=np.int64)
    m2 = (modes**2).sum(1)
    for start in range(0, len(points), 8192):
        p = points[start:start + 8192]
        d = (p**2).sum(1)[:, None] - 2 * p @ modes.T + m2[None, :]
        out[start:start + 8192] = d.argmin(1)
    return out


def trustworthiness(features: np.ndarray, reduced: np.ndarray, max_rows: int = TRUSTWORTHINESS_MAX_ROWS,
                    seed: int = 0) -> float | None:
    """scikit-learn's trustworthiness of ``reduced`` for ``features`` (cosine) on at most ``max_rows`` seeded
    rows; None with too few rows for k = 10 neighbours."""
    from sklearn.manifold import trustworthiness as sk_trustworthiness

    rows = _rows(features.shape[0], max_rows, seed)
    k = min(TRUSTWORTHINESS_NEIGHBOURS, (rows.size - 1) // 2)
    if k < 1:
        return None
    return float(sk_trustworthiness(np.asarray(features[rows], dtype=np.float64),
                                    np.asarray(reduced[rows], dtype=np.float64), n_neighbors=k, metric="cosine"))


def partition_stability(reduced: np.ndarray, bandwidth: float | None, seed: int = 0,
                        max_iter: int = 100) -> float | None:
    """ARI between the GridShift partitions of two disjoint random halves, each extended to all points by
    nearest mode (see the module docstring). ``None`` for fewer than :data:`STABILITY_MIN_ROWS` points."""
    from sklearn.metrics import adjusted_rand_score

    from nrcc_scale.cluster import GridShift

    x = np.asarray(reduced, dtype=np.float64)
    if len(x) < STABILITY_MIN_ROWS:
        return None
    order = np.random.default_rng(seed).permutation(len(x))
    halves = (order[: len(x) // 2], order[len(x) // 2:])
    extended = []
    for rows in halves:
        gs = GridShift(bandwidth=bandwidth, max_iter=max_iter).fit(x[rows])
        extended.append(nearest_mode(x, np.asarray(gs.cluster_centers_, dtype=np.float64)))
    return float(adjusted_rand_score(extended[0], extended[1]))


def size_scores(predicted: np.ndarray) -> dict[str, float]:
    sizes = np.bincount(np.unique(predicted, return_inverse=True)[1]).astype(np.float64)
    return {"num_clusters": int(len(sizes)),
            "cluster_size_cv": float(sizes.std() / sizes.mean()),
            "largest_cluster_fraction": float(sizes.max() / sizes.sum()),
            "singleton_fraction": float(sizes[sizes == 1].sum() / sizes.sum())}


def label_free_scores(features: np.ndarray, reduced: np.ndarray | None, predicted: np.ndarray,
                      bandwidth: float | None, seed: int = 0, max_iter: int = 100) -> dict[str, float | None]:
    """Every label-free score of one clustering (``reduced``: the space GridShift ran on)."""
    out: dict[str, float | None] = {"rankme": rankme(features, seed=seed)}
    if reduced is not None:
        out["stability"] = partition_stability(reduced, bandwidth, seed=seed, max_iter=max_iter)
        out["silhouette"] = silhouette(reduced, predicted, seed=seed)
        out["trustworthiness"] = trustworthiness(features, reduced, seed=seed)
    out.update(size_scores(predicted))
    return out


def format_rows(scores: dict[str, float | None]) -> list[str]:
    """The label-free lines of the printed table."""
    def f(key: str) -> str:
        value = scores.get(key)
        return "-" if value is None else f"{value:.4f}"

    return [f"label-free: RankMe {f('rankme')}, stability (ARI of halves) {f('stability')}, "
            f"silhouette (UMAP) {f('silhouette')}, UMAP trustworthiness {f('trustworthiness')}",
            f"label-free: {scores.get('num_clusters')} clusters, size CV {f('cluster_size_cv')}, largest "
            f"{f('largest_cluster_fraction')}, singleton fraction {f('singleton_fraction')}"]
