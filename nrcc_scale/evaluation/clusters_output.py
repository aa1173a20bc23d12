"""The clusters a run found, as a file: which sample went to which cluster, and how surely.

``clusters.parquet`` (``clusters.csv`` when pyarrow is missing) has one row per clustered sample:

=====================  ================================================================================
``index``              row of the evaluation set (int)
``sample_id``          the image file's path for file-based data, else the row index (as text)
``cluster``            the cluster id (GridShift's numbering); -1 = ``unassigned`` (only from ``assign``)
``distance_to_mode``   Euclidean distance to its cluster's mode in the UMAP space GridShift ran on
``confidence``         ``1 - d_own / d_next`` clipped to [0, 1], where ``d_own`` is the distance to its own
                       cluster's mode and ``d_next`` to the nearest other mode (same space): 1 at its mode,
                       0 on the boundary with another cluster; 1 when only one cluster exists; 0 unassigned
=====================  ================================================================================

Beside it the run keeps what ``python -m nrcc_scale.assign`` needs to place new images: ``cluster_modes.npy``
(the modes), ``reduced.npy`` (every sample's UMAP coordinates) and ``assign_calibration.json`` (the distance
beyond which a new image is ``unassigned``, calibrated on the run's own embeddings, see :func:`calibrate`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from nrcc_scale.utils.files import atomic_path, atomic_write_json

CLUSTERS_PARQUET = "clusters.parquet"
CLUSTERS_CSV = "clusters.csv"
MODES_FILE = "cluster_modes.npy"
REDUCED_FILE = "reduced.npy"
CALIBRATION_FILE = "assign_calibration.json"
UNASSIGNED = -1
CALIBRATION_QUANTILE = 0.99  # a new image farther from the training set than 99% of training images are
ASSIGN_K = 10  # training neighbours that vote for a new image's cluster


def mode_distances(reduced: np.ndarray, modes: np.ndarray, clusters: np.ndarray,
                   block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(distance to own mode, confidence) of every point; ``clusters`` index rows of ``modes`` (-1: none).
    Confidence = 1 - own / next-nearest mode distance. Computed over row blocks: the full N x M distance
    matrix would be 12.6 GB at 1.28M points and 1234 modes (it was, and the evaluation was killed for it)."""
    x = np.asarray(reduced, dtype=np.float64)
    m = np.asarray(modes, dtype=np.float64)
    n = len(x)
    assigned = clusters >= 0
    own = np.full(n, np.nan)
    nxt = np.full(n, np.inf)
    m2 = (m**2).sum(1)
    for s in range(0, n, block):
        p = x[s:s + block]
        d = np.sqrt(np.maximum((p**2).sum(1)[:, None] - 2 * p @ m.T + m2[None, :], 0.0))
        rows = np.flatnonzero(assigned[s:s + block])
        own[s + rows] = d[rows, clusters[s + rows]]
        d[rows, clusters[s + rows]] = np.inf  # the next-nearest mode is the nearest other than its own
        if m.shape[0] >= 2:
            nxt[s:s + block] = d.min(1)
    if m.shape[0] < 2:
        return own, np.where(assigned, 1.0, 0.0)
    conf = np.clip(1.0 - own / np.maximum(nxt, 1e-12), 0.0, 1.0)
    conf[~assigned] = 0.0
    return own, conf


def sample_ids(source: Any, rows: np.ndarray) -> list[str]:
    """The file path of each row when the source reads files (through subsets and concatenations), else
    the row index."""
    return [_sample_id(source, int(r)) for r in rows]


def _sample_id(source: Any, row: int) -> str:
    from nrcc_scale.data.base import ConcatSource, SubsetSource
    from nrcc_scale.data.unlabelled import UnlabelledView

    original = row
    while True:
        if isinstance(source, SubsetSource):
            source, row = source.base, int(source.indices[row])
        elif isinstance(source, ConcatSource):
            part = int(np.searchsorted(source.offsets, row, side="right") - 1)
            source, row = source.parts[part], int(row - source.offsets[part])
        elif isinstance(source, UnlabelledView):
            source = source.base
        else:
            break
    path = getattr(source, "path", None)
    return str(path(row)) if callable(path) else str(original)


