"""Forwards that must not move BatchNorm running statistics (SGHMC chains, x^c embeddings, monitors)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextlib.contextmanager
def preserved_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Run train-mode forwards (batch statistics) without changing any running mean, variance or counter.

    The layers get scratch copies of their buffers for the duration and the original tensors back
    afterwards. Swapping instead of copying back matters: a train-mode BatchNorm saves its running-stat
    tensors for the backward pass, so writing into them in place would invalidate the main loss's graph.
    """
    layers = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    originals = [(m.running_mean, m.running_var, m.num_batches_tracked) for m in layers]
    for m in layers:
        m.running_mean = m.running_mean.clone()
        m.running_var = m.running_var.clone()
        m.num_batches_tracked = m.num_batches_tracked.clone()
    try:
        yield
    finally:
        for m, (mean, var, count) in zip(layers, originals, strict=True):
            m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count
