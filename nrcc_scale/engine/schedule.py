"""Learning-rate schedule: linear warm-up, then cosine decay (paper Appendix C), evaluated per step."""

from __future__ import annotations

import math

import torch


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int, peak: float,
                       min_ratio: float = 0.0) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = peak * min_ratio
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def peak_lr(base_lr: float, global_batch: int) -> float:
    """The paper's linear scaling rule: beta = base_lr x batch / 256."""
    return base_lr * global_batch / 256.0


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
