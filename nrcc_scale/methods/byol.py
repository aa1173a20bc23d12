"""BYOL (NRCC eq 4): the online predictor output regresses the target projection of the other view."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from nrcc_scale.methods.momentum import MomentumMethod
from nrcc_scale.methods.precision import full_precision
from nrcc_scale.methods.two_view import TwoViewForward, TwoViewMethod


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


class BYOLMethod(MomentumMethod, TwoViewMethod):
    """BYOL (+NRCC: u = online predictor output, v^b = z̄ of the other view, v^c = z̄^c from the target
    without predictor, paper section 3.6.1). The EMA target and its update come from MomentumMethod."""

    has_predictor = True

    def base_loss(self, out: TwoViewForward) -> Tensor:
        assert out.predicted_a is not None and out.predicted_b is not None
        assert out.target_a is not None and out.target_b is not None
        return byol_loss(out.predicted_a, out.predicted_b, out.target_a.z.detach(), out.target_b.z)

    def nrcc_anchors(self, out: TwoViewForward) -> tuple[Tensor, Tensor]:
        if self.nrcc.anchor == "predictor":
            assert out.predicted_a is not None and out.predicted_b is not None
            return out.predicted_a, out.predicted_b
        return out.online_a.z, out.online_b.z

    def nrcc_positives(self, out: TwoViewForward) -> tuple[Tensor, Tensor]:
        assert out.target_a is not None and out.target_b is not None
        return out.target_b.z.detach(), out.target_a.z.detach()
