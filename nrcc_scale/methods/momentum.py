"""The momentum (EMA) target network that BYOL and CueCo share, in one place.

The target starts as a frozen copy of the online encoder (its parameters never require grad, so SGHMC can
differentiate through it with respect to the input only, and no optimizer touches it) and after every
optimizer step moves towards the online network: theta_target <- m theta_target + (1 - m) theta_online,
with m rising from ``method.ema_momentum`` to 1 along a cosine when ``method.ema_cosine`` (BYOL's schedule).
It is the encoder evaluation embeds with.
"""

from __future__ import annotations

from nrcc_scale.config import Config
from nrcc_scale.methods.base import Encoder, SSLMethod
from nrcc_scale.models.ema import ema_momentum, ema_update, make_target


class MomentumMethod(SSLMethod):
    """Base of the methods with an EMA target: owns ``self.target`` and its update."""

    has_target = True

    def __init__(self, cfg: Config, resolution: int) -> None:
        super().__init__(cfg, resolution)
        # created after everything the other bases build (BYOL: the predictor), so the module order of the
        # state dict, and with it every checkpoint, stays what it was before this base existed
        self.target: Encoder = make_target(self.online)  # type: ignore[assignment]

    def eval_encoder(self) -> Encoder:
        return self.target

    def after_optimizer_step(self, progress: float) -> None:
        m = ema_momentum(self.cfg.method.ema_momentum, progress, self.cfg.method.ema_cosine)
        ema_update(self.target, self.online, m)
