"""Clustering without k (GridShift), its automatic bandwidth, and clustering metrics.

Heavier stages (faiss kNN, UMAP/t-SNE, k-means) live in their own modules and are imported on demand:
``nrcc_scale.cluster.knn``, ``nrcc_scale.cluster.reduce``, ``nrcc_scale.cluster.kmeans``.
"""

from nrcc_scale.cluster.bandwidth import estimate_bandwidth
from nrcc_scale.cluster.gridshift import GridShift
from nrcc_scale.cluster.metrics import clustering_scores

__all__ = ["GridShift", "clustering_scores", "estimate_bandwidth"]
