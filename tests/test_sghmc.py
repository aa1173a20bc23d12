"""SGHMC negative views: the update against hand-written steps, the potential's gradient against a hand
derivation, and what the step does to the networks (nothing) and costs (one input-backward, one forward)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nrcc_scale.config import SGHMCConfig
from nrcc_scale.config_load import load_config
from nrcc_scale.methods import build_method
from nrcc_scale.methods.sghmc import (
    alignment_potential,
    hmc_chain,
    mc_chain,
    negative_views,
    potential_gradient,
    sghmc_chain,
)

DT = torch.float64


def _linear_features(weight: torch.Tensor):
    return lambda x: x.flatten(1) @ weight


def test_potential_gradient_matches_hand_derivation() -> None:
    """U = sum_i sum_j -log(1 + cos^2(a_i, r_j)), a_i = W^T vec(X_i):
    dU/da_i = sum_j -2 cos_ij/(1 + cos_ij^2) * (r̂_j/|a_i| - cos_ij a_i/|a_i|^2), dU/dX_i = W dU/da_i."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 3, 3, generator=g, dtype=DT)
    weight = torch.randn(18, 5, generator=g, dtype=DT)
    ref = torch.randn(4, 5, generator=g, dtype=DT)
    got = potential_gradient(_linear_features(weight), x, ref, pairs="batch")
    a = x.flatten(1) @ weight
    r_hat = F.normalize(ref, dim=1)
    expected = torch.zeros_like(a)
    for i in range(4):
        norm = a[i].norm()
        for j in range(4):
            cos = a[i] @ r_hat[j] / norm
            dcos = r_hat[j] / norm - cos * a[i] / norm**2
            expected[i] += -2 * cos / (1 + cos**2) * dcos
    torch.testing.assert_close(got.flatten(1), expected @ weight.T, rtol=1e-9, atol=1e-12)


def test_self_pairs_use_only_the_diagonal() -> None:
    g = torch.Generator().manual_seed(1)
    h, r = torch.randn(5, 3, generator=g, dtype=DT), torch.randn(5, 3, generator=g, dtype=DT)
    cos = F.cosine_similarity(h, r, dim=1)
    assert float(alignment_potential(h, r, "self")) == pytest.approx(float(-torch.log1p(cos**2).sum()))


def _quadratic_grad(x: torch.Tensor) -> torch.Tensor:
    return 3.0 * x  # gradient of U = 1.5 |x|^2, large enough that the clip at 1 matters


def test_one_sghmc_step_equals_a_hand_written_update_with_the_same_noise() -> None:
    cfg = SGHMCConfig(steps=1, delta1=0.1, delta2=0.05, delta3=0.99, grad_clip=1.0)
    x0 = torch.randn(3, 2, 4, 4, dtype=DT)
    torch.manual_seed(123)
    got = sghmc_chain(x0, _quadratic_grad, cfg)
    torch.manual_seed(123)
    p0 = torch.randn_like(x0)
    r1 = torch.randn_like(x0)
    g = torch.clamp(3.0 * x0, -1.0, 1.0)
    p1 = 0.9 * p0 - 0.05 * g + 0.99 * r1
    expected = x0 + 0.05 * p1  # docs/spec/METHOD.md: the updated p
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)
    # the printed Algorithm 1 (old p) would ignore the gradient entirely in one step
    torch.manual_seed(123)
    printed = sghmc_chain(x0, _quadratic_grad, SGHMCConfig(momentum_update="printed"))
    torch.testing.assert_close(printed, x0 + 0.05 * p0, rtol=0, atol=1e-15)


def test_three_sghmc_steps_equal_hand_written_updates() -> None:
    cfg = SGHMCConfig(steps=3, delta1=0.2, delta2=0.1, delta3=0.5, grad_clip=0.5)
    x0 = torch.randn(2, 3, dtype=DT)
    torch.manual_seed(7)
    got = sghmc_chain(x0, _quadratic_grad, cfg)
    torch.manual_seed(7)
    p, x = torch.randn_like(x0), x0.clone()
    for _ in range(3):
        r = torch.randn_like(x0)
        p = 0.8 * p - 0.1 * torch.clamp(3.0 * x, -0.5, 0.5) + 0.5 * r
        x = x + 0.1 * p
    torch.testing.assert_close(got, x, rtol=0, atol=1e-14)


