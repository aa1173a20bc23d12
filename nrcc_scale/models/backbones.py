"""Backbones by name: any timm model, seven short aliases, and the adaptations small images need.

``model.backbone`` is an alias below (the names the configs have always used) or any timm model name
(``timm.list_models()``, e.g. ``resnet10t``, ``convnext_tiny``, ``vit_small_patch16_224``); the aliases and
timm's list are the one registry of allowed names, checked by :func:`check_backbone_name` when a config is
validated, so a misspelt name fails before any worker starts, with the closest names in the message.

Small images (``model.cifar_stem``; None = at <= 64 px) keep their resolution into the first stage, where the
family allows it:

* ResNet family (timm's ``ResNet`` class, ``resnet_tiny`` included): SimCLR's CIFAR variant, one 3x3 stride-1
  convolution in place of the stem (7x7/2 or the deep 3x3 stems) and no max-pool; a 32 px image reaches the
  last stage at 4x4 instead of 1x1.
* ConvNeXt family: the 4x4 stride-4 "patchify" stem becomes a 3x3 stride-1 convolution with the same width,
  so the last stage also sees 4x4 at 32 px (its three 2x downsamplings are kept).
* ViT family (timm's ``vision_transformer`` and ``deit`` models): built for the image size, with the patch
  size ``model.vit_patch_size`` or, by default, the name's own patch size at > 64 px and a smaller one for
  small images (4 px up to 32 px, 8 px up to 64 px: :func:`vit_patch_size`), so a 32 px image is an 8x8 grid.
* Other families are built as timm defines them; ``model.cifar_stem: true`` is refused for them, and models
  with a fixed input size (e.g. Swin, hybrid ViTs) need ``data.resolution`` equal to it.

Every backbone returns pooled features (``num_classes=0``); ``backbone.num_features`` is their width.
Nothing is downloaded: weights start random (``pretrained=False``), as in the papers (no pre-training).
"""

from __future__ import annotations

import difflib
import re

import timm
from timm.models.convnext import ConvNeXt
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from nrcc_scale.config import ConfigError, ModelConfig

__all__ = ["ALIASES", "CIFAR_STEM_FAMILIES", "apply_cifar_stem", "backbone_family", "build_backbone",
           "check_backbone_name", "vit_patch_size"]

#: Short names -> timm model names ("resnet_tiny" is built here: timm has no ResNet that small).
ALIASES = {
    "resnet_tiny": "",  # CPU-sized ResNet (1 block per stage, widths 16-128): the bundled default
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
}
#: timm modules whose models take ``img_size`` and ``patch_size`` (VisionTransformer and its subclasses).
_VIT_MODULES = ("timm.models.vision_transformer", "timm.models.deit")
#: Families :func:`apply_cifar_stem` adapts.
CIFAR_STEM_FAMILIES = ("resnet", "convnext")


def check_backbone_name(name: str) -> None:
    """Raise a one-line ConfigError unless ``name`` is an alias or a timm model name; it lists close matches."""
    if name in ALIASES or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, [*ALIASES, *timm.list_models()], n=5, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else "no close match"
    raise ConfigError(f"model.backbone = {name!r}: allowed values are {', '.join(ALIASES)} or any timm model "
                      f"name (timm.list_models()); {hint}")


def _timm_name(name: str) -> str:
    return ALIASES.get(name) or name


def backbone_family(name: str) -> str:
    """"resnet", "convnext", "vit" or "other", from the timm module that defines the model (none is built)."""
    if name == "resnet_tiny":
        return "resnet"
    module = timm.models.model_entrypoint(_timm_name(name)).__module__
    if module in _VIT_MODULES:
        return "vit"
    return {"timm.models.resnet": "resnet", "timm.models.convnext": "convnext"}.get(module, "other")


def _resnet_tiny() -> ResNet:
    """A CPU-sized ResNet: one BasicBlock per stage, widths 16-32-64-128 (~0.7 M parameters).
    The 'deep' stem type lets timm take the stem width from ``stem_width`` (2 x 8 = 16 channels)."""
    return ResNet(block=BasicBlock, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_type="deep",
                  stem_width=8, num_classes=0)


def apply_cifar_stem(model: nn.Module) -> None:
    """SimCLR's CIFAR variant of the stem, so a 32 px image keeps its resolution into the first stage instead
    of shrinking to 8 px: a 3x3 stride-1 first convolution (ResNet: and no max-pool; ConvNeXt: in place of the
    4x4 stride-4 patchify convolution)."""
    if isinstance(model, ResNet):
        width = model.bn1.num_features
        model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif isinstance(model, ConvNeXt):
        stem = model.stem[0]
        model.stem[0] = nn.Conv2d(stem.in_channels, stem.out_channels, kernel_size=3, stride=1, padding=1)
    else:
        raise ValueError(f"no CIFAR stem is defined for {type(model).__name__} (ResNet and ConvNeXt have one)")


def vit_patch_size(resolution: int) -> int:
    """4 px patches up to 32 px images (an 8x8 grid), 8 px up to 64 px, 16 px beyond (ImageNet)."""
    if resolution <= 32:
        return 4
    if resolution <= 64:
        return 8
    return 16


def _default_patch(timm_name: str, resolution: int) -> int:
    """The name's own patch size (``..._patch16_...``; 16 if it names none), smaller for small images."""
    match = re.search(r"patch(\d+)", timm_name)
    own = int(match.group(1)) if match else 16
    return own if resolution > 64 else min(own, vit_patch_size(resolution))


def build_backbone(cfg: ModelConfig, resolution: int) -> nn.Module:
    name = cfg.backbone
    family = backbone_family(name)
    if family == "vit":
        patch = cfg.vit_patch_size or _default_patch(_timm_name(name), resolution)
        if resolution % patch:
            raise ValueError(f"model.vit_patch_size = {patch}: must divide the image size {resolution}")
        return timm.create_model(_timm_name(name), pretrained=False, num_classes=0, img_size=resolution,
                                 patch_size=patch)
    model = _resnet_tiny() if name == "resnet_tiny" else timm.create_model(
        _timm_name(name), pretrained=False, num_classes=0)
    cifar_stem = cfg.cifar_stem if cfg.cifar_stem is not None else resolution <= 64
    if cifar_stem and family in CIFAR_STEM_FAMILIES:
        apply_cifar_stem(model)
    elif cfg.cifar_stem:
        raise ValueError(f"model.cifar_stem = true: no CIFAR stem is defined for {name} (ResNet and ConvNeXt "
                         "families have one); set it to false or leave it unset")
    return model
