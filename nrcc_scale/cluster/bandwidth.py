"""Automatic GridShift bandwidth from the data alone: the most stable scale of the mode partition.

The rule
--------
GridShift's bandwidth h sets the scale of the modes it finds: far too small and every dense patch is a
cluster, far too large and everything merges. Between the two, data with real cluster structure (the UMAP
output of a good embedding) has a range of h over which the partition hardly changes - the clusters are
separated by more than h and are each one mode at that scale. We look for that range directly:

1. Run GridShift on a log grid of bandwidths, ``steps_per_octave`` per doubling, from the data's extent
   (one cluster) down until the partition is fragmented (more than half the points in clusters of fewer
   than ``min_cluster_size`` points). Large inputs are subsampled (seeded, ``max_samples`` points).
2. Measure how much the partition changes between consecutive bandwidths with the adjusted Rand index
   (ARI) between them; tiny spurious clusters barely move it, merges of real clusters do. Links touching
   a one-cluster partition count as unstable - "everything is one cluster" is always stable and never the
   answer we want.
3. Score each bandwidth by the mean ARI of the links within +-``window_octaves``/2 octaves (a factor 4 in
   h by default: real clusters survive a doubling and a halving of the bandwidth). Take the best score, the
   contiguous run of bandwidths scoring within ``tolerance`` of it, and return the run's middle - the centre
   of the most stable plateau, not its edge, where the partition is about to change.

Why this rule: it is scale-free (the grid is relative to the data's extent, so X * c gives h * c), it adapts
to the number and size of clusters (a kNN or distance-quantile rule needs to know what fraction of the data a
cluster holds, which differs by orders of magnitude between CIFAR-10 and ImageNet-1k), it does not depend on
the sample size the way kNN distances do, and it uses no labels. It costs a few dozen GridShift runs on at
most ``max_samples`` points (~1.5 s at 10^6 points). It assumes there are at least two clusters.

Limits: when the embedding has no class-level cluster structure (many overlapping classes), the most stable
partition can be much finer than the classes; inputs with fewer than ~2 x ``min_cluster_size`` points are
"fragmented" from the start and get the data's extent (one cluster).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nrcc_scale.cluster.gridshift_core import check_input, run_gridshift
from nrcc_scale.cluster.metrics import adjusted_rand

__all__ = ["BandwidthScan", "bandwidth_scan", "estimate_bandwidth"]


@dataclass(frozen=True)
class BandwidthScan:
    """The scale-space scan behind :func:`estimate_bandwidth` (ascending bandwidths), for diagnostics."""

    bandwidths: np.ndarray  # (s,) ascending
    n_clusters: np.ndarray  # (s,) clusters found on the (sub)sample at each bandwidth
    links: np.ndarray  # (s-1,) ARI between the partitions at bandwidths i and i+1 (nan: one cluster)
    scores: np.ndarray  # (s,) mean link ARI in the window around i (nan where the window is incomplete)
    bandwidth: float  # the choice
    n_samples: int  # points the scan used


def _fragmented(labels: np.ndarray, min_cluster_size: int) -> bool:
    sizes = np.bincount(labels)
    return float(sizes[sizes < min_cluster_size].sum()) > 0.5 * len(labels)


def bandwidth_scan(
    X: Any,
    *,
    steps_per_octave: int = 4,
    window_octaves: float = 2.0,
    tolerance: float = 0.005,
    min_cluster_size: int = 10,
    max_samples: int = 50_000,
    max_steps: int = 80,
    random_state: int = 0,
) -> BandwidthScan:
    """Scan bandwidths and pick the centre of the most stable plateau; see the module docstring."""
    check_input(X)
    X = np.asarray(X.detach().cpu().numpy() if hasattr(X, "detach") else X, dtype=np.float64)
    if len(X) > max_samples:
        rng = np.random.default_rng(random_state)
        X = X[np.sort(rng.choice(len(X), max_samples, replace=False))]
    extent = float(np.ptp(X, axis=0).max())
    if extent == 0.0:  # all points coincide: any bandwidth gives one cluster
        return BandwidthScan(np.array([1.0]), np.array([1]), np.empty(0), np.array([np.nan]), 1.0, len(X))

    ratio = 2.0 ** (1.0 / steps_per_octave)
    bandwidths, partitions = [], []
    h = extent
    for _ in range(max_steps):
        labels = run_gridshift(X, h, backend="numpy").labels
        bandwidths.append(h)
        partitions.append(labels)
        if _fragmented(labels, min_cluster_size):
            break
        h /= ratio
    bandwidths, partitions = bandwidths[::-1], partitions[::-1]
    n_clusters = np.array([int(p.max()) + 1 for p in partitions])
    links = np.array([
        adjusted_rand(a, b) if min(ka, kb) > 1 else np.nan
        for a, b, ka, kb in zip(partitions[:-1], partitions[1:], n_clusters[:-1], n_clusters[1:], strict=True)
    ])

    half = max(1, round(window_octaves * steps_per_octave / 2))
    scores = np.full(len(partitions), np.nan)
    for i in range(half, len(partitions) - half):
        scores[i] = links[i - half:i + half].mean()  # links between partitions i-half .. i+half
    if np.isfinite(scores).any():
        best = int(np.nanargmax(scores))
        near = np.nan_to_num(scores, nan=-1.0) >= scores[best] - tolerance
        lo = hi = best  # the run of near-best scores around the best one; take its middle
        while lo > 0 and near[lo - 1]:
            lo -= 1
        while hi < len(near) - 1 and near[hi + 1]:
            hi += 1
        choice = (lo + hi) // 2
    else:  # too short a scan to score: the finest bandwidth with more than one cluster, if any
        multi = np.flatnonzero(n_clusters > 1)
        choice = int(multi[-1]) if len(multi) else len(bandwidths) - 1
    return BandwidthScan(np.array(bandwidths), n_clusters, links, scores, float(bandwidths[choice]), len(X))


def estimate_bandwidth(
    X: Any,
    *,
    steps_per_octave: int = 4,
    window_octaves: float = 2.0,
    tolerance: float = 0.005,
    min_cluster_size: int = 10,
    max_samples: int = 50_000,
    random_state: int = 0,
) -> float:
    """GridShift bandwidth for X (n_samples, n_features) chosen without labels.

    The centre of the most stable plateau of the GridShift partition across bandwidths: stability at h is
    the mean ARI between partitions at consecutive bandwidths of a log grid (``steps_per_octave`` steps per
    doubling) within a factor ``2 ** (window_octaves / 2)`` of h; of the run of bandwidths scoring within
    ``tolerance`` of the best, the middle one is returned. Deterministic: large inputs are subsampled to
    ``max_samples`` points with ``random_state``. Scale-equivariant: ``estimate_bandwidth(c * X) ==
    c * estimate_bandwidth(X)`` (exactly for powers of two, up to float rounding of cell boundaries
    otherwise). See the module docstring for why this rule; :func:`bandwidth_scan` returns the whole scan.
    """
    return bandwidth_scan(
        X,
        steps_per_octave=steps_per_octave,
        window_octaves=window_octaves,
        tolerance=tolerance,
        min_cluster_size=min_cluster_size,
        max_samples=max_samples,
        random_state=random_state,
    ).bandwidth
