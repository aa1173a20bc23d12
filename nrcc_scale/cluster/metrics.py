"""External clustering metrics (NMI, AMI, ARI, ACC) from one sparse contingency table, exact and fast.

Why not scikit-learn: each of its scores rebuilds the contingency table (two ``np.unique`` sorts), and its
expected mutual information (for AMI) sums the hypergeometric distribution over the whole range of every
pair of cluster sizes - about 37 s at ImageNet-1k size (1.28M samples, 1000 x 1000 clusters). Here:

* labels are factorised once (O(N) with ``bincount`` for small-range integer labels) and one sparse table
  feeds every score;
* the expected mutual information is computed per *distinct* pair of cluster sizes, summing the
  hypergeometric pmf only over a window around its mode; what is dropped is bounded rigorously (geometric
  tail bounds from the log-concavity of the pmf) and the window is widened until the bound on the total
  dropped amount is <= ``tol`` (1e-12 nats by default). See :func:`expected_mutual_information`.

The values equal scikit-learn's (``normalized_mutual_info_score`` and ``adjusted_mutual_info_score`` with
the arithmetic mean, ``adjusted_rand_score``) to ~1e-12, including its conventions for degenerate inputs.
ACC is the accuracy of the best one-to-one matching of clusters to classes (Hungarian algorithm on the
rectangular table); points in clusters left unmatched count as errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from scipy.special import xlogy

__all__ = [
    "adjusted_mutual_info",
    "adjusted_rand",
    "clustering_accuracy",
    "clustering_scores",
    "contingency_table",
    "expected_mutual_information",
    "normalized_mutual_info",
]

_EPS = float(np.finfo(np.float64).eps)
_DENSE_BINS_MAX = 1 << 25  # largest n_classes * n_clusters histogrammed with bincount instead of a sort
_DENSE_ASSIGN_MAX = 1 << 22  # largest table solved densely by linear_sum_assignment (32 MiB of float64)
_CHUNK = 1 << 15  # elements per block (pairs x window) in the expected-mutual-information kernel


# ------------------------------------------------------------------------------------------ the table
def _factorize(labels: Any, name: str) -> tuple[np.ndarray, int]:
    """Codes 0..k-1 (in sorted label order) and k. O(N) for integer labels with a small range."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.size and y.dtype.kind in "iu":
        lo, hi = int(y.min()), int(y.max())
        if hi - lo < 4 * y.size + 1024:
            shifted = (y - lo).astype(np.intp, copy=False) if lo else y.astype(np.intp, copy=False)
            remap = np.cumsum(np.bincount(shifted) > 0) - 1
            return remap[shifted], int(remap[-1]) + 1
    uniq, codes = np.unique(y, return_inverse=True)
    return codes.reshape(-1).astype(np.intp, copy=False), len(uniq)


@dataclass(frozen=True)
class _Table:
    """The sparse contingency table (a COO array: row = class, col = cluster, data = n_ij > 0) and its
    marginals; every score is computed from this one object."""

    n: int
    table: sp.coo_array
    a: np.ndarray  # int64 class sizes (all > 0)
    b: np.ndarray  # int64 cluster sizes (all > 0)

    @staticmethod
    def from_labels(y_true: Any, y_pred: Any) -> _Table:
        t, k = _factorize(y_true, "y_true")
        p, m = _factorize(y_pred, "y_pred")
        if len(t) != len(p):
            raise ValueError(f"y_true and y_pred have different lengths: {len(t)} != {len(p)}")
        key = t.astype(np.int64) * m + p
        if k * m <= min(_DENSE_BINS_MAX, 4 * len(key) + 4096):  # histogram: O(N + k m), no sort
            hist = np.bincount(key, minlength=k * m)
            cells = np.flatnonzero(hist)
            counts = hist[cells]
        else:
            cells, counts = np.unique(key, return_counts=True)
        rows, cols = np.divmod(cells, m) if m else (cells, cells)
        counts = counts.astype(np.int64)
        table = sp.coo_array((counts, (rows, cols)), shape=(k, m))
        a = np.bincount(rows, weights=counts, minlength=k).astype(np.int64)
        b = np.bincount(cols, weights=counts, minlength=m).astype(np.int64)
        return _Table(len(t), table, a, b)

    @property
    def rows(self) -> np.ndarray:
        return self.table.row

    @property
    def cols(self) -> np.ndarray:
        return self.table.col

    @property
    def counts(self) -> np.ndarray:
        return self.table.data

    @cached_property
    def mutual_info(self) -> float:
        """MI in nats; 0 when either side has a single group (scikit-learn's convention)."""
        if len(self.a) <= 1 or len(self.b) <= 1:
            return 0.0
        log_a, log_b = np.log(self.a), np.log(self.b)
        p = self.counts / self.n
        terms = p * (np.log(self.counts) - log_a[self.rows] - log_b[self.cols] + np.log(self.n))
        return max(float(terms.sum()), 0.0)

    @cached_property
    def entropies(self) -> tuple[float, float]:
        return _entropy(self.a, self.n), _entropy(self.b, self.n)

    @property
    def one_to_one(self) -> bool:
        """Both labelings are the same partition (each class is exactly one cluster)."""
        return len(self.counts) == len(self.a) == len(self.b)


