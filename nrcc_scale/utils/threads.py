"""Keep torch's CPU thread count as it was around code that resizes the OpenMP pool torch shares.

faiss's ``omp_set_num_threads`` (the kNN of the monitor and the evaluation) and FFCV's loader both change
the thread count of the process's OpenMP runtime, which torch's intra-op pool is. Training on with another
thread count changes speed and the order of floating-point reductions, so a resumed run (which has not run
that code yet) would drift from an uninterrupted one in the last bits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[int]:
    """Run the block, then set torch's intra-op thread count back to what it was (yielded)."""
    threads = torch.get_num_threads()
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)
