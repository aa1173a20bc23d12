"""nrcc-scale: contrastive clustering at scale (NRCC, CueCo and baselines on Ray, UMAP + GridShift without k)."""

__version__ = "0.1.0"
