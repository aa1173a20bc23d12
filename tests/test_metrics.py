"""Clustering metrics: equal to scikit-learn (NMI, AMI, ARI) to 1e-9 including degenerate labelings, ACC equal
to a brute-force optimum, and the truncated expected mutual information within its proven error bound."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from nrcc_scale.cluster import clustering_scores
from nrcc_scale.cluster import metrics as metrics_module
from nrcc_scale.cluster.metrics import (
    adjusted_mutual_info,
    adjusted_rand,
    clustering_accuracy,
    contingency_table,
    expected_mutual_information,
    normalized_mutual_info,
)


def sklearn_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {
        "nmi": normalized_mutual_info_score(y_true, y_pred),
        "ami": adjusted_mutual_info_score(y_true, y_pred),
        "ari": adjusted_rand_score(y_true, y_pred),
    }


def random_labelings(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random pairs with found k != true k, many singletons, partial agreement, and the degenerate cases."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(40):
        n = int(rng.integers(2, 500))
        k, m = int(rng.integers(1, 30)), int(rng.integers(1, 80))
        y = rng.integers(0, k, n)
        p = rng.integers(0, m, n)
        if rng.random() < 0.5:
            p = np.where(rng.random(n) < 0.7, y * 7 + 3, p)  # agreeing, renamed labels
        cases.append((y, p))
    n = 300
    y = rng.integers(0, 10, n)
    cases += [
        (y, np.arange(n)),  # every point its own cluster
        (np.arange(n), y),
        (np.arange(n), np.arange(n)[::-1]),  # both all singletons
        (y, np.zeros(n, dtype=int)),  # one cluster found
        (np.zeros(n, dtype=int), y),  # one class
        (np.zeros(n, dtype=int), np.ones(n, dtype=int)),  # both trivial
        (y, y),  # identical
        (y, (y + 3) % 10),  # identical up to renaming
        (np.repeat([0, 1], [1, n - 1]), np.repeat([0, 1], [n - 1, 1])),
        (np.array([0]), np.array([5])),
        (np.array([0, 1]), np.array([0, 0])),
        (np.array([0, 1, 2]), np.array([0, 0, 1])),
    ]
    return cases


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_to_scikit_learn(seed: int) -> None:
    for y, p in random_labelings(seed):
        ours = clustering_scores(y, p)
        ref = sklearn_scores(y, p)
        for key, value in ref.items():
            assert abs(ours[key] - value) <= 1e-9, (key, ours[key], value, len(y))
        assert ours["num_classes"] == len(np.unique(y))
        assert ours["num_clusters"] == len(np.unique(p))


def test_individual_functions_match_the_combined_scores() -> None:
    rng = np.random.default_rng(3)
    y, p = rng.integers(0, 12, 2000), rng.integers(0, 20, 2000)
    scores = clustering_scores(y, p)
    assert normalized_mutual_info(y, p) == scores["nmi"]
    assert adjusted_mutual_info(y, p) == scores["ami"]
    assert adjusted_rand(y, p) == scores["ari"]
    assert clustering_accuracy(y, p) == scores["acc"]
    assert set(scores) == {"nmi", "ami", "ari", "acc", "num_clusters", "num_classes"}


def test_label_types_do_not_matter() -> None:
    """Strings, negative ids (-1 = noise) and huge sparse ids take the sort-based factorisation path."""
    rng = np.random.default_rng(4)
    y, p = rng.integers(0, 8, 1000), rng.integers(-1, 15, 1000)
    ref = clustering_scores(y, p)
    for y2, p2 in [
        (np.array([f"class{v}" for v in y]), p),
        (y, p.astype(np.int64) * 10**12 - 5),
        (y.astype(np.float64), p.astype(np.int8)),
    ]:
        ours = clustering_scores(y2, p2)
        for key in ref:
            assert ours[key] == pytest.approx(ref[key], abs=1e-12), key


def test_large_case_against_scikit_learn() -> None:
    rng = np.random.default_rng(5)
    n = 50_000
    y = rng.integers(0, 100, n)
    p = np.where(rng.random(n) < 0.6, y, rng.integers(0, 150, n))
    ours, ref = clustering_scores(y, p), sklearn_scores(y, p)
    for key, value in ref.items():
        assert abs(ours[key] - value) <= 1e-9, key


def test_contingency_table_matches_scikit_learn() -> None:
    rng = np.random.default_rng(6)
    y, p = rng.integers(0, 9, 700), rng.integers(3, 40, 700)
    table = contingency_table(y, p)
    assert table.dtype == np.int64
    np.testing.assert_array_equal(table.toarray(), contingency_matrix(y, p))


def test_empty_and_mismatched_inputs() -> None:
    scores = clustering_scores(np.array([], dtype=int), np.array([], dtype=int))
    assert scores["nmi"] == scores["ami"] == scores["ari"] == 1.0  # scikit-learn's convention
    assert scores["num_clusters"] == scores["num_classes"] == 0
    with pytest.raises(ValueError, match="different lengths"):
        clustering_scores([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="1-D"):
        clustering_scores(np.zeros((2, 2)), np.zeros((2, 2)))


# ------------------------------------------------------------------------------------------------ ACC
def brute_force_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    """Try every one-to-one assignment of clusters to classes (tiny tables only)."""
    classes, clusters = np.unique(y), np.unique(p)
    best = 0
    slots = list(classes) + [None] * len(clusters)  # None: the cluster is left unmatched
    for assignment in set(itertools.permutations(slots, len(clusters))):
        best = max(best, sum(int(np.sum((p == c) & (y == k))) for c, k in zip(clusters, assignment,
                                                                               strict=True) if k is not None))
    return best / len(y)


def test_accuracy_equals_brute_force_on_rectangular_tables() -> None:
    rng = np.random.default_rng(7)
    for k, m in [(3, 3), (2, 5), (5, 2), (4, 4), (1, 4), (4, 1)]:
        for _ in range(3):
            y, p = rng.integers(0, k, 60), rng.integers(0, m, 60)
            assert clustering_accuracy(y, p) == pytest.approx(brute_force_accuracy(y, p), abs=1e-15)


def test_accuracy_sparse_matching_equals_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    shapes = [(20, 300), (300, 20), (50, 50)]
    cases = [(rng.integers(0, k, 3000), rng.integers(0, m, 3000)) for k, m in shapes]
    y = rng.integers(0, 30, 3000)
    cases.append((y, np.where(rng.random(3000) < 0.8, y, rng.integers(0, 400, 3000))))
    dense = [clustering_accuracy(y, p) for y, p in cases]
    monkeypatch.setattr(metrics_module, "_DENSE_ASSIGN_MAX", 0)
    sparse = [clustering_accuracy(y, p) for y, p in cases]
    assert sparse == pytest.approx(dense, abs=1e-15)
    assert dense[-1] > 0.75


def test_accuracy_counts_unmatched_clusters_as_errors() -> None:
    y = np.array([0, 0, 0, 0, 1, 1])
    p = np.array([0, 0, 1, 1, 2, 2])  # 3 clusters, 2 classes: one cluster of class 0 stays unmatched
    assert clustering_accuracy(y, p) == pytest.approx(4 / 6)


# ---------------------------------------------------------------------- expected mutual information
def exact_emi(a: list[int], b: list[int]) -> float:
    """EMI with exact rational hypergeometric probabilities (math.comb), summed over the whole support."""
    n = sum(a)
    memo: dict[tuple[int, int], float] = {}
    terms = []
    for ai in a:
        for bj in b:
            if (ai, bj) not in memo:
                denominator = math.comb(n, bj)
                memo[ai, bj] = math.fsum(
                    x / n * math.log(n * x / (ai * bj))
                    * float(Fraction(math.comb(ai, x) * math.comb(n - ai, bj - x), denominator))
                    for x in range(max(1, ai + bj - n), min(ai, bj) + 1)
                )
            terms.append(memo[ai, bj])
    return math.fsum(terms)


def exact_e_xlogx(alpha: int, beta: int, n: int) -> float:
    denominator = math.comb(n, beta)
    return math.fsum(
        x * math.log(x) * float(Fraction(math.comb(alpha, x) * math.comb(n - alpha, beta - x), denominator))
        for x in range(max(2, alpha + beta - n), min(alpha, beta) + 1)
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_emi_is_exact_within_its_bound(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(300, 3000))
    a = np.bincount(rng.integers(0, int(rng.integers(2, 12)), n))
    b = np.bincount(np.minimum(rng.geometric(0.15, n), 40))  # skewed sizes: small and large clusters
    a, b = a[a > 0], b[b > 0]
    emi, bound = expected_mutual_information(a, b)
    exact = exact_emi(a.tolist(), b.tolist())
    assert bound <= 1e-12
    assert abs(emi - exact) <= bound + 1e-14 * max(1.0, exact)


@pytest.mark.parametrize(("alpha", "beta", "n"), [(60, 80, 400), (300, 250, 1000), (5, 900, 1000),
                                                  (700, 800, 1000), (40, 40, 2000)])
def test_truncation_bound_holds_for_narrow_windows(alpha: int, beta: int, n: int) -> None:
    """With windows far too narrow, the dropped amount is large - and still within the reported bound."""
    exact = exact_e_xlogx(alpha, beta, n)
    errors = []
    for width in [2, 3, 5, 8, 12, 20, 40, 80]:
        mean, bound = metrics_module._hypergeom_window(np.array([alpha]), np.array([beta]), n, width, width)
        error = abs(float(mean[0]) - exact)
        assert error <= float(bound[0]) + 1e-13 * exact, (width, error, bound)
        errors.append((error, float(bound[0])))
    assert errors[0][0] > 1e-6  # the narrowest window really truncates: the test can fail
    assert errors[-1][1] < 1e-12  # and a wide one has a negligible bound


def test_emi_matches_scikit_learn_at_medium_size() -> None:
    from sklearn.metrics.cluster._expected_mutual_info_fast import expected_mutual_information as sk_emi

    rng = np.random.default_rng(9)
    y, p = rng.integers(0, 60, 40_000), np.minimum(rng.geometric(0.03, 40_000), 200)
    table = contingency_matrix(y, p, sparse=True)
    ours, bound = expected_mutual_information(np.ravel(table.sum(1)), np.ravel(table.sum(0)))
    assert bound <= 1e-12
    assert ours == pytest.approx(sk_emi(table, 40_000), rel=1e-10)


def test_emi_rejects_inconsistent_marginals() -> None:
    with pytest.raises(ValueError, match="marginals disagree"):
        expected_mutual_information([3, 4], [5, 1])