def test_hmc_is_a_leapfrog_without_friction_or_noise() -> None:
    cfg = SGHMCConfig(steps=2, delta2=0.1, grad_clip=10.0)
    x0 = torch.randn(2, 3, dtype=DT)
    torch.manual_seed(5)
    got = hmc_chain(x0, _quadratic_grad, cfg)
    torch.manual_seed(5)
    p, x = torch.randn_like(x0), x0.clone()
    for step in range(2):
        p = p - 0.05 * 3.0 * x
        x = x + 0.1 * p
        if step == 0:
            p = p - 0.05 * 3.0 * x
    torch.testing.assert_close(got, x, rtol=0, atol=1e-14)


def test_mc_adds_gaussian_noise_with_one_sghmc_steps_variance() -> None:
    cfg = SGHMCConfig(steps=2, delta1=0.1, delta2=0.05, delta3=0.99)
    x0 = torch.randn(4, 3, dtype=DT)
    torch.manual_seed(9)
    got = mc_chain(x0, cfg)
    torch.manual_seed(9)
    scale = 0.05 * math.sqrt(0.9**2 + 0.99**2)
    r1, r2 = torch.randn_like(x0), torch.randn_like(x0)
    torch.testing.assert_close(got, x0 + scale * r1 + scale * r2, rtol=0, atol=1e-15)


