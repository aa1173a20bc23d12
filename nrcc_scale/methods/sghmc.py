"""Negative views x^c for NRCC: one (or zeta) steps of SGHMC, and the paper's ablations HMC and MC.

Potential over an image batch X (normalised pixel space), h(.) a frozen network (docs/spec/METHOD.md, eq 16):

    U(X_i) = sum_j -log(1 + cos^2(h(X_i), h(x^b_j)))         (pairs = "batch"; "self": only j = i)

SGHMC step (eqs 17-18 with the corrections docs/spec/METHOD.md states), repeated ``steps`` (zeta) times:

    p <- (1 - delta1) p - delta2 * clip(grad_X U, -c, c) + delta3 * r,   r ~ N(0, I)
    X <- X + delta2 * p                                      (the *updated* p; "printed": the old p)

It starts from X = x^a with p ~ N(0, I). The chain descends U: towards images whose embedding is more
aligned with the batch, i.e. hard negatives. Ablations (NRCC Tables 8 and 2):

* HMC — a leapfrog step, no friction and no noise: p <- p - delta2/2 g(X); X <- X + delta2 p; (and, between
  steps, the second half kick p <- p - delta2/2 g(X)). No Metropolis-Hastings correction, as the paper.
* MC — plain Monte Carlo, no gradient: X <- X + delta2 * sqrt((1 - delta1)^2 + delta3^2) * r, i.e. the same
  displacement variance one SGHMC step injects, so the ablation isolates what the gradient adds.
* augment — no chain: an ordinary third augmented view (the loader provides it).

The caller supplies ``grad_at(X)`` (the potential's gradient at X, with the network frozen and its
BatchNorm statistics untouched: :func:`potential_gradient`) and may pass the gradient at x^a it already has
from its own forward, so the first step costs only an input-backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from nrcc_scale.config import SGHMCConfig
from nrcc_scale.methods.precision import InputGradScaler, full_precision

GradientFn = Callable[[Tensor], Tensor]


@full_precision
def alignment_potential(h_x: Tensor, h_ref: Tensor, pairs: str = "batch") -> Tensor:
    """sum_i U(X_i): -log(1 + cos^2) between h(X_i) and the reference embeddings h(x^b_j)."""
    # float32 at least, autocast off (@full_precision): a bf16 cosine has 3 significant digits
    cos = F.normalize(h_x, dim=-1) @ F.normalize(h_ref.detach(), dim=-1).T
    if pairs == "self":
        cos = torch.diagonal(cos)
    elif pairs != "batch":
        raise ValueError(f"potential_pairs = {pairs!r}: allowed values are batch, self")
    return -torch.log1p(cos.pow(2)).sum()


def potential_gradient(features: Callable[[Tensor], Tensor] | Tensor, x: Tensor, h_ref: Tensor,
                       pairs: str = "batch", scaler: InputGradScaler | None = None,
                       retain_graph: bool = False) -> Tensor:
    """grad_X sum_i U(X_i) by one input-only backward: the one gradient of the potential, used by training
    (``methods/two_view.py``), the tests and the benchmarks.

    ``features`` is either the network h(.), called here at a fresh leaf copy of ``x``, or the tensor h(x)
    itself, already computed from ``x`` (which then requires grad): that forward is reused and only the
    input-backward runs (``retain_graph`` keeps its graph for a loss that still needs it). The network's
    parameters must not require grad for this to cost only that; if they do, autograd still computes only
    the input's gradient. Under fp16 autocast the potential is loss-scaled for the backward through the
    network (``scaler``; a fresh one when None) and the gradient unscaled, so it does not underflow."""
    scaler = scaler or InputGradScaler()
    if isinstance(features, Tensor):
        return scaler.grad(alignment_potential(features, h_ref, pairs), x, retain_graph=retain_graph)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        potential = alignment_potential(features(x), h_ref, pairs)
        return scaler.grad(potential, x, retain_graph=retain_graph)


def needs_gradient(kind: str) -> bool:
    return kind in ("sghmc", "hmc")


def _clip(grad: Tensor, c: float) -> Tensor:
    return grad.clamp(-c, c)


def _randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(like.shape, dtype=like.dtype, device=like.device, generator=generator)


def sghmc_chain(x0: Tensor, grad_at: GradientFn, cfg: SGHMCConfig, first_grad: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """``cfg.steps`` SGHMC steps from x0; returns the final X (no gradient attached)."""
    x = x0.detach()
    p = _randn(x, generator)  # p0 = r0
    for step in range(cfg.steps):
        g = first_grad if (step == 0 and first_grad is not None) else grad_at(x)
        r = _randn(x, generator)
        p_new = (1.0 - cfg.delta1) * p - cfg.delta2 * _clip(g, cfg.grad_clip) + cfg.delta3 * r
        x = x + cfg.delta2 * (p_new if cfg.momentum_update == "updated" else p)
        p = p_new
    return x.detach()


def hmc_chain(x0: Tensor, grad_at: GradientFn, cfg: SGHMCConfig, first_grad: Tensor | None = None,
              generator: torch.Generator | None = None) -> Tensor:
    """``cfg.steps`` leapfrog steps (step size delta2, fresh momentum, no friction, no noise)."""
    x = x0.detach()
    p = _randn(x, generator)
    g = first_grad if first_grad is not None else grad_at(x)
    half = 0.5 * cfg.delta2
    for step in range(cfg.steps):
        p = p - half * _clip(g, cfg.grad_clip)
        x = x + cfg.delta2 * p
        if step + 1 < cfg.steps:  # the last half kick would only change p, which is discarded
            g = grad_at(x)
            p = p - half * _clip(g, cfg.grad_clip)
    return x.detach()


def mc_chain(x0: Tensor, cfg: SGHMCConfig, generator: torch.Generator | None = None) -> Tensor:
    """``cfg.steps`` Gaussian random-walk steps with SGHMC's per-step displacement variance."""
    scale = cfg.delta2 * math.sqrt((1.0 - cfg.delta1) ** 2 + cfg.delta3 ** 2)
    x = x0.detach()
    for _ in range(cfg.steps):
        x = x + scale * _randn(x, generator)
    return x


def negative_views(kind: str, x0: Tensor, grad_at: GradientFn, cfg: SGHMCConfig,
                   first_grad: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """x^c from x0 = x^a by the chosen sampler. With ``cfg.resolution`` set, the chain runs on x^a resized
    to that size (the reference code's 32 x 32) and the result is resized back."""
    size = x0.shape[-1]
    small = cfg.resolution and cfg.resolution != size
    if small:
        x0 = F.interpolate(x0, size=(cfg.resolution, cfg.resolution), mode="bilinear", align_corners=False,
                           antialias=True)
        first_grad = None  # the caller's gradient is at the training resolution
    if kind == "sghmc":
        out = sghmc_chain(x0, grad_at, cfg, first_grad, generator)
    elif kind == "hmc":
        out = hmc_chain(x0, grad_at, cfg, first_grad, generator)
    elif kind == "mc":
        out = mc_chain(x0, cfg, generator)
    else:
        raise ValueError(f"negatives = {kind!r}: this sampler takes sghmc, hmc or mc ('augment' needs none)")
    if small:
        out = F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False)
    return out