def _entropy(sizes: np.ndarray, n: int) -> float:
    if len(sizes) <= 1:
        return 0.0
    return float(-np.sum(sizes / n * (np.log(sizes) - np.log(n))))


def contingency_table(y_true: Any, y_pred: Any) -> sp.csr_array:
    """Sparse (n_classes, n_clusters) int64 table of co-occurrences; rows/columns in sorted label order."""
    return _Table.from_labels(y_true, y_pred).table.tocsr()


# ------------------------------------------------------------------------------------------- the scores
def _nmi(t: _Table) -> float:
    k, m = len(t.a), len(t.b)
    if k == m and k <= 1:  # no split on either side (or no data): a perfect match by convention
        return 1.0
    mi = t.mutual_info
    if mi == 0.0:
        return 0.0
    return mi / (0.5 * (t.entropies[0] + t.entropies[1]))


def _ami(t: _Table) -> float:
    k, m = len(t.a), len(t.b)
    if k == m and k <= 1:
        return 1.0
    if k == 1 or m == 1:
        return 0.0
    if t.one_to_one:  # identical partitions: (H - E)/(H - E) = 1, also when both are all singletons
        return 1.0
    emi, _ = expected_mutual_information(t.a, t.b)
    normalizer = 0.5 * (t.entropies[0] + t.entropies[1])
    # scikit-learn keeps the signs of numerator and denominator but bounds them away from 0 by eps
    numerator = t.mutual_info - emi
    denominator = normalizer - emi
    numerator = min(numerator, -_EPS) if numerator < 0 else max(numerator, _EPS)
    denominator = min(denominator, -_EPS) if denominator < 0 else max(denominator, _EPS)
    return numerator / denominator


def _ari(t: _Table) -> float:
    """Hubert-Arabie ARI from the pair confusion counts, in exact integer arithmetic."""
    n = t.n
    same_both = int(np.dot(t.counts, t.counts))
    same_class = int(np.dot(t.a, t.a)) - same_both  # pairs together in y_true only ("false negatives")
    same_cluster = int(np.dot(t.b, t.b)) - same_both  # together in y_pred only ("false positives")
    if same_class == 0 and same_cluster == 0:
        return 1.0
    tp = same_both - n
    tn = n * n - same_class - same_cluster - same_both
    num = 2 * (tp * tn - same_class * same_cluster)
    den = (tp + same_class) * (same_class + tn) + (tp + same_cluster) * (same_cluster + tn)
    return num / den  # int / int is correctly rounded


def _acc(t: _Table) -> float:
    """Best one-to-one matching of clusters to classes; unmatched points are errors."""
    if t.n == 0:
        return 1.0
    k, m = len(t.a), len(t.b)
    if k * m <= _DENSE_ASSIGN_MAX:
        dense = np.zeros((k, m))
        dense[t.rows, t.cols] = t.counts
        r, c = linear_sum_assignment(dense, maximize=True)
        return float(dense[r, c].sum()) / t.n
    # Large and sparse: max-weight matching on the non-zero cells, the smaller side first. A private
    # "no match" column per row (weight eps < 1/k) makes a full matching exist without changing which
    # real matching is optimal, since real weights are integers and the eps terms add up to < 1.
    rows, cols, small = (t.rows, t.cols, k) if k <= m else (t.cols, t.rows, m)
    big = max(k, m)
    eps = 0.5 / (small + 1)
    graph = sp.csr_array(
        (np.concatenate([t.counts.astype(np.float64), np.full(small, eps)]),
         (np.concatenate([rows, np.arange(small)]), np.concatenate([cols, big + np.arange(small)]))),
        shape=(small, big + small),
    )
    r, c = min_weight_full_bipartite_matching(graph, maximize=True)
    real = c < big
    edge = rows.astype(np.int64) * big + cols
    order = np.argsort(edge)
    pos = order[np.searchsorted(edge, r[real].astype(np.int64) * big + c[real], sorter=order)]
    return float(t.counts[pos].sum()) / t.n


def normalized_mutual_info(y_true: Any, y_pred: Any) -> float:
    """NMI with the arithmetic mean of the two entropies (scikit-learn's default)."""
    return _nmi(_Table.from_labels(y_true, y_pred))


