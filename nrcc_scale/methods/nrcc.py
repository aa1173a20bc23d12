"""The NRCC regularizer (docs/spec/METHOD.md; NRCC eqs 5-6 written the way its gradients 10-14 require).

For an anchor u_i (unit vector):

    R_i = weight * [ LSE_{j != i}(<u_i, v^c_j> / T)  -  positive_weight * LSE_j(<u_i, v^b_j> / T) ]

The first term pushes u_i away from the (hard) negative views v^c_j of the *other* images, weighted by a
softmax, so a near-duplicate negative does most of the pushing; the second pulls u_i towards its own
positive v^b_i and (less) towards the other v^b_j. The printed fraction of eqs 5-6 is upside down with
respect to this; docs/spec/METHOD.md explains why this form is the one consistent with the paper's analysis.

j runs over the whole batch of every worker (``v_pos`` and ``v_neg`` already gathered by the caller), and
``offset`` locates this worker's anchors in it, so "j != i" removes the anchor's own x^c.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nrcc_scale.methods.precision import full_precision


@full_precision
def nrcc_regularizer(u: Tensor, v_pos: Tensor, v_neg: Tensor, *, weight: float, temperature: float,
                     positive_weight: float = 1.0, exclude_self: bool = True, offset: int = 0) -> Tensor:
    """Mean over the n anchors of R_i.

    u: n x d anchors; v_pos: N x d positives v^b (row ``offset + i`` is anchor i's own positive);
    v_neg: N x d negatives v^c (row ``offset + i`` is anchor i's own SGHMC view).
    """
    n = u.shape[0]
    neg_logits = u @ v_neg.T / temperature  # n x N
    if exclude_self:
        own = torch.arange(n, device=u.device) + offset
        neg_logits = neg_logits.clone()
        neg_logits[torch.arange(n, device=u.device), own] = float("-inf")
    repulsion = torch.logsumexp(neg_logits, dim=1)
    if positive_weight:
        attraction = torch.logsumexp(u @ v_pos.T / temperature, dim=1)
        per_anchor = repulsion - positive_weight * attraction
    else:
        per_anchor = repulsion
    return weight * per_anchor.mean()
