"""The NRCC regularizer (docs/spec/METHOD.md; NRCC eqs 5-6 written the way its gradients 10-14 require).

For an anchor u_i (unit vector):

    R_i = weight * [ LSE_{j != i}(<u_i, v^c_j> / T)  -  positive_weight * LSE_j(<u_i, v^b_j> / T) ]

The first term pushes u_i away from the (hard) negative views v^c_j of the *other* images, weighted by a
softmax, so a near-duplicate negative does most of the pushing; the second pulls u_i towards its own
positive v^b_i and (less) towards the other v^b_j. The printed fraction of eqs 5-6 is upside down with
respect to this; docs/spec/METHOD.md explains why this form is the one consistent with the paper's analysis.

Two layers, in the style of lightly's loss modules:

* :func:`nrcc_regularizer` — the formula on tensors that are already normalised and gathered;
* :class:`NRCCLoss` — the ``nn.Module`` a method composes: it owns lambda (``weight``), tau (``temperature``),
  the cross-worker gather of positives and negatives, the self-exclusion (which needs this worker's row
  offset in the gathered batch) and the symmetrisation over the two views. A method only says what its
  anchors u, positives v^b and negatives v^c are.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nrcc_scale.config import NRCCConfig
from nrcc_scale.methods.base import normalized
from nrcc_scale.methods.distributed import gather_no_grad, gather_with_grad, row_offset
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


class NRCCLoss(nn.Module):
    """The NRCC regularizer of one step, over one or both views.

    ``forward(anchors, positives, negatives)`` takes this worker's rows, un-normalised:

    * ``anchors``: (u^a, u^b), the anchors of view a and of view b;
    * ``positives``: (v^b of the view-a anchors, v^b of the view-b anchors) — each anchor's positive is the
      other view. A positive that requires grad is gathered with its gradient (InfoNCE, Barlow Twins: the
      regularizer also trains the positive's network); a detached one without (BYOL, SimSiam);
    * ``negatives``: v^c, the negative views' embeddings (no gradient).

    With ``gather`` the positives and negatives of every worker are the candidates j, and the anchor's own
    x^c is found at its row in the gathered batch; with ``symmetric`` off only view a is regularised (the
    reference code). Returns ``mean over views of mean_i R_i``.
    """

    def __init__(self, weight: float, temperature: float, positive_weight: float = 1.0,
                 exclude_self: bool = True, gather: bool = True, symmetric: bool = True) -> None:
        super().__init__()
        self.weight = weight
        self.temperature = temperature
        self.positive_weight = positive_weight
        self.exclude_self = exclude_self
        self.gather = gather
        self.symmetric = symmetric

    @classmethod
    def from_config(cls, cfg: NRCCConfig) -> NRCCLoss:
        return cls(weight=cfg.weight, temperature=cfg.temperature, positive_weight=cfg.positive_weight,
                   exclude_self=cfg.exclude_self, gather=cfg.gather, symmetric=cfg.symmetric)

    def extra_repr(self) -> str:
        return (f"weight={self.weight}, temperature={self.temperature}, positive_weight={self.positive_weight}, "
                f"exclude_self={self.exclude_self}, gather={self.gather}, symmetric={self.symmetric}")

    def _gathered(self, x: Tensor) -> Tensor:
        """Every worker's rows (in rank order) when gathering; a gradient flows back only if ``x`` has one."""
        if not self.gather:
            return x
        return gather_with_grad(x) if x.requires_grad else gather_no_grad(x)

    def forward(self, anchors: tuple[Tensor, Tensor], positives: tuple[Tensor, Tensor],
                negatives: Tensor) -> Tensor:
        n = anchors[0].shape[0]
        v_neg = self._gathered(normalized(negatives.detach()))
        v_pos = [self._gathered(normalized(p)) for p in positives]
        offset = row_offset(n) if self.gather else 0
        kwargs = dict(weight=self.weight, temperature=self.temperature, positive_weight=self.positive_weight,
                      exclude_self=self.exclude_self, offset=offset)
        reg_a = nrcc_regularizer(normalized(anchors[0]), v_pos[0], v_neg, **kwargs)
        if not self.symmetric:
            return reg_a
        reg_b = nrcc_regularizer(normalized(anchors[1]), v_pos[1], v_neg, **kwargs)
        return 0.5 * (reg_a + reg_b)
