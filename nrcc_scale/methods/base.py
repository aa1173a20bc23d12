"""What every self-supervised method provides to the training loop and to evaluation.

A method is an ``nn.Module`` whose ``forward(x_a, x_b, x_c)`` returns the loss of one step (so DDP can wrap
it), plus hooks the loop calls after the optimizer step (EMA, momentum clustering), the parameter groups
(predictor learning rate x 10), and the encoder evaluation embeds with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nrcc_scale.config import Config
from nrcc_scale.models.backbones import build_backbone
from nrcc_scale.models.heads import MLPHead


@dataclass
class StepOutput:
    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class Encoder(nn.Module):
    """Backbone f followed by projector g; returns (h, z) with z un-normalised."""

    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.backbone(x)
        return h, self.projector(h)


def build_encoder(cfg: Config, resolution: int) -> Encoder:
    backbone = build_backbone(cfg.model, resolution)
    projector = MLPHead(backbone.num_features, cfg.model.projector_hidden, cfg.model.projector_dim)
    return Encoder(backbone, projector)


class EmbeddingModel(nn.Module):
    """The network evaluation uses: L2-normalised projector output (default) or backbone features."""

    def __init__(self, encoder: Encoder, features: str = "projector") -> None:
        super().__init__()
        self.encoder = encoder
        self.features = features

    def forward(self, x: Tensor) -> Tensor:
        h, z = self.encoder(x)
        out = z if self.features == "projector" else h
        return F.normalize(out.float(), dim=-1)


class SSLMethod(nn.Module):
    """Base class. Subclasses build their networks in ``__init__`` and implement ``forward``."""

    #: does the loader need a third augmented view (NRCC with ``negatives: augment``)?
    needs_third_view: bool = False

    def __init__(self, cfg: Config, resolution: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.resolution = resolution
        self.online = build_encoder(cfg, resolution)

    def forward(self, x_a: Tensor, x_b: Tensor, x_c: Tensor | None = None) -> StepOutput:
        raise NotImplementedError

    def after_optimizer_step(self, progress: float) -> None:
        """Called once after every optimizer step with the training progress in [0, 1]."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called at the end of every epoch (CueCo re-seeds clusters that stayed empty)."""

    def predictor_parameters(self) -> list[nn.Parameter]:
        return []

    def parameter_groups(self) -> list[dict]:
        """Two groups: everything, and the predictor whose learning rate is multiplied (paper App. C)."""
        predictor = {id(p) for p in self.predictor_parameters()}
        main = [p for p in self.parameters() if p.requires_grad and id(p) not in predictor]
        groups: list[dict] = [{"params": main, "lr_mult": 1.0, "name": "main"}]
        if predictor:
            groups.append({"params": self.predictor_parameters(),
                           "lr_mult": self.cfg.optim.predictor_lr_mult, "name": "predictor"})
        return groups

    def eval_encoder(self) -> Encoder:
        """The encoder whose embedding is clustered: the online one unless the method has a target."""
        return self.online

    def embedding_model(self) -> EmbeddingModel:
        return EmbeddingModel(self.eval_encoder(), self.cfg.eval.features)


def normalized(x: Tensor) -> Tensor:
    """L2-normalise in at least float32: losses are computed in full precision even under autocast."""
    return F.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1)


def detach_metrics(metrics: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach() if isinstance(v, Tensor) else torch.tensor(v) for k, v in metrics.items()}
