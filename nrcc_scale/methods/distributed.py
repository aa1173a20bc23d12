"""Collective helpers that also work in a single process (where they are the identity).

``gather_with_grad`` is the gradient-preserving all-gather SimCLR uses for negatives from every worker:
the forward concatenates every worker's rows in rank order; the backward sums the incoming gradients over
workers (each worker's loss used every row) and hands each worker the slice of its own rows. With DDP
averaging parameter gradients, the result equals one process computing the mean loss over the whole batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rows = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """All rows of every worker, in rank order; gradients flow back to each worker's own rows."""
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_mean(x: Tensor) -> Tensor:
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= dist.get_world_size()
    return x


@torch.no_grad()
def broadcast_from_rank0(*tensors: Tensor) -> None:
    """Overwrite each tensor, in place, with rank 0's copy (identity in a single process): state that every
    worker computes from the same gathered data can still differ in the last bits when the computation
    uses atomics (``index_add_`` on CUDA), and must not drift apart over a run."""
    if not is_distributed():
        return
    for t in tensors:
        dist.broadcast(t, src=0)


def row_offset(local_rows: int) -> int:
    """Index of this worker's first row in a gathered batch (equal batch sizes on every worker)."""
    return rank() * local_rows
