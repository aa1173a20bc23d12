"""GridShift: mean shift on a grid of occupied cells (Kumar et al., CVPR 2022), exact and vectorised.

Why this module exists
----------------------
The evaluation clusters the 2-5-d UMAP output of an embedding without being told the number of clusters.
GridShift does that in time that, after one binning pass over the N points, only depends on the number of
occupied grid cells. The public reference implementation has two defects that this one avoids on purpose:

* it maps points to cells by truncating toward zero, which merges the cells on both sides of 0 in every
  dimension - here cells are ``floor(x / h)``;
* it renames cluster ids one at a time, in place, so ids are renamed twice along chains of merges and the
  per-point labels are corrupted (and depend on the row order). Here every iteration produces one mapping
  array ``old cell -> new cell`` and the maps are composed, so each point follows its cell exactly. The
  result is the partition of MeanShift++ (Jang & Jiang 2021) on the same grid.

Algorithm (one iteration)
-------------------------
Every occupied cell keeps a point count and a float64 coordinate sum. Each cell's mean moves to
(sum of sums) / (sum of counts) over the 3^d neighbouring occupied cells (itself included); cells are
re-binned by their new means, and cells that land in the same bin merge (sums and counts add). Iterations
stop when one merges nothing, or after ``max_iter``. The surviving cells are the clusters and their means
the modes.

Cells are addressed by one int64 key packed from shifted integer coordinates, so grouping is a
``bincount`` (small grids) or a sort (large, sparse grids) and neighbour lookup is a table gather or a
``searchsorted`` on the sorted keys. If the bounding box holds too many cells for an int64 key (sparse data
with far outliers, or a tiny bandwidth), each dimension's coordinate values are compressed once, keeping
which values are adjacent; this is exact because a mean of points from cells c-1..c+1 always lands in a cell
whose coordinate lies between occupied coordinate values at most 2 apart (see ``_Grid``).

Two backends run the same code (``_Backend``): NumPy (CPU) and PyTorch (CPU or CUDA tensors). Both accumulate
in float64, so on the same input they produce the same partition.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MAX_DIM", "GridShift"]

#: Largest dimension GridShift accepts: each cell visits 3^d neighbours (6561 at d = 8).
MAX_DIM = 8

_KEY_LIMIT = 2**62  # packed keys (plus neighbour offsets) must stay inside int64
_FLOAT_EXACT = 2**52  # integers below this are exact in float64, so keys may be formed with a float matvec
_DENSE_GROUP_MAX = 1 << 23  # largest grid grouped by bincount (int64 counts + table: 128 MiB)
_DENSE_LOOKUP_MAX = 1 << 25  # largest direct-address neighbour table (int32 on NumPy: 128 MiB)
_BACKENDS = ("auto", "numpy", "torch", "torch-cpu", "torch-cuda")


# ----------------------------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class _Grid:
    """How integer cell coordinates are packed into one int64 key.

    Per dimension k, a coordinate c (= floor(x_k / h)) is mapped to an index ``u`` in [1, R_k - 2]; the key
    is ``sum_k u_k * strides[k]``. The padding of one index on either side guarantees that the 3^d neighbour
    keys ``key + offsets`` of any cell are valid keys of the same box, never aliases of a cell on another row.

    Direct mode (``levels is None``): ``u = c - lo + 1``. Coordinates of moved means are clipped to
    [lo, hi]; means are convex combinations of points so this only absorbs float rounding.

    Compressed mode: the sorted coordinate values present in dimension k, plus every single missing value
    between two present values 2 apart, are ``levels[k]``; ``ranks[k]`` gives their indices, consecutive
    for adjacent values and 2 apart across a gap, so adjacency (|c - c'| = 1) is preserved exactly. The
    filled set is closed: a new mean's coordinate lies between coordinates of cells at most 2 apart, which
    are all in the set, so no coordinate outside it can appear (up to rounding, absorbed by searchsorted).
    """

    lo: np.ndarray  # float64 (d,), smallest occupied coordinate per dimension
    hi: np.ndarray  # float64 (d,), largest
    strides: np.ndarray  # int64 (d,)
    total: int  # number of distinct keys in the padded box
    offsets: np.ndarray  # int64 (3^d,), key offsets of the neighbour cells, 0 included
    row_offsets: np.ndarray  # int64 (3^(d-1),), the offsets with a zero step in the last dimension
    levels: tuple[np.ndarray, ...] | None = None
    ranks: tuple[np.ndarray, ...] | None = None

    @property
    def float_packing(self) -> bool:
        """Keys can be computed exactly with a float64 matrix-vector product."""
        return self.levels is None and self.total < _FLOAT_EXACT

    @staticmethod
    def build(lo: np.ndarray, hi: np.ndarray, column_values: Any) -> _Grid:
        """Grid for cell coordinates in [lo, hi]; ``column_values(k)`` gives dimension k's sorted values."""
        sizes = [int(b - a) + 3 for a, b in zip(lo, hi, strict=True)]
        if math.prod(sizes) < _KEY_LIMIT:
            return _Grid._with_sizes(lo, hi, sizes)
        levels, ranks = [], []
        for k in range(len(lo)):
            values = np.asarray(column_values(k), dtype=np.int64)
            gaps = np.diff(values)
            fill = values[:-1][gaps == 2] + 1  # a single missing value between two present ones
            values = np.union1d(values, fill)
            steps = np.minimum(np.diff(values), 2)
            levels.append(values)
            ranks.append(np.concatenate([[1], 1 + np.cumsum(steps)]).astype(np.int64))
        sizes = [int(r[-1]) + 2 for r in ranks]
        if math.prod(sizes) >= _KEY_LIMIT:
            raise ValueError(
                f"bandwidth too small for this data: even after compressing empty coordinates the grid has "
                f"{math.prod(sizes):.3g} cells, more than an int64 key can address; increase the bandwidth"
            )
        return _Grid._with_sizes(lo, hi, sizes, tuple(levels), tuple(ranks))

    @staticmethod
    def _with_sizes(lo: np.ndarray, hi: np.ndarray, sizes: list[int], levels: Any = None,
                    ranks: Any = None) -> _Grid:
        d = len(sizes)
        strides = np.ones(d, dtype=np.int64)
        for k in range(d - 2, -1, -1):
            strides[k] = strides[k + 1] * sizes[k + 1]
        steps = np.array(np.meshgrid(*([[-1, 0, 1]] * d), indexing="ij")).reshape(d, -1).T
        offsets = steps @ strides
        return _Grid(lo=lo, hi=hi, strides=strides, total=math.prod(sizes), offsets=offsets,
                     row_offsets=offsets[steps[:, -1] == 0], levels=levels, ranks=ranks)


# ------------------------------------------------------------------------------------------- the backends
class _Backend:
    """The GridShift algorithm, written once against a handful of array primitives.

    Subclasses provide the primitives for NumPy and PyTorch; everything else (binning, grouping, neighbour
    sums, the merge loop, composing the relabelling maps) is shared so both backends give the same result.
    ``xp`` is the array module (``numpy`` or ``torch``); both spell ``floor``, ``where``, ``searchsorted``
    and ``bincount`` the same way.
    """

    name = "abstract"
    xp: Any

    # primitives -------------------------------------------------------------------------------------
    def asarray(self, a: np.ndarray) -> Any:
        """Move a (small) NumPy array to the backend."""
        raise NotImplementedError

    def to_numpy(self, a: Any) -> np.ndarray:
        raise NotImplementedError

    def arange(self, n: int) -> Any:
        raise NotImplementedError

    def full(self, n: int, value: int) -> Any:
        """int64 vector filled with ``value`` (NumPy may use int32 when the value fits; indices only)."""
        raise NotImplementedError

    def zeros(self, shape: tuple[int, ...]) -> Any:
        """float64 zeros."""
        raise NotImplementedError

    def take_rows(self, a: Any, idx: Any) -> Any:
        """``a[idx]`` along the first axis (``np.take`` is several times faster than fancy indexing)."""
        raise NotImplementedError

    def flatnonzero(self, a: Any) -> Any:
        raise NotImplementedError

    def to_int64(self, a: Any) -> Any:
        raise NotImplementedError

    def clip(self, a: Any, lo: Any, hi: Any) -> Any:
        """Clip in place where possible; bounds are scalars or backend arrays broadcasting against rows."""
        raise NotImplementedError

    def sort_unique(self, keys: Any) -> tuple[Any, Any, Any]:
        """Sorted unique keys, the inverse index and the counts."""
        raise NotImplementedError

    def segment_sum(self, values: Any, index: Any, m: int) -> Any:
        """``out[j] = sum of values[i] with index[i] == j`` over the rows of a 2-D array, float64."""
        raise NotImplementedError

    def row_min_max(self, a: Any) -> tuple[np.ndarray, np.ndarray]:
        """Per-row minimum and maximum as NumPy float arrays."""
        raise NotImplementedError

    def by_dimension(self, X: Any) -> Any:
        """X (n, d) as a C-contiguous (d, n) array."""
        raise NotImplementedError

    def floor_div(self, a: Any, h: float) -> Any:
        """floor(a / h) as a new float64 array (the division is IEEE-exact-rounded on every backend)."""
        raise NotImplementedError

    # the algorithm ----------------------------------------------------------------------------------
    def pack(self, cells: Any, grid: _Grid, clip: bool = True) -> Any:
        """int64 keys of float cell coordinates ``cells`` = floor(x / h), one row per *dimension* (d, n).

        The (d, n) layout keeps every per-dimension pass over N points contiguous. ``clip`` maps moved means
        that float rounding pushed just outside the data's cell range back onto it (never needed for points).
        """
        if grid.levels is None:
            if clip:
                cells = self.clip(cells, self.asarray(grid.lo[:, None]), self.asarray(grid.hi[:, None]))
            if grid.float_packing:  # exact: all values are integers < 2^52
                keys = cells[0] * float(grid.strides[0])
                for k in range(1, len(grid.strides)):
                    keys += cells[k] * float(grid.strides[k])
                keys += float(np.dot(1.0 - grid.lo, grid.strides))
                return self.to_int64(keys)
            keys = (self.to_int64(cells[0]) - int(grid.lo[0] - 1)) * int(grid.strides[0])
            for k in range(1, len(grid.strides)):
                keys += (self.to_int64(cells[k]) - int(grid.lo[k] - 1)) * int(grid.strides[k])
            return keys
        keys = None
        for k, (levels, ranks) in enumerate(zip(grid.levels, grid.ranks, strict=True)):
            pos = self.xp.searchsorted(self.asarray(levels), self.to_int64(cells[k]))
            pos = self.clip(pos, 0, len(levels) - 1)
            part = self.asarray(ranks)[pos] * int(grid.strides[k])
            keys = part if keys is None else keys + part
        return keys

    def group(self, keys: Any, total: int) -> tuple[Any, Any, Any, Any]:
        """Group equal keys: (sorted unique keys, inverse, counts, lookup table or None).

        When the padded grid is small relative to the number of keys a direct-address table (bincount)
        replaces the O(n log n) sort; the table (key -> group, ``m`` where empty) is returned so the
        neighbour search of the next iteration can reuse it.
        """
        if total <= min(_DENSE_GROUP_MAX, 4 * len(keys) + 4096):
            counts = self.xp.bincount(keys, minlength=total)
            uniq = self.flatnonzero(counts)
            table = self.lookup_table(uniq, total)
            return uniq, table[keys], counts[uniq], table
        uniq, inverse, counts = self.sort_unique(keys)
        return uniq, inverse, counts, None

    def lookup_table(self, keys: Any, total: int) -> Any:
        """Direct-address table: ``table[keys[i]] = i``, ``m`` (the index of a zero row) elsewhere."""
        table = self.full(total, len(keys))
        table[keys] = self.arange(len(keys))
        return table

    def neighbour_totals(self, keys: Any, w: Any, grid: _Grid, table: Any) -> Any:
        """Sum the rows of ``w`` (count, coordinate sums) over the 3^d neighbouring occupied cells.

        ``keys`` are sorted and unique. With a direct-address table each offset is one gather. Otherwise the
        3 neighbours along the last dimension (stride 1) of a query row are the (at most) 3 consecutive keys
        from ``searchsorted(keys, q - 1)``, so only 3^(d-1) binary searches are needed; a candidate is a
        neighbour iff its key is <= q + 1. Missing neighbours gather a zero row at index m.
        """
        m = len(keys)
        if table is None and grid.total <= min(_DENSE_LOOKUP_MAX, 8 * len(grid.offsets) * m):
            table = self.lookup_table(keys, grid.total)
        w_ext = self.zeros((m + 3, w.shape[1]))
        w_ext[:m] = w
        acc = self.zeros(tuple(w.shape))
        if table is not None:
            for off in grid.offsets.tolist():
                acc += self.take_rows(w_ext, table[keys + off])
            return acc
        keys_ext = self.full(m + 3, _KEY_LIMIT)
        keys_ext[:m] = keys
        for row in grid.row_offsets.tolist():
            query = keys + row
            start = self.xp.searchsorted(keys, query - 1)
            for step in range(3):
                idx = start + step
                idx = self.xp.where(keys_ext[idx] <= query + 1, idx, m)
                acc += self.take_rows(w_ext, idx)
        return acc

    def run(self, X: Any, h: float, max_iter: int) -> tuple[np.ndarray, np.ndarray, int]:
        """GridShift on float64 backend array X; returns (labels, modes, iterations) as NumPy.

        The state of the occupied cells is their sorted keys and ``w`` = [count, coordinate sums] (float64,
        counts are exact below 2^53), so neighbour sums and merges each move one matrix.
        """
        XT = self.by_dimension(X)  # (d, N), contiguous rows
        cells = self.floor_div(XT, h)
        lo, hi = self.row_min_max(cells)
        magnitude = float(max(np.abs(lo).max(), np.abs(hi).max()))
        if magnitude >= _FLOAT_EXACT:
            raise ValueError(
                f"bandwidth {h:g} is too small for coordinates of magnitude {magnitude * h:.3g}: "
                f"cell indices exceed 2^52; increase the bandwidth"
            )
        grid = _Grid.build(lo, hi, lambda k, cells=cells: np.unique(self.to_numpy(cells[k])))
        keys, point_cell, counts, table = self.group(self.pack(cells, grid, clip=False), grid.total)
        del cells
        w = self.zeros((len(keys), X.shape[1] + 1))
        w[:, 0] = counts
        w[:, 1:] = self.segment_sum(XT.T, point_cell, len(keys))
        del XT
        cell_map = None  # initial cell -> current cell, composed once per iteration
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            acc = self.neighbour_totals(keys, w, grid, table)
            means = acc[:, 1:] / acc[:, :1]
            m_before = len(keys)
            keys, inverse, _, table = self.group(self.pack(self.floor_div(means, h).T, grid), grid.total)
            w[:, 1:] = means * w[:, :1]  # every point of a cell now sits at the cell's new mean
            w = self.segment_sum(w, inverse, len(keys))
            cell_map = inverse if cell_map is None else inverse[cell_map]
            if len(keys) == m_before:  # nothing merged: the partition is final
                break
        labels = point_cell if cell_map is None else cell_map[point_cell]
        modes = w[:, 1:] / w[:, :1]
        return self.to_numpy(labels).astype(np.int64, copy=False), self.to_numpy(modes), n_iter


class _NumpyBackend(_Backend):
    name = "numpy"
    xp = np

    def asarray(self, a: np.ndarray) -> np.ndarray:
        return a

    def to_numpy(self, a: np.ndarray) -> np.ndarray:
        return a

    def arange(self, n: int) -> np.ndarray:
        return np.arange(n, dtype=np.int64)

    def full(self, n: int, value: int) -> np.ndarray:
        return np.full(n, value, dtype=np.int32 if value < 2**31 else np.int64)

    def flatnonzero(self, a: np.ndarray) -> np.ndarray:
        return np.flatnonzero(a)

    def to_int64(self, a: np.ndarray) -> np.ndarray:
        return a.astype(np.int64)

    def clip(self, a: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return np.clip(a, lo, hi, out=a)

    def sort_unique(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        order = np.argsort(keys)
        ordered = keys[order]
        first = np.empty(len(keys), dtype=bool)
        first[:1] = True
        np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        inverse = np.empty(len(keys), dtype=np.int64)
        inverse[order] = np.cumsum(first) - 1
        return ordered[starts], inverse, np.diff(np.append(starts, len(keys)))

    def segment_sum(self, values: np.ndarray, index: np.ndarray, m: int) -> np.ndarray:
        columns = np.ascontiguousarray(values.T)  # bincount wants contiguous weights; free for X by dimension
        # bincount casts its index to intp on every call: cast the (often int32) index once, not once per column
        index = index.astype(np.intp, copy=False)
        out = np.empty((m, len(columns)))
        for k, col in enumerate(columns):
            out[:, k] = np.bincount(index, weights=col, minlength=m)
        return out

    def row_min_max(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return a.min(axis=1), a.max(axis=1)

    def by_dimension(self, X: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(X.T)

    def floor_div(self, a: np.ndarray, h: float) -> np.ndarray:
        out = a / h
        return np.floor(out, out=out)

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape)

    def take_rows(self, a: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return np.take(a, idx, axis=0)


class _TorchBackend(_Backend):
    def __init__(self, device: Any) -> None:
        import torch

        self.xp = torch
        self.device = torch.device(device)
        self.name = "torch-cuda" if self.device.type == "cuda" else "torch-cpu"

    def asarray(self, a: np.ndarray) -> Any:
        return self.xp.as_tensor(a, device=self.device)

    def to_numpy(self, a: Any) -> np.ndarray:
        return a.detach().cpu().numpy()

    def arange(self, n: int) -> Any:
        return self.xp.arange(n, dtype=self.xp.int64, device=self.device)

    def full(self, n: int, value: int) -> Any:
        return self.xp.full((n,), value, dtype=self.xp.int64, device=self.device)

    def flatnonzero(self, a: Any) -> Any:
        return self.xp.nonzero(a).reshape(-1)

    def to_int64(self, a: Any) -> Any:
        return a.to(self.xp.int64)

    def clip(self, a: Any, lo: Any, hi: Any) -> Any:
        return self.xp.clamp(a, lo, hi)

    def sort_unique(self, keys: Any) -> tuple[Any, Any, Any]:
        return self.xp.unique(keys, sorted=True, return_inverse=True, return_counts=True)

    def segment_sum(self, values: Any, index: Any, m: int) -> Any:
        out = self.xp.zeros((m,) + tuple(values.shape[1:]), dtype=self.xp.float64, device=self.device)
        return out.index_add_(0, index, values.to(self.xp.float64))

    def row_min_max(self, a: Any) -> tuple[np.ndarray, np.ndarray]:
        return self.to_numpy(a.amin(1)), self.to_numpy(a.amax(1))

    def by_dimension(self, X: Any) -> Any:
        return X.T.contiguous()

    def floor_div(self, a: Any, h: float) -> Any:
        return self.xp.floor(a / h)

    def zeros(self, shape: tuple[int, ...]) -> Any:
        return self.xp.zeros(shape, dtype=self.xp.float64, device=self.device)

    def take_rows(self, a: Any, idx: Any) -> Any:
        return self.xp.index_select(a, 0, idx)


# ------------------------------------------------------------------------------------------ the estimator
def _torch_module() -> Any:
    """torch if it is already imported (a tensor can only exist then), else None - never import it here."""
    return sys.modules.get("torch")


def _is_tensor(X: Any) -> bool:
    torch = _torch_module()
    return torch is not None and isinstance(X, torch.Tensor)


def _count_nonfinite_rows(X: Any) -> int:
    """Rows with a NaN or Inf; the global min/max (which propagate NaN) make the usual case one cheap pass."""
    if _is_tensor(X):
        if not X.is_floating_point() or bool(X.min().isfinite() & X.max().isfinite()):
            return 0
        return int((~_torch_module().isfinite(X).all(dim=1)).sum())
    X = np.asarray(X)
    if X.dtype.kind != "f" or (np.isfinite(X.min()) and np.isfinite(X.max())):
        return 0
    return int((~np.isfinite(X).all(axis=1)).sum())


def _check_input(X: Any) -> tuple[int, int]:
    """Validate shape and values; return (n, d). Raises ValueError with an actionable message."""
    if _is_tensor(X):
        if X.is_complex():
            raise ValueError("GridShift needs real-valued input, got a complex tensor")
        shape = tuple(X.shape)
    else:
        X = np.asarray(X)
        if X.dtype.kind not in "fiub":
            raise ValueError(f"GridShift needs real-valued numeric input, got dtype {X.dtype}")
        shape = X.shape
    if len(shape) != 2:
        raise ValueError(f"X must be a 2-D array of shape (n_samples, n_features), got shape {shape}")
    n, d = shape
    if n == 0:
        raise ValueError("X is empty (0 samples): nothing to cluster")
    if d == 0:
        raise ValueError("X has 0 features")
    if d > MAX_DIM:
        raise ValueError(
            f"X has {d} dimensions; GridShift visits 3^d = {3**d} neighbour cells per cell and supports "
            f"d <= {MAX_DIM}. It is meant for the 2-5-d output of UMAP: reduce the dimension first "
            f"(e.g. nrcc_scale.cluster.reduce / UMAP to 3 components)"
        )
    bad = _count_nonfinite_rows(X)
    if bad:
        raise ValueError(f"X contains NaN or Inf in {bad} of {n} rows; remove or impute them first")
    return n, d


class GridShift:
    """Mode-seeking clustering on a grid (GridShift / MeanShift++), no number of clusters needed.

    Parameters
    ----------
    bandwidth:
        Grid cell side h (> 0). ``None`` chooses it from the data with
        :func:`nrcc_scale.cluster.estimate_bandwidth` (no labels used); the value used is ``bandwidth_``.
    max_iter:
        Upper bound on the number of shift-and-merge iterations (>= 1); the usual count is 3-10.
    backend:
        ``"auto"`` (PyTorch on the GPU for CUDA tensors, NumPy otherwise), ``"numpy"``, ``"torch"`` (the
        tensor's device; for NumPy input CUDA if available, else CPU), ``"torch-cpu"`` or ``"torch-cuda"``.

    Attributes
    ----------
    labels_: int64 array (n,), cluster of each point, numbered 0..k-1 in the lexicographic order of the
        modes' grid cells - so the numbering does not depend on the row order.
    cluster_centers_: float64 array (k, d), the modes (mean of the points' shifted positions per cluster).
    n_iter_: iterations run. bandwidth_: bandwidth used. backend_: "numpy", "torch-cpu" or "torch-cuda".

    Input may be a NumPy array or a torch tensor (CPU or CUDA), float32 or float64; computation is float64
    (float32 input is upcast, so float32 data gives the partition of its float64 copy). Outputs are NumPy.
    """

    def __init__(self, bandwidth: float | None = None, max_iter: int = 100, backend: str = "auto") -> None:
        self.bandwidth = bandwidth
        self.max_iter = max_iter
        self.backend = backend

    def _backend_for(self, X: Any) -> _Backend:
        if self.backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {self.backend!r}")
        on_cuda = _is_tensor(X) and X.is_cuda
        if self.backend == "numpy" or (self.backend == "auto" and not on_cuda):
            return _NumpyBackend()
        import torch

        if self.backend == "torch-cpu":
            device = "cpu"
        elif self.backend == "torch-cuda" or on_cuda:
            device = X.device if on_cuda else "cuda"
            if not torch.cuda.is_available():
                raise ValueError("backend 'torch-cuda' requested but CUDA is not available")
        elif _is_tensor(X):
            device = X.device
        else:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return _TorchBackend(device)

    def fit(self, X: Any, y: Any = None) -> GridShift:
        """Cluster X (n_samples, n_features); ``y`` is ignored (scikit-learn convention)."""
        if not (isinstance(self.max_iter, int | np.integer) and self.max_iter >= 1):
            raise ValueError(f"max_iter must be an integer >= 1, got {self.max_iter!r}")
        _check_input(X)
        backend = self._backend_for(X)
        if self.bandwidth is None:
            from nrcc_scale.cluster.bandwidth import estimate_bandwidth

            host = X.detach().cpu().numpy() if _is_tensor(X) else np.asarray(X)
            h = float(estimate_bandwidth(host))
        else:
            h = float(self.bandwidth)
        if not (math.isfinite(h) and h > 0):
            raise ValueError(f"bandwidth must be a finite number > 0, got {self.bandwidth!r}")
        if isinstance(backend, _TorchBackend):
            torch = backend.xp
            Xb = torch.as_tensor(X, device=backend.device).to(torch.float64)
        else:
            Xb = (X.detach().cpu().numpy() if _is_tensor(X) else np.asarray(X)).astype(np.float64, copy=False)
        self.labels_, self.cluster_centers_, self.n_iter_ = backend.run(Xb, h, int(self.max_iter))
        self.bandwidth_ = h
        self.backend_ = backend.name
        return self

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit and return ``labels_``."""
        return self.fit(X).labels_
