"""timm backbones by name, with the CIFAR stem for small images and a ViT patch size suited to them.

Every backbone returns pooled features (``num_classes=0``); ``backbone.num_features`` is their width.
Nothing is downloaded: weights start random, as in the papers (no pre-training).
"""

from __future__ import annotations

import timm
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from nrcc_scale.config import ModelConfig

_TIMM_NAMES = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
}


def _resnet_tiny() -> ResNet:
    """A CPU-sized ResNet: one BasicBlock per stage, widths 16-32-64-128 (~0.7 M parameters).
    The 'deep' stem type lets timm take the stem width from ``stem_width`` (2 x 8 = 16 channels)."""
    return ResNet(block=BasicBlock, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_type="deep",
                  stem_width=8, num_classes=0)


def apply_cifar_stem(model: ResNet) -> None:
    """SimCLR's CIFAR variant: a 3x3 stride-1 first convolution and no max-pool, so a 32 px image keeps
    its resolution into the first stage instead of shrinking to 8 px."""
    width = model.bn1.num_features
    model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


def vit_patch_size(resolution: int) -> int:
    """4 px patches up to 32 px images (an 8x8 grid), 8 px up to 64 px, 16 px beyond (ImageNet)."""
    if resolution <= 32:
        return 4
    if resolution <= 64:
        return 8
    return 16


def build_backbone(cfg: ModelConfig, resolution: int) -> nn.Module:
    name = cfg.backbone
    if name.startswith("vit_"):
        patch = cfg.vit_patch_size or vit_patch_size(resolution)
        if resolution % patch:
            raise ValueError(f"model.vit_patch_size = {patch}: must divide the image size {resolution}")
        model = timm.create_model(_TIMM_NAMES[name], pretrained=False, num_classes=0, img_size=resolution,
                                  patch_size=patch)
    else:
        model = _resnet_tiny() if name == "resnet_tiny" else timm.create_model(
            _TIMM_NAMES[name], pretrained=False, num_classes=0)
        cifar_stem = cfg.cifar_stem if cfg.cifar_stem is not None else resolution <= 64
        if cifar_stem:
            apply_cifar_stem(model)
    return model