def adjusted_mutual_info(y_true: Any, y_pred: Any) -> float:
    """AMI with the arithmetic mean normalisation; the expected MI is exact to 1e-12 nats."""
    return _ami(_Table.from_labels(y_true, y_pred))


def adjusted_rand(y_true: Any, y_pred: Any) -> float:
    """Adjusted Rand index."""
    return _ari(_Table.from_labels(y_true, y_pred))


def clustering_accuracy(y_true: Any, y_pred: Any) -> float:
    """Accuracy under the best one-to-one cluster-to-class matching (Hungarian on the rectangular table)."""
    return _acc(_Table.from_labels(y_true, y_pred))


def clustering_scores(y_true: Any, y_pred: Any) -> dict[str, float | int]:
    """All scores from one contingency table: nmi, ami, ari, acc, num_clusters, num_classes."""
    t = _Table.from_labels(y_true, y_pred)
    return {
        "nmi": _nmi(t),
        "ami": _ami(t),
        "ari": _ari(t),
        "acc": _acc(t),
        "num_clusters": len(t.b),
        "num_classes": len(t.a),
    }


# ---------------------------------------------------------------------- expected mutual information
def _hypergeom_window(alpha: np.ndarray, beta: np.ndarray, n: int, up: int, down: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """E[X log X] for X ~ Hypergeometric(n, alpha, beta) summed over [mode - down, mode + up], and an error
    bound (``up``, ``down`` >= 1).

    The pmf is built from its ratio recurrence ``q(x+1)/q(x) = (alpha-x)(beta-x) / ((x+1)(n-alpha-beta+x+1))``
    starting at ``q(mode) = 1`` and normalised by the window's total ``Z`` - this avoids differences of
    log-gamma values of size ~n log n, which cost ~1e-9 relative precision at n ~ 1e6.

    Dropped mass: the pmf is log-concave (the ratio decreases in x), so beyond the window's upper end u the
    terms are bounded by a geometric series with the ratio r(u) < 1, and ``x log x`` terms by one with
    ratio r(u) * g(u), g(x) = (x+1)log(x+1) / (x log x) decreasing for x >= 2. Below the lower end l the
    ratio q(x-1)/q(x) is < 1 and increasing in x, and x log x < l log l. With dS, dZ the bounds on the
    dropped parts of S = sum x log x q(x) and of Z, the true S'/Z' lies in [S/(Z+dZ), (S+dS)/Z], so
    |S'/Z' - S/Z| <= (dS + (S/Z) dZ) / Z is returned as the bound (inf if a ratio is not < 1).
    """
    alpha = alpha.astype(np.float64)
    beta = beta.astype(np.float64)
    lo = np.maximum(0.0, alpha + beta - n)
    hi = np.minimum(alpha, beta)
    mode = np.clip(np.floor((alpha + 1) * (beta + 1) / (n + 2)), lo, hi)[:, None]
    a, b, c = alpha[:, None], beta[:, None], (n - alpha - beta)[:, None]
    x_up = mode + np.arange(up, dtype=np.float64)  # ratio q(x+1)/q(x), x = mode .. mode+up-1
    q_up = np.cumprod(np.maximum((a - x_up) * (b - x_up), 0.0) / ((x_up + 1) * (c + x_up + 1)), axis=1)
    x_dn = mode - np.arange(down, dtype=np.float64)  # ratio q(x-1)/q(x), x = mode .. mode-down+1
    q_dn = np.cumprod(np.maximum(x_dn * (c + x_dn), 0.0) / np.maximum((a - x_dn + 1) * (b - x_dn + 1), 1.0),
                      axis=1)

    z = 1.0 + q_up.sum(axis=1) + q_dn.sum(axis=1)
    s = xlogy(mode[:, 0], mode[:, 0]) + (xlogy(x_up + 1, x_up + 1) * q_up).sum(axis=1)
    below = np.maximum(x_dn - 1, 0.0)  # q_dn is 0 below the support
    s += (xlogy(below, below) * q_dn).sum(axis=1)

    top, q_top = mode[:, 0] + up, q_up[:, -1]  # last point inside the window, and its q
    r_top = np.maximum((alpha - top) * (beta - top), 0.0) / ((top + 1) * (n - alpha - beta + top + 1))
    open_top = (top < hi) & (q_top > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = r_top * xlogy(top + 1, top + 1) / xlogy(top, top)  # nan/inf for top < 2: bound inf, widen
        dz_top = np.where(open_top, np.where(r_top < 1, q_top * r_top / (1 - r_top), np.inf), 0.0)
        ds_top = np.where(open_top, np.where(rho < 1, xlogy(top, top) * q_top * rho / (1 - rho), np.inf), 0.0)
        bot, q_bot = mode[:, 0] - down, q_dn[:, -1]
        r_bot = np.maximum(bot * (n - alpha - beta + bot), 0.0) / np.maximum(
            (alpha - bot + 1) * (beta - bot + 1), 1.0)
        open_bot = (bot > lo) & (q_bot > 0)
        dz_bot = np.where(open_bot, np.where(r_bot < 1, q_bot * r_bot / (1 - r_bot), np.inf), 0.0)
    below = np.maximum(bot - 1, 0.0)
    ds_bot = np.where(bot > 2, xlogy(below, below) * dz_bot, 0.0)
    mean = s / z
    bound = (ds_top + ds_bot + mean * (dz_top + dz_bot)) / z
    return mean, bound


def _window_sums(alpha: np.ndarray, beta: np.ndarray, n: int, widths: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``_hypergeom_window`` for pairs with individual half-widths, cut where the support ends.

    Pairs are grouped by (upper, lower) width rounded up to steps of 2^(1/4) (<= 19% padding) so that a few
    large blocks do the work, and blocks are chunked to bound memory.
    """
    mode = np.floor((alpha + 1) * (beta + 1) / (n + 2))
    up = np.clip(np.minimum(alpha, beta) - mode, 1, widths)
    down = np.clip(mode - np.maximum(0.0, alpha + beta - n), 1, widths)

    def bucket(w: np.ndarray) -> np.ndarray:
        return np.ceil(2.0 ** (np.ceil(4 * np.log2(w)) / 4)).astype(np.int64)

    up, down = bucket(up), bucket(down)
    mean = np.empty(len(alpha))
    bound = np.empty(len(alpha))
    key = up * (int(down.max()) + 1) + down
    order = np.argsort(key, kind="stable")
    blocks, starts = np.unique(key[order], return_index=True)
    stops = [*starts[1:].tolist(), len(key)]
    for block, start, stop in zip(blocks.tolist(), starts.tolist(), stops, strict=True):
        w_up, w_down = divmod(block, int(down.max()) + 1)
        idx = order[start:stop]
        step = max(1, _CHUNK // (w_up + w_down))
        for start in range(0, len(idx), step):
            part = idx[start:start + step]
            mean[part], bound[part] = _hypergeom_window(alpha[part], beta[part], n, w_up, w_down)
    return mean, bound


def expected_mutual_information(a: Any, b: Any, tol: float = 1e-12) -> tuple[float, float]:
    """Expected mutual information (nats) of two labelings with class sizes ``a`` and cluster sizes ``b``
    under the permutation model, and a rigorous bound on its truncation error (``<= tol``).

    EMI = sum_ij sum_x (x/N) log(N x / (a_i b_j)) P(x; a_i, b_j, N), P hypergeometric. Writing
    mu = a_i b_j / N (the mean of x), the inner sum is (E[x log x] - mu log mu) / N, so only E[x log x]
    needs the pmf. It depends on (a_i, b_j) only through their values, and cluster sizes repeat, so it is
    computed once per distinct pair of sizes and weighted by the multiplicities.

    E[x log x] is summed over a window of ``8 sd + 12`` around the mode (see ``_hypergeom_window`` for the
    bound on what is left out); windows whose weighted bound is too large are doubled until the total bound
    is <= tol. Work is O(distinct pairs x window) instead of O(pairs x min(a_i, b_j)).
    Returns ``(emi, bound)``; the rounding error of float64 arithmetic (~1e-15 relative) is not included.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    n = int(a.sum())
    if n != int(b.sum()):
        raise ValueError(f"marginals disagree: sum(a) = {n} != sum(b) = {int(b.sum())}")
    if n == 0:
        return 0.0, 0.0
    ua, ca = np.unique(a, return_counts=True)
    ub, cb = np.unique(b, return_counts=True)
    alpha = np.repeat(ua, len(ub)).astype(np.float64)
    beta = np.tile(ub, len(ua)).astype(np.float64)
    weight = np.repeat(ca, len(ub)) * np.tile(cb, len(ua)) / n
    mu = alpha * beta / n
    sd = np.sqrt(mu * (n - alpha) * (n - beta) / (n * max(n - 1, 1)))
    span = np.minimum(alpha, beta) - np.maximum(0.0, alpha + beta - n)  # support length - 1
    widths = np.minimum(np.ceil(8 * sd + 12), span + 1).astype(np.int64)
    mean, bound = _window_sums(alpha, beta, n, widths)
    for _ in range(60):
        excess = weight * bound > tol / len(alpha)
        if float(np.dot(weight, bound)) <= tol or not excess.any():
            break
        widths[excess] = np.minimum(2 * widths[excess], span[excess] + 1)
        mean[excess], bound[excess] = _window_sums(alpha[excess], beta[excess], n, widths[excess])
    emi = float(np.dot(weight, mean - xlogy(mu, mu)))
    return emi, float(np.dot(weight, bound))
