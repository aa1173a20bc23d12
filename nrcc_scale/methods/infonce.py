"""InfoNCE / NT-Xent (NRCC eqs 1-3, SimCLR): 2n anchors, each with one positive (its other view) and the
2(n-1) other views of the batch as negatives; negatives come from every worker."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nrcc_scale.methods.base import normalized
from nrcc_scale.methods.distributed import gather_with_grad, row_offset
from nrcc_scale.methods.precision import full_precision
from nrcc_scale.methods.two_view import TwoViewForward, TwoViewMethod


@full_precision
def info_nce_loss(z_a: Tensor, z_b: Tensor, temperature: float, gather: bool = True) -> Tensor:
    """Mean over this worker's 2n anchors of -log softmax(positive) among all other 2N - 1 views.

    ``z_a``, ``z_b``: L2-normalised embeddings (n x d) of the two views of this worker's images.
    """
    n = z_a.shape[0]
    all_a = gather_with_grad(z_a) if gather else z_a
    all_b = gather_with_grad(z_b) if gather else z_b
    big_n = all_a.shape[0]
    offset = row_offset(n) if gather else 0
    candidates = torch.cat([all_a, all_b], dim=0)  # 2N x d: views a then views b
    anchors = torch.cat([z_a, z_b], dim=0)  # 2n x d
    logits = anchors @ candidates.T / temperature  # 2n x 2N
    local = torch.arange(n, device=z_a.device) + offset
    self_cols = torch.cat([local, local + big_n])  # each anchor's own column
    positive_cols = torch.cat([local + big_n, local])  # the other view of the same image
    rows = torch.arange(2 * n, device=z_a.device)
    logits = logits.clone()
    logits[rows, self_cols] = float("-inf")
    return F.cross_entropy(logits, positive_cols)


class InfoNCEMethod(TwoViewMethod):
    """SimCLR's InfoNCE (+NRCC: u = z^a, v^b = z^b with gradient, v^c = sg z^c, same network)."""

    def base_loss(self, out: TwoViewForward) -> Tensor:
        return info_nce_loss(normalized(out.online_a.z), normalized(out.online_b.z), self.cfg.method.temperature)
