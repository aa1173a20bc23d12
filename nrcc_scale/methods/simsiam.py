"""SimSiam (Chen & He 2021): negative cosine between the predictor output and the stop-gradient
projection of the other view, symmetrised: L = D(p_a, sg z_b)/2 + D(p_b, sg z_a)/2."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from nrcc_scale.methods.precision import full_precision


@full_precision
def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


@full_precision
def simsiam_loss(p_a: Tensor, p_b: Tensor, z_a: Tensor, z_b: Tensor) -> Tensor:
    return 0.5 * negative_cosine(p_a, z_b) + 0.5 * negative_cosine(p_b, z_a)