def write_table(path: Path, columns: dict[str, Any]) -> Path:
    """Parquet (when ``path`` ends in .parquet and pyarrow imports), else CSV beside it; returns the file."""
    try:
        if path.suffix == ".csv":
            raise ImportError
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        import csv

        out = path.with_suffix(".csv")
        with atomic_path(out) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(list(columns))
            writer.writerows(zip(*columns.values(), strict=True))
        return out
    with atomic_path(path) as tmp:
        pq.write_table(pa.table({k: list(v) if isinstance(v, list) else np.asarray(v) for k, v in columns.items()}),
                       tmp)
    return path


def read_table(path: Path) -> dict[str, np.ndarray]:
    """A clusters file back as columns (parquet or CSV)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    import csv

    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    cols = {k: np.asarray([r[k] for r in rows]) for k in (rows[0] if rows else {})}
    for k in ("index", "cluster"):
        if k in cols:
            cols[k] = cols[k].astype(np.int64)
    for k in ("distance_to_mode", "confidence"):
        if k in cols:
            cols[k] = cols[k].astype(np.float64)
    return cols


def find_clusters_file(run_dir: Path) -> Path | None:
    for name in (CLUSTERS_PARQUET, CLUSTERS_CSV):
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def cluster_columns(index: np.ndarray, ids: list[str], clusters: np.ndarray, reduced: np.ndarray,
                    modes: np.ndarray) -> dict[str, Any]:
    dist, conf = mode_distances(reduced, modes, clusters)
    return {"index": np.asarray(index, dtype=np.int64), "sample_id": ids,
            "cluster": np.asarray(clusters, dtype=np.int64), "distance_to_mode": dist.astype(np.float64),
            "confidence": conf.astype(np.float64)}


def calibrate(features: np.ndarray, quantile: float = CALIBRATION_QUANTILE,
              nearest: np.ndarray | None = None) -> dict[str, Any]:
    """The ``unassigned`` distance: the ``quantile`` of every training embedding's cosine distance to its
    nearest *other* training embedding. A new image from the training distribution is about as far from
    its nearest training image, so about ``1 - quantile`` of such images are called unassigned; an image
    unlike anything in the run is farther. ``nearest``: those distances when already known (the pipeline
    reads them off its cosine kNN graph), so no second search over every row is made."""
    d = nearest_other_distance(features) if nearest is None else np.asarray(nearest, dtype=np.float64)
    return {"metric": "cosine", "k": ASSIGN_K, "quantile": quantile, "threshold": float(np.quantile(d, quantile)),
            "median_nearest_distance": float(np.median(d)), "num_training": int(len(features))}


def nearest_other_distance(features: np.ndarray, exact_numpy_limit: int = 10_000) -> np.ndarray:
    """Cosine distance of every row to its nearest other row: blocked NumPy products for small sets (no
    index to build, about 0.1 s for digits), faiss (nrcc_scale.cluster.knn) beyond."""
    if len(features) > exact_numpy_limit:
        from nrcc_scale.cluster.knn import knn_search

        return knn_search(features, None, 1, metric="cosine", exclude_self=True).distances[:, 0].astype(np.float64)
    x = np.asarray(features, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    out = np.empty(len(x))
    for s in range(0, len(x), 2048):
        sim = x[s:s + 2048] @ x.T
        sim[np.arange(len(sim)), np.arange(s, s + len(sim))] = -np.inf  # not itself
        out[s:s + 2048] = np.maximum(1.0 - sim.max(1), 0.0)
    return out


def write_run_clusters(out_dir: Path, source: Any, rows: np.ndarray, features: np.ndarray, reduced: np.ndarray,
                       predicted: np.ndarray, modes: np.ndarray,
                       nearest: np.ndarray | None = None) -> dict[str, str]:
    """clusters.parquet, the modes, the UMAP coordinates and the assign calibration of one run."""
    ids = sample_ids(source, rows) if source is not None else [str(int(r)) for r in rows]
    table = write_table(out_dir / CLUSTERS_PARQUET, cluster_columns(rows, ids, predicted, reduced, modes))
    for name, array in ((MODES_FILE, np.asarray(modes, dtype=np.float64)),
                        (REDUCED_FILE, np.asarray(reduced, dtype=np.float32))):
        with atomic_path(out_dir / name) as tmp, open(tmp, "wb") as fh:
            np.save(fh, array)
    calibration = calibrate(features, nearest=nearest)
    if source is not None:  # how assign must normalise new images: as the run's own evaluation images
        calibration.update(mean=list(source.mean), std=list(source.std))
    atomic_write_json(out_dir / CALIBRATION_FILE, calibration)
    return {"clusters": str(table), "cluster_modes": str(out_dir / MODES_FILE)}


def read_calibration(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / CALIBRATION_FILE).read_text())
