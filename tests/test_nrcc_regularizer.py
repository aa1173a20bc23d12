"""The NRCC regularizer against independent computations: a brute-force loop for its value, and the
closed-form gradients (NRCC eqs 10-14, derived from R_i as docs/spec/METHOD.md states it) for autograd.

R_i = lambda [ LSE_{j != i}(<u_i, c_j>/tau) - w LSE_j(<u_i, b_j>/tau) ],  R = mean_i R_i

Where the paper's printed forms differ from the derivation (noted per test): they drop 1/tau in places,
use 1/n and 1/2n normalisations inconsistently, and sum over l = i in the SGHMC softmax denominator while
excluding j = i in the numerator. We test against the derivation; the structure (attraction to b_i scaled
by a softmax weight, the psi' coupling of eq 11, the softmax-weighted push from the c_j) is the paper's.
"""

from __future__ import annotations

import math

import pytest
import torch

from nrcc_scale.methods.nrcc import nrcc_regularizer

DT = torch.float64


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=DT), dim=1)


def _loop_value(u, b, c, lam, tau, w, exclude_self):
    total = 0.0
    n = u.shape[0]
    for i in range(n):
        neg = [math.exp(float(u[i] @ c[j]) / tau) for j in range(n) if not (exclude_self and j == i)]
        pos = [math.exp(float(u[i] @ b[j]) / tau) for j in range(n)]
        total += lam * (math.log(sum(neg)) - w * math.log(sum(pos)))
    return total / n


@pytest.mark.parametrize("exclude_self", [True, False])
@pytest.mark.parametrize(("lam", "tau", "w"), [(0.1, 0.1, 1.0), (0.5, 1.0, 1.0), (1.0, 0.5, 0.0)])
def test_value_equals_a_loop_over_anchors(exclude_self: bool, lam: float, tau: float, w: float) -> None:
    u, b, c = _unit(7, 5, 0), _unit(7, 5, 1), _unit(7, 5, 2)
    got = nrcc_regularizer(u, b, c, weight=lam, temperature=tau, positive_weight=w, exclude_self=exclude_self)
    assert float(got) == pytest.approx(_loop_value(u, b, c, lam, tau, w, exclude_self), rel=1e-12)


def test_byol_nrcc_gradient_matches_closed_form_eqs_13_14() -> None:
    """BYOL+NRCC: u = predictor output, b = z̄^b and c = z̄^c from the target (stop-gradient), so u_i enters
    only R_i. Derived: dR/du_i = lam/(n tau) [ sum_{j!=i} s^c_ij c_j - w sum_j s^b_ij b_j ], three terms:
      attraction to the own positive  -lam w/(n tau) s^b_ii b_i   (eq 13's lam exp(<z^a_i,z^b_i>/tau)/sum_l ...)
      pull to the other positives      -lam w/(n tau) sum_{j!=i} s^b_ij b_j   (eq 14's psi'-term, one-sided)
      push from the SGHMC views        +lam/(n tau) sum_{j!=i} s^c_ij c_j     (eq 14's first term)
    Printed eq 13 has 1/2 + lam*softmax with no 1/tau; our BYOL term adds exactly b_i/n (mean over both
    directions of 2 - 2cos), and the regularizer's share carries 1/tau."""
    n, d, lam, tau, w = 6, 4, 0.3, 0.2, 1.0
    u = _unit(n, d, 3).requires_grad_(True)
    b, c = _unit(n, d, 4), _unit(n, d, 5)
    nrcc_regularizer(u, b, c, weight=lam, temperature=tau, positive_weight=w, exclude_self=True).backward()

    expected = torch.zeros(n, d, dtype=DT)
    for i in range(n):
        sb = torch.softmax(u[i].detach() @ b.T / tau, dim=0)
        logits_c = u[i].detach() @ c.T / tau
        logits_c[i] = -math.inf
        sc = torch.softmax(logits_c, dim=0)
        attraction_own = -lam * w / (n * tau) * sb[i] * b[i]
        pull_others = -lam * w / (n * tau) * sum(sb[j] * b[j] for j in range(n) if j != i)
        push_sghmc = lam / (n * tau) * sum(sc[j] * c[j] for j in range(n) if j != i)
        expected[i] = attraction_own + pull_others + push_sghmc
    torch.testing.assert_close(u.grad, expected, rtol=1e-10, atol=1e-12)


def test_infonce_nrcc_gradient_matches_closed_form_eqs_10_11() -> None:
    """InfoNCE+NRCC, symmetrised: anchors z^a (positives z^b) and z^b (positives z^a), negatives sg(z^c).
    z^a_i receives gradient from its own anchor term and, through the positives, from every z^b_j anchor:
      dR/dz^a_i = lam/(2n tau) [ sum_{j!=i} s^c_ij c_j - w sum_j exp(<z^a_i, z^b_j>/tau) psi'_j z^b_j ]
    with psi'_j = 1/sum_l exp(<z^a_i, z^b_l>/tau) + 1/sum_l exp(<z^b_j, z^a_l>/tau) -- exactly eq 11's psi'.
    The j = i part of the second sum is eq 10's strengthened attraction."""
    n, d, lam, tau, w = 5, 3, 0.1, 0.1, 1.0
    za = _unit(n, d, 6).requires_grad_(True)
    zb = _unit(n, d, 7).requires_grad_(True)
    c = _unit(n, d, 8)
    kwargs = dict(weight=lam, temperature=tau, positive_weight=w, exclude_self=True)
    reg = 0.5 * (nrcc_regularizer(za, zb, c, **kwargs) + nrcc_regularizer(zb, za, c, **kwargs))
    reg.backward()

    a, b = za.detach(), zb.detach()
    expected = torch.zeros(n, d, dtype=DT)
    for i in range(n):
        logits_c = a[i] @ c.T / tau
        logits_c[i] = -math.inf
        sc = torch.softmax(logits_c, dim=0)
        push = sum(sc[j] * c[j] for j in range(n) if j != i)
        pull = torch.zeros(d, dtype=DT)
        for j in range(n):
            psi = 1.0 / torch.exp(a[i] @ b.T / tau).sum() + 1.0 / torch.exp(b[j] @ a.T / tau).sum()
            pull = pull + torch.exp(a[i] @ b[j] / tau) * psi * b[j]
        expected[i] = lam / (2 * n * tau) * (push - w * pull)
    torch.testing.assert_close(za.grad, expected, rtol=1e-10, atol=1e-12)


