"""Every backbone of the paper at its data sets' resolutions, through one BYOL+NRCC training step.

ResNet-18/34/50 take the CIFAR stem (3x3 stride-1 conv, no max-pool) at <= 64 px (CIFAR 32, TinyImageNet
64) and the ImageNet stem at 96 (STL-10) and 224 px (ImageNet subsets, ImageNet-1k); ViT-T/S/B use 4 px
patches at 32 px, 8 at 64 and 16 at 96 and 224. A step: SGHMC negatives, loss, backward, optimizer step,
EMA update. The 224 px ResNet-50 / ViT-S / ViT-B cases are ``slow`` (CI runs them).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nrcc_scale.config_load import load_config
from nrcc_scale.engine.optim import build_optimizer
from nrcc_scale.methods import build_method

WIDTH = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "vit_tiny": 192, "vit_small": 384,
         "vit_base": 768}

CASES = [
    # (backbone, resolution): the paper's pairings. Fast: one case per backbone family and stem kind.
    ("resnet18", 32),  # CIFAR, CIFAR stem
    ("resnet34", 96),  # STL-10, ImageNet stem
    ("vit_tiny", 32),  # 4 px patches
    ("vit_small", 64),  # TinyImageNet at its native size, 8 px patches
    ("vit_tiny", 224),  # 16 px patches
    # the rest of the paper's grid (CPU-heavy; CI runs slow tests)
    pytest.param("resnet34", 32, marks=pytest.mark.slow),  # the paper's CIFAR backbone
    pytest.param("resnet50", 32, marks=pytest.mark.slow),
    pytest.param("resnet34", 64, marks=pytest.mark.slow),
    pytest.param("resnet34", 224, marks=pytest.mark.slow),  # ImageNet-10 / -Dogs, TinyImageNet
    pytest.param("resnet50", 224, marks=pytest.mark.slow),  # ImageNet-1k
    pytest.param("vit_small", 224, marks=pytest.mark.slow),  # ImageNet-1k, ImageNet-Dogs
    pytest.param("vit_base", 224, marks=pytest.mark.slow),  # ImageNet-Dogs
]


def _check_architecture(backbone: nn.Module, name: str, resolution: int) -> None:
    if name.startswith("resnet"):
        conv = backbone.conv1
        if resolution <= 64:
            assert conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            assert isinstance(backbone.maxpool, nn.Identity)
        else:
            assert conv.kernel_size == (7, 7) and conv.stride == (2, 2)
            assert not isinstance(backbone.maxpool, nn.Identity)
    else:
        patch = 4 if resolution <= 32 else 8 if resolution <= 64 else 16
        assert backbone.patch_embed.patch_size == (patch, patch)
        assert backbone.patch_embed.grid_size == (resolution // patch, resolution // patch)


@pytest.mark.parametrize(("name", "resolution"), CASES)
def test_one_byol_nrcc_step(name: str, resolution: int) -> None:
    torch.manual_seed(0)
    cfg = load_config(overrides=[f"model.backbone={name}", "method.name=byol", "method.nrcc.enabled=true",
                                 "method.nrcc.negatives=sghmc", "model.projector_hidden=256",
                                 "model.predictor_hidden=256", "train.batch_size=4", "train.num_workers=1"])
    method = build_method(cfg, resolution)
    backbone = method.online.backbone
    _check_architecture(backbone, name, resolution)
    assert backbone.num_features == WIDTH[name]

    optimizer = build_optimizer(method.parameter_groups(), cfg.optim, lr=0.05)
    first = next(p for p in backbone.parameters() if p.requires_grad)
    before = first.detach().clone()
    x_a, x_b = torch.randn(2, 4, 3, resolution, resolution).unbind(0)
    method.train()
    out = method(x_a, x_b)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    assert first.grad is not None and first.grad.abs().sum() > 0
    optimizer.step()
    method.after_optimizer_step(0.5)
    assert not torch.equal(first.detach(), before)
