"""The GridShift iteration, written once against array primitives, and its NumPy and PyTorch backends.

Algorithm (one iteration)
-------------------------
Every occupied cell keeps a point count and a float64 coordinate sum. Each cell's mean moves to
(sum of sums) / (sum of counts) over the 3^d neighbouring occupied cells (itself included); cells are
re-binned by their new means, and cells that land in the same bin merge (sums and counts add). Iterations
stop when one merges nothing, or after ``max_iter``. The surviving cells are the clusters and their means
the modes. Cells are addressed by int64 keys (:class:`nrcc_scale.cluster.gridshift_grid.CellGrid`).

Two backends run the same code (:class:`ArrayBackend`): NumPy (CPU) and PyTorch (CPU or CUDA tensors). Both
accumulate in float64, so on the same input they produce the same partition.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nrcc_scale.cluster.gridshift_grid import FLOAT_EXACT, KEY_LIMIT, CellGrid

__all__ = ["ArrayBackend", "NumpyBackend", "TorchBackend"]

_DENSE_GROUP_MAX = 1 << 23  # largest grid grouped by bincount (int64 counts + table: 128 MiB)
_DENSE_LOOKUP_MAX = 1 << 25  # largest direct-address neighbour table (int32 on NumPy: 128 MiB)


class ArrayBackend:
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
    def pack(self, cells: Any, grid: CellGrid, clip: bool = True) -> Any:
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

    def neighbour_totals(self, keys: Any, w: Any, grid: CellGrid, table: Any) -> Any:
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
        keys_ext = self.full(m + 3, KEY_LIMIT)
        keys_ext[:m] = keys
        for row in grid.row_offsets.tolist():
            query = keys + row
            start = self.xp.searchsorted(keys, query - 1)
            for step in range(3):
                idx = start + step
                idx = self.xp.where(keys_ext[idx] <= query + 1, idx, m)
                acc += self.take_rows(w_ext, idx)
        return acc

    def run(self, X: Any, h: float, max_iter: int, bar: Any = None) -> tuple[np.ndarray, np.ndarray, int]:
        """GridShift on float64 backend array X; returns (labels, modes, iterations) as NumPy.

        The state of the occupied cells is their sorted keys and ``w`` = [count, coordinate sums] (float64,
        counts are exact below 2^53), so neighbour sums and merges each move one matrix.
        """
        XT = self.by_dimension(X)  # (d, N), contiguous rows
        cells = self.floor_div(XT, h)
        lo, hi = self.row_min_max(cells)
        magnitude = float(max(np.abs(lo).max(), np.abs(hi).max()))
        if magnitude >= FLOAT_EXACT:
            raise ValueError(
                f"bandwidth {h:g} is too small for coordinates of magnitude {magnitude * h:.3g}: "
                f"cell indices exceed 2^52; increase the bandwidth"
            )
        grid = CellGrid.build(lo, hi, lambda k, cells=cells: np.unique(self.to_numpy(cells[k])))
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
            if bar is not None:  # a tqdm bar (rate, occupied cells); the iteration count is not known ahead
                bar.update(1)
                bar.set_postfix(cells=len(keys), refresh=False)
            if len(keys) == m_before:  # nothing merged: the partition is final
                break
        labels = point_cell if cell_map is None else cell_map[point_cell]
        modes = w[:, 1:] / w[:, :1]
        return self.to_numpy(labels).astype(np.int64, copy=False), self.to_numpy(modes), n_iter


class NumpyBackend(ArrayBackend):
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


class TorchBackend(ArrayBackend):
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