def test_exclude_self_drops_exactly_the_anchors_own_negative_with_offset() -> None:
    """With negatives gathered from several workers, anchor i of worker r is row offset + i."""
    n, d = 3, 4
    u = _unit(n, d, 9)
    c_all = _unit(2 * n, d, 10)
    b_all = _unit(2 * n, d, 11)
    got = nrcc_regularizer(u, b_all, c_all, weight=1.0, temperature=0.5, positive_weight=0.0,
                           exclude_self=True, offset=n)
    manual = torch.stack([
        torch.logsumexp(torch.cat([u[i] @ c_all[:n + i].T, u[i] @ c_all[n + i + 1:].T]) / 0.5, dim=0)
        for i in range(n)]).mean()
    assert float(got) == pytest.approx(float(manual), rel=1e-12)
    # and the self term matters: including it gives a different (larger) value
    with_self = nrcc_regularizer(u, b_all, c_all, weight=1.0, temperature=0.5, positive_weight=0.0,
                                 exclude_self=False, offset=n)
    assert float(with_self) > float(got)


def test_regularizer_repels_negatives_and_attracts_positive() -> None:
    """A gradient step on R moves u_i towards b_i and away from the nearest c_j (the paper's reading)."""
    n, d = 4, 8
    b = _unit(n, d, 12)
    c = _unit(n, d, 13)
    u = torch.nn.functional.normalize(b + 0.5 * torch.roll(c, 1, 0), dim=1).requires_grad_(True)
    nrcc_regularizer(u, b, c, weight=1.0, temperature=0.1).backward()
    stepped = torch.nn.functional.normalize(u.detach() - 0.01 * u.grad, dim=1)
    before_pos = (u.detach() * b).sum(1)
    after_pos = (stepped * b).sum(1)
    assert torch.all(after_pos > before_pos)
    hardest = torch.roll(c, 1, 0)
    assert torch.all((stepped * hardest).sum(1) < (u.detach() * hardest).sum(1))


# ---------------------------------------------------------------------------------------------------------
# NRCCLoss: the module the methods compose (normalisation, symmetrisation, which positives carry gradient)
# ---------------------------------------------------------------------------------------------------------


def _raw(n: int, d: int, seed: int) -> torch.Tensor:
    """Un-normalised rows of varied length: the module must normalise them itself."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=DT) * torch.linspace(0.5, 3.0, n, dtype=DT)[:, None]


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("exclude_self", [True, False])
def test_nrcc_loss_module_equals_the_loop_over_both_views(symmetric: bool, exclude_self: bool) -> None:
    from nrcc_scale.methods.nrcc import NRCCLoss

    n, d, lam, tau, w = 5, 4, 0.3, 0.2, 0.7
    u_a, u_b, v_a, v_b, c = (_raw(n, d, s) for s in range(20, 25))
    loss = NRCCLoss(weight=lam, temperature=tau, positive_weight=w, exclude_self=exclude_self,
                    symmetric=symmetric)
    got = loss((u_a, u_b), (v_a, v_b), c)

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=1, keepdim=True)

    view_a = _loop_value(unit(u_a), unit(v_a), unit(c), lam, tau, w, exclude_self)
    view_b = _loop_value(unit(u_b), unit(v_b), unit(c), lam, tau, w, exclude_self)
    expected = 0.5 * (view_a + view_b) if symmetric else view_a
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_nrcc_loss_trains_a_positive_only_when_it_carries_a_gradient() -> None:
    """InfoNCE/Barlow Twins pass positives with their gradient, BYOL/SimSiam detached ones; the negatives
    never receive a gradient."""
    from nrcc_scale.methods.nrcc import NRCCLoss

    loss = NRCCLoss(weight=1.0, temperature=0.5)
    u_a, u_b, v_a, v_b, c = (_raw(4, 3, s).requires_grad_(True) for s in range(30, 35))
    loss((u_a, u_b), (v_a, v_b), c).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (u_a, u_b, v_a, v_b))
    assert c.grad is None
    u_a2, u_b2, v_a2, v_b2 = (_raw(4, 3, s).requires_grad_(True) for s in range(30, 34))
    loss((u_a2, u_b2), (v_a2.detach(), v_b2.detach()), c).backward()
    assert v_a2.grad is None and v_b2.grad is None and u_a2.grad is not None


def test_nrcc_loss_takes_lambda_tau_and_switches_from_the_config() -> None:
    from nrcc_scale.config import NRCCConfig
    from nrcc_scale.methods.nrcc import NRCCLoss

    cfg = NRCCConfig(weight=0.25, temperature=0.3, positive_weight=0.0, exclude_self=False, gather=False,
                     symmetric=False)
    loss = NRCCLoss.from_config(cfg)
    assert (loss.weight, loss.temperature, loss.positive_weight, loss.exclude_self, loss.gather, loss.symmetric) \
        == (0.25, 0.3, 0.0, False, False, False)
    assert not list(loss.parameters()) and not list(loss.buffers())  # nothing enters the checkpoint
