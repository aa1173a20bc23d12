"""GridShift's cells: integer cell coordinates packed into one int64 key per cell.

Cells are addressed by one int64 key packed from shifted integer coordinates, so grouping is a
``bincount`` (small grids) or a sort (large, sparse grids) and neighbour lookup is a table gather or a
``searchsorted`` on the sorted keys (``nrcc_scale.cluster.gridshift_backends``). If the bounding box holds too
many cells for an int64 key (sparse data with far outliers, or a tiny bandwidth), each dimension's coordinate
values are compressed once, keeping which values are adjacent; this is exact because a mean of points from
cells c-1..c+1 always lands in a cell whose coordinate lies between occupied coordinate values at most 2
apart (see :class:`CellGrid`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FLOAT_EXACT", "KEY_LIMIT", "CellGrid"]

KEY_LIMIT = 2**62  # packed keys (plus neighbour offsets) must stay inside int64
FLOAT_EXACT = 2**52  # integers below this are exact in float64, so keys may be formed with a float matvec


@dataclass(frozen=True)
class CellGrid:
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
        return self.levels is None and self.total < FLOAT_EXACT

    @staticmethod
    def build(lo: np.ndarray, hi: np.ndarray, column_values: Any) -> CellGrid:
        """Grid for cell coordinates in [lo, hi]; ``column_values(k)`` gives dimension k's sorted values."""
        sizes = [int(b - a) + 3 for a, b in zip(lo, hi, strict=True)]
        if math.prod(sizes) < KEY_LIMIT:
            return CellGrid._with_sizes(lo, hi, sizes)
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
        if math.prod(sizes) >= KEY_LIMIT:
            raise ValueError(
                f"bandwidth too small for this data: even after compressing empty coordinates the grid has "
                f"{math.prod(sizes):.3g} cells, more than an int64 key can address; increase the bandwidth"
            )
        return CellGrid._with_sizes(lo, hi, sizes, tuple(levels), tuple(ranks))

    @staticmethod
    def _with_sizes(lo: np.ndarray, hi: np.ndarray, sizes: list[int], levels: Any = None,
                    ranks: Any = None) -> CellGrid:
        d = len(sizes)
        strides = np.ones(d, dtype=np.int64)
        for k in range(d - 2, -1, -1):
            strides[k] = strides[k + 1] * sizes[k + 1]
        steps = np.array(np.meshgrid(*([[-1, 0, 1]] * d), indexing="ij")).reshape(d, -1).T
        offsets = steps @ strides
        return CellGrid(lo=lo, hi=hi, strides=strides, total=math.prod(sizes), offsets=offsets,
                     row_offsets=offsets[steps[:, -1] == 0], levels=levels, ranks=ranks)
