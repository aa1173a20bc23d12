"""Every objective computes in float32 when called inside autocast (each guards itself), and fp16 input
gradients of the SGHMC potential are loss-scaled instead of underflowing.

Reference values are the same functions on float64 copies of the same inputs, outside autocast: a bf16
matrix product (8 mantissa bits) misses the 1e-4 relative tolerance by orders of magnitude, so these tests
fail if any guard is removed (measured before the guards: NRCC gradient relative error 7e-2).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nrcc_scale.config import CueCoConfig
from nrcc_scale.config_load import load_config
from nrcc_scale.methods import build_method
from nrcc_scale.methods.barlow_twins import barlow_twins_loss
from nrcc_scale.methods.byol import byol_loss
from nrcc_scale.methods.cueco import MomentumClusters, cueco_losses
from nrcc_scale.methods.infonce import info_nce_loss
from nrcc_scale.methods.nrcc import nrcc_regularizer
from nrcc_scale.methods.precision import InputGradScaler
from nrcc_scale.methods.sghmc import alignment_potential, potential_gradient
from nrcc_scale.methods.simsiam import simsiam_loss

N, D = 32, 64


def _unit(seed: int, n: int = N, d: int = D) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300))


def _clusters() -> MomentumClusters:
    clusters = MomentumClusters(10, D, 0.99, 0.99, seed=3)
    clusters.variances.uniform_(0.01, 0.03, generator=torch.Generator().manual_seed(4))
    return clusters


def _cueco(q, k, queue):
    clusters = _clusters()
    if q.dtype == torch.float64:
        clusters = clusters.double()
    assignment = (k.double() @ clusters.centroids.double().T).argmax(dim=1)
    parts = cueco_losses(q, k, queue, clusters, CueCoConfig(), assignment)
    return parts["l1"] + parts["l2"] + 0.1 * parts["l3"]


# name -> (function of float tensors, number of leading arguments to differentiate, the inputs)
CASES = {
    "infonce": (lambda a, b: info_nce_loss(a, b, 0.1), 2, lambda: [_unit(1), _unit(2)]),
    "byol": (byol_loss, 2, lambda: [torch.randn(N, D), torch.randn(N, D), torch.randn(N, D), torch.randn(N, D)]),
    "simsiam": (simsiam_loss, 2, lambda: [torch.randn(N, D), torch.randn(N, D), torch.randn(N, D),
                                          torch.randn(N, D)]),
    "barlow_twins": (lambda a, b: barlow_twins_loss(a, b, 0.0051), 2, lambda: [torch.randn(N, D),
                                                                               torch.randn(N, D)]),
    "nrcc": (lambda u, p, n: nrcc_regularizer(u, p, n, weight=0.1, temperature=0.1), 1,
             lambda: [_unit(3), _unit(4), _unit(5)]),
    "nrcc_offset_no_pos": (lambda u, p, n: nrcc_regularizer(u, p, n, weight=0.1, temperature=0.1,
                                                            positive_weight=0.0, offset=N), 1,
                           lambda: [_unit(3), _unit(4, 2 * N), _unit(5, 2 * N)]),
    "sghmc_potential": (lambda h, r: alignment_potential(h, r), 1, lambda: [torch.randn(N, D), torch.randn(N, D)]),
    "sghmc_potential_self": (lambda h, r: alignment_potential(h, r, "self"), 1,
                             lambda: [torch.randn(N, D), torch.randn(N, D)]),
    "cueco": (_cueco, 1, lambda: [_unit(6), _unit(7), _unit(8, 256)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_objective_is_float32_under_bf16_autocast_and_matches_float64(name: str) -> None:
    fn, n_grad, make = CASES[name]
    torch.manual_seed(0)
    inputs = make()
    low = [x.clone().requires_grad_(i < n_grad) for i, x in enumerate(inputs)]
    ref = [x.double().requires_grad_(i < n_grad) for i, x in enumerate(inputs)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = fn(*low)
    assert value.dtype == torch.float32, f"{name} returned {value.dtype} under bf16 autocast"
    expected = fn(*ref)
    assert expected.dtype == torch.float64
    assert abs(value.item() - expected.item()) <= 1e-4 * abs(expected.item())
    grads = torch.autograd.grad(value, low[:n_grad])
    grads_ref = torch.autograd.grad(expected, ref[:n_grad])
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert g.dtype == torch.float32
        assert _rel(g, g_ref) <= 1e-4, f"{name}: gradient relative error {_rel(g, g_ref):.2e}"


def test_bf16_inputs_are_promoted_not_truncated() -> None:
    """bf16 arguments (a network's output under autocast) give a float32 result equal to the float32 call
    on the same (bf16-representable) values."""
    u, p, n = (_unit(s).bfloat16() for s in (3, 4, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = nrcc_regularizer(u, p, n, weight=0.1, temperature=0.1)
    full = nrcc_regularizer(u.float(), p.float(), n.float(), weight=0.1, temperature=0.1)
    assert low.dtype == torch.float32
    assert torch.equal(low, full)


def test_byol_nrcc_step_logs_the_sum_under_bf16_autocast() -> None:
    cfg = load_config(overrides=["method.name=byol", "train.use_gpu=false", "model.projector_hidden=64",
                                 "model.predictor_hidden=64", "model.projector_dim=32"])
    torch.manual_seed(0)
    method = build_method(cfg, 16)
    x_a, x_b = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(x_a, x_b)
    m = out.metrics
    assert out.loss.dtype == torch.float32
    for key in ("loss", "loss_base", "loss_nrcc"):
        assert m[key].dtype == torch.float32, key
    assert float(m["loss_nrcc"]) != 0.0
    total = m["loss_base"] + m["loss_nrcc"]
    assert float(m["loss"]) != float(m["loss_base"])  # the NRCC term is not lost in rounding
    assert abs(float(m["loss"]) - float(total)) <= 2 * torch.finfo(torch.float32).eps * abs(float(total))
    out.loss.backward()
    grads = [p.grad for p in method.online.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def _fp16_autocast_works() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            return torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float16
    except Exception:
        return False


@pytest.mark.skipif(not _fp16_autocast_works(), reason="this torch has no fp16 CPU autocast")
def test_fp16_input_gradient_is_loss_scaled_not_underflowing() -> None:
    """Embeddings nearly orthogonal to the reference (cos ~ 3e-4, where -log(1 + cos^2) is flat): the true
    input gradient is ~6e-9 per pixel, below fp16's smallest subnormal (6e-8), so the plain backward through
    an fp16 network returns zeros; the loss-scaled one matches float64."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 16))
    x = torch.randn(8, 3, 8, 8)
    ref_h = torch.cat([3e-4 * torch.randn(8, 16), torch.randn(8, 16)], dim=1)

    def features(v: torch.Tensor, network: torch.nn.Module = net) -> torch.Tensor:
        h = network(v)
        return torch.cat([h, torch.zeros_like(h)], dim=1)  # the reference lives mostly in the other half

    with torch.autocast("cpu", dtype=torch.float16):
        xr = x.clone().requires_grad_(True)
        (plain,) = torch.autograd.grad(alignment_potential(features(xr), ref_h), xr)
        scaler = InputGradScaler()
        scaled = potential_gradient(features, x, ref_h, scaler=scaler)
    net64 = net.double()
    expected = potential_gradient(lambda v: features(v, net64), x.double(), ref_h.double())
    assert float(expected.abs().max()) < 6e-8  # the regime where fp16 loses it
    assert _rel(plain, expected) > 0.9  # unscaled: flushed to zero
    assert _rel(scaled, expected) < 1e-2  # scaled: fp16 network precision, nothing lost to underflow
    assert scaled.dtype == x.dtype
    assert scaler.scale == 2.0 ** 16


def test_input_grad_scaler_backs_off_on_overflow_without_host_sync() -> None:
    scaler = InputGradScaler(init_scale=2.0 ** 20)
    x = torch.full((4,), 1e3, dtype=torch.float16, requires_grad=True)
    potential = (x.float() * 1e3).sum()  # d/dx = 1e3: times 2^20 overflows fp16
    g = scaler.grad(potential, x)
    assert torch.equal(g, torch.zeros_like(g))  # an overflowed gradient is dropped, not propagated
    assert scaler.scale == 2.0 ** 19
    x2 = torch.ones(4, dtype=torch.float16, requires_grad=True)
    g2 = InputGradScaler(init_scale=8.0).grad((x2.float() * 0.5).sum(), x2)
    assert torch.allclose(g2.float(), torch.full((4,), 0.5))
