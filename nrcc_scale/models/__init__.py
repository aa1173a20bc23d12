"""Backbones (timm), projector/predictor heads and the EMA target."""

from nrcc_scale.models.backbones import build_backbone
from nrcc_scale.models.heads import MLPHead

__all__ = ["MLPHead", "build_backbone"]