def test_reduced_resolution_chain_returns_the_training_size() -> None:
    cfg = SGHMCConfig(resolution=8)
    x0 = torch.randn(2, 3, 16, 16)
    seen = []

    def grad_at(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return torch.zeros_like(x)

    out = negative_views("sghmc", x0, grad_at, cfg, first_grad=torch.zeros_like(x0))
    assert out.shape == x0.shape
    assert seen == [(2, 3, 8, 8)]  # the full-resolution gradient was not reused at 8 px


# ---------------------------------------------------------------------------------------------------------
# The method's SGHMC step: what it touches and what it costs
# ---------------------------------------------------------------------------------------------------------


def _method(name: str, *overrides: str):
    cfg = load_config(overrides=[f"method.name={name}", "model.projector_hidden=32", "model.predictor_hidden=32",
                                 "model.projector_dim=16", *overrides])
    torch.manual_seed(0)
    return build_method(cfg, 8)


def _bn_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


@pytest.mark.parametrize("negatives", ["sghmc", "hmc", "mc"])
def test_byol_nrcc_leaves_target_parameters_and_bn_statistics_as_plain_byol_would(negatives: str) -> None:
    x_a, x_b = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    plain = _method("byol", "method.nrcc.enabled=false")
    nrcc = _method("byol", f"method.nrcc.negatives={negatives}", "method.nrcc.sghmc.steps=2")
    nrcc.load_state_dict(plain.state_dict())
    params_before = _params(nrcc.target)
    plain(x_a, x_b)
    out = nrcc(x_a, x_b)
    out.loss.backward()
    for key, value in _params(nrcc.target).items():
        assert torch.equal(value, params_before[key]), f"target parameter {key} changed"
    assert all(p.grad is None for p in nrcc.target.parameters())
    plain_bn, nrcc_bn = _bn_state(plain.target), _bn_state(nrcc.target)
    assert plain_bn.keys() == nrcc_bn.keys() and plain_bn
    for key in plain_bn:
        torch.testing.assert_close(nrcc_bn[key], plain_bn[key], rtol=0, atol=0, msg=key)
    # the online network's statistics too (the x^c forward goes through the target, but check anyway)
    for key, value in _bn_state(plain.online).items():
        torch.testing.assert_close(_bn_state(nrcc.online)[key], value, rtol=0, atol=0, msg=key)


def test_infonce_nrcc_leaves_bn_statistics_as_plain_infonce_would() -> None:
    x_a, x_b = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    plain = _method("infonce", "method.nrcc.enabled=false")
    nrcc = _method("infonce", "method.nrcc.sghmc.steps=2")
    nrcc.load_state_dict(plain.state_dict())
    plain(x_a, x_b)
    nrcc(x_a, x_b).loss.backward()
    for key, value in _bn_state(plain.online).items():
        torch.testing.assert_close(_bn_state(nrcc.online)[key], value, rtol=0, atol=0, msg=key)


class _Counter:
    def __init__(self, module: torch.nn.Module) -> None:
        self.forwards = 0
        self.backwards = 0
        module.register_forward_hook(self._fwd)
        first_conv = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
        first_conv.register_full_backward_hook(self._bwd)

    def _fwd(self, *_):
        self.forwards += 1

    def _bwd(self, *_):
        self.backwards += 1


@pytest.mark.parametrize(("steps", "target_forwards", "target_backwards"), [(1, 3, 1), (3, 5, 3)])
def test_sghmc_reuses_the_target_forward_byol_already_does(steps: int, target_forwards: int,
                                                           target_backwards: int) -> None:
    """Plain BYOL: 2 target forwards (x^a, x^b). BYOL+NRCC at zeta = 1 adds exactly one forward (x^c) and
    one input-only backward through the target; each further SGHMC step adds one forward + backward."""
    x_a, x_b = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    plain = _method("byol", "method.nrcc.enabled=false")
    plain_count = _Counter(plain.target.backbone)
    plain(x_a, x_b).loss.backward()
    assert (plain_count.forwards, plain_count.backwards) == (2, 0)

    nrcc = _method("byol", f"method.nrcc.sghmc.steps={steps}")
    target_count = _Counter(nrcc.target.backbone)
    online_count = _Counter(nrcc.online.backbone)
    out = nrcc(x_a, x_b)
    assert (target_count.forwards, target_count.backwards) == (target_forwards, target_backwards)
    out.loss.backward()
    assert target_count.backwards == target_backwards  # the loss does not backpropagate into the target
    assert online_count.forwards == 2  # x^c goes through the target, not the online network


def test_infonce_sghmc_reuses_the_online_forward_of_the_anchor_view() -> None:
    x_a, x_b = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    method = _method("infonce")
    count = _Counter(method.online.backbone)
    method(x_a, x_b)
    assert count.forwards == 3  # x^a, x^b, x^c: the potential's gradient reused x^a's forward
    assert count.backwards == 1  # the input-only backward


def test_reused_forward_gives_the_same_gradient_as_a_fresh_forward() -> None:
    """potential_gradient on h(x) already computed (the step's first SGHMC gradient) equals the one on the
    network called at x (every further step): one function, two entry points, the same number."""
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(18, 5, generator=g, dtype=DT)
    x = torch.randn(4, 2, 3, 3, generator=g, dtype=DT)
    ref = torch.randn(4, 5, generator=g, dtype=DT)
    features = _linear_features(weight)
    fresh = potential_gradient(features, x, ref, pairs="batch")
    x_leaf = x.clone().requires_grad_(True)
    reused = potential_gradient(features(x_leaf), x_leaf, ref, pairs="batch")
    torch.testing.assert_close(reused, fresh, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["byol", "infonce"])
def test_training_step_takes_every_sghmc_gradient_from_potential_gradient(monkeypatch, name: str) -> None:
    """zeta = 3: the first gradient reuses x^a's forward, the other two are fresh forwards; all three go
    through sghmc.potential_gradient (the function the tests above check against a hand derivation)."""
    import nrcc_scale.methods.two_view as two_view

    calls: list[bool] = []

    def counted(features, *args, **kwargs):
        calls.append(isinstance(features, torch.Tensor))
        return potential_gradient(features, *args, **kwargs)

    monkeypatch.setattr(two_view, "potential_gradient", counted)
    method = _method(name, "method.nrcc.sghmc.steps=3")
    method(torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)).loss.backward()
    assert calls == [True, False, False]
