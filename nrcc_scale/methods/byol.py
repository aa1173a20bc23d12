"""BYOL (NRCC eq 4): the online predictor output regresses the target projection of the other view."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from nrcc_scale.methods.precision import full_precision


@full_precision
def regression_loss(p: Tensor, z_target: Tensor) -> Tensor:
    """Mean over rows of ||normalize(p) - normalize(sg z)||^2 = 2 - 2 cos(p, z)."""
    p = F.normalize(p, dim=-1)
    z = F.normalize(z_target.detach(), dim=-1)
    return (2.0 - 2.0 * (p * z).sum(dim=-1)).mean()


@full_precision
def byol_loss(p_a: Tensor, p_b: Tensor, zt_a: Tensor, zt_b: Tensor) -> Tensor:
    """Symmetrised: the mean over both directions, i.e. over all 2n anchors (as the reference code)."""
    return 0.5 * (regression_loss(p_a, zt_b) + regression_loss(p_b, zt_a))
