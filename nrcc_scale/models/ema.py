"""The EMA target network of BYOL and CueCo's momentum encoder."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def make_target(online: nn.Module) -> nn.Module:
    """A frozen copy: its parameters never require grad, so SGHMC can differentiate through it with respect
    to the input only, and no optimizer ever touches it."""
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


def ema_momentum(base: float, progress: float, cosine: bool) -> float:
    """BYOL's schedule: m rises from ``base`` to 1 along a cosine as training ``progress`` goes 0 -> 1."""
    if not cosine:
        return base
    progress = min(max(progress, 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """theta_target <- m * theta_target + (1 - m) * theta_online, parameters only. BatchNorm running
    statistics are not averaged: the target keeps its own, from its own forwards (as the reference)."""
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise RuntimeError("target and online networks have different parameter lists")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, o_params, alpha=1.0 - momentum)
