"""Each base objective against an independent computation of its published definition."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nrcc_scale.methods.barlow_twins import barlow_twins_loss
from nrcc_scale.methods.byol import byol_loss
from nrcc_scale.methods.infonce import info_nce_loss
from nrcc_scale.methods.simsiam import simsiam_loss

DT = torch.float64


def _rand(n: int, d: int, seed: int, unit: bool = True) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=DT)
    return F.normalize(x, dim=1) if unit else x


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_infonce_equals_a_loop_over_anchors(tau: float) -> None:
    """Eqs 1-3: for each of the 2n anchors, -log exp(pos/tau) / sum over the 2n - 1 other views."""
    n = 5
    za, zb = _rand(n, 4, 0), _rand(n, 4, 1)
    views = [("a", i) for i in range(n)] + [("b", i) for i in range(n)]
    vec = {("a", i): za[i] for i in range(n)} | {("b", i): zb[i] for i in range(n)}
    total = 0.0
    for anchor in views:
        other = ("b" if anchor[0] == "a" else "a", anchor[1])
        denom = sum(math.exp(float(vec[anchor] @ vec[v]) / tau) for v in views if v != anchor)
        total += -math.log(math.exp(float(vec[anchor] @ vec[other]) / tau) / denom)
    assert float(info_nce_loss(za, zb, tau)) == pytest.approx(total / (2 * n), rel=1e-12)


def test_byol_is_the_symmetrised_normalised_regression() -> None:
    """Eq 4: ||q̂ - sg(ẑ)||^2 per anchor, averaged over both directions."""
    pa, pb, ta, tb = (_rand(6, 5, s, unit=False) for s in range(4))
    expected = 0.5 * ((F.normalize(pa, dim=1) - F.normalize(tb, dim=1)).pow(2).sum(1).mean()
                      + (F.normalize(pb, dim=1) - F.normalize(ta, dim=1)).pow(2).sum(1).mean())
    assert float(byol_loss(pa, pb, ta, tb)) == pytest.approx(float(expected), rel=1e-12)
    # stop-gradient: nothing flows into the targets
    ta.requires_grad_(True)
    tb.requires_grad_(True)
    pa.requires_grad_(True)
    byol_loss(pa, pb, ta, tb).backward()
    assert ta.grad is None and tb.grad is None and pa.grad is not None


def test_simsiam_is_the_symmetrised_negative_cosine_with_stop_gradient() -> None:
    pa, pb = _rand(6, 5, 4, unit=False), _rand(6, 5, 5, unit=False)
    za = _rand(6, 5, 6, unit=False).requires_grad_(True)
    zb = _rand(6, 5, 7, unit=False).requires_grad_(True)
    expected = 0.0
    za_, zb_ = za.detach(), zb.detach()
    for i in range(6):
        expected += -0.5 * float(pa[i] @ zb_[i] / (pa[i].norm() * zb_[i].norm())) / 6
        expected += -0.5 * float(pb[i] @ za_[i] / (pb[i].norm() * za_[i].norm())) / 6
    loss = simsiam_loss(pa, pb, za, zb)
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    assert not loss.requires_grad  # z enters only through stop-gradient, p has no grad here


def test_barlow_twins_equals_its_definition_computed_elementwise() -> None:
    """C_ij = sum_b a_bi b_bj / N on batch-standardised embeddings; L = sum (1 - C_ii)^2 + lam sum_{i!=j} C_ij^2."""
    n, d, lam = 16, 4, 0.005
    za, zb = _rand(n, d, 8, unit=False), _rand(n, d, 9, unit=False)
    a = (za - za.mean(0)) / za.std(0, unbiased=False)
    b = (zb - zb.mean(0)) / zb.std(0, unbiased=False)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = float(sum(a[k, i] * b[k, j] for k in range(n)) / n)
            loss += (1 - c) ** 2 if i == j else lam * c**2
    assert float(barlow_twins_loss(za, zb, lam)) == pytest.approx(loss, rel=1e-4)  # eps 1e-5 in the std
