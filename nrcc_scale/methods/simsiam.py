"""SimSiam (Chen & He 2021): negative cosine between the predictor output and the stop-gradient
projection of the other view, symmetrised: L = D(p_a, sg z_b)/2 + D(p_b, sg z_a)/2."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from nrcc_scale.methods.precision import full_precision
from nrcc_scale.methods.two_view import TwoViewForward, TwoViewMethod


@full_precision
def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


@full_precision
def simsiam_loss(p_a: Tensor, p_b: Tensor, z_a: Tensor, z_b: Tensor) -> Tensor:
    return 0.5 * negative_cosine(p_a, z_b) + 0.5 * negative_cosine(p_b, z_a)


class SimSiamMethod(TwoViewMethod):
    """SimSiam (+NRCC: u = predictor output, v^b = sg z of the other view, v^c = sg z^c)."""

    has_predictor = True

    def base_loss(self, out: TwoViewForward) -> Tensor:
        assert out.predicted_a is not None and out.predicted_b is not None
        return simsiam_loss(out.predicted_a, out.predicted_b, out.online_a.z, out.online_b.z)

    def nrcc_anchors(self, out: TwoViewForward) -> tuple[Tensor, Tensor]:
        assert out.predicted_a is not None and out.predicted_b is not None
        return out.predicted_a, out.predicted_b

    def nrcc_positives(self, out: TwoViewForward) -> tuple[Tensor, Tensor]:
        return out.online_b.z.detach(), out.online_a.z.detach()
