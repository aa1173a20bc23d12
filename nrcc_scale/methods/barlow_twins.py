"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of the batch-standardised projections of the
two views is pushed to the identity: sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2.

Standardisation and C use the whole (all-gathered) batch, so several workers compute exactly what one
process would on the concatenated batch."""

from __future__ import annotations

import torch
from torch import Tensor

from nrcc_scale.methods.distributed import gather_with_grad
from nrcc_scale.methods.precision import full_precision
from nrcc_scale.methods.two_view import TwoViewForward, TwoViewMethod


@full_precision
def cross_correlation(z_a: Tensor, z_b: Tensor, eps: float = 1e-5) -> Tensor:
    n = z_a.shape[0]
    a = (z_a - z_a.mean(0)) / torch.sqrt(z_a.var(0, unbiased=False) + eps)
    b = (z_b - z_b.mean(0)) / torch.sqrt(z_b.var(0, unbiased=False) + eps)
    return a.T @ b / n


@full_precision
def barlow_twins_loss(z_a: Tensor, z_b: Tensor, off_diagonal_weight: float, gather: bool = True) -> Tensor:
    if gather:
        z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
    c = cross_correlation(z_a, z_b)
    diag = torch.diagonal(c)
    on = (1.0 - diag).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return on + off_diagonal_weight * off


class BarlowTwinsMethod(TwoViewMethod):
    """Barlow Twins (+NRCC: u = z^a, v^b = z^b with gradient, v^c = sg z^c)."""

    def base_loss(self, out: TwoViewForward) -> Tensor:
        return barlow_twins_loss(out.online_a.z, out.online_b.z, self.cfg.method.barlow_lambda)
