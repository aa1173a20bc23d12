"""Allowed names come from their registries: any timm backbone (with the small-image adaptations), the methods
of ``METHOD_CLASSES``, the data sets of the data registry; a misspelt backbone is one line with close matches.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from nrcc_scale.config import NRCC_METHODS, ConfigError, ModelConfig
from nrcc_scale.config_checks import dataset_names, method_names
from nrcc_scale.config_load import load_config
from nrcc_scale.data.registry import BUILDERS
from nrcc_scale.methods import METHOD_CLASSES
from nrcc_scale.models.backbones import ALIASES, backbone_family, build_backbone

REPO = Path(__file__).resolve().parents[1]


def _forward(backbone: nn.Module, resolution: int) -> torch.Tensor:
    backbone.eval()
    with torch.no_grad():
        return backbone(torch.randn(2, 3, resolution, resolution))


def test_resnet10t_takes_the_cifar_stem_and_forwards_32px() -> None:
    cfg = load_config(overrides=["model.backbone=resnet10t"])
    backbone = build_backbone(cfg.model, 32)
    assert backbone_family("resnet10t") == "resnet"
    # timm's tiered 3-conv stride-2 stem and the max-pool are replaced by one 3x3 stride-1 convolution
    assert isinstance(backbone.conv1, nn.Conv2d)
    assert backbone.conv1.kernel_size == (3, 3) and backbone.conv1.stride == (1, 1)
    assert isinstance(backbone.maxpool, nn.Identity)
    assert backbone.conv1.out_channels == backbone.bn1.num_features
    out = _forward(backbone, 32)
    assert out.shape == (2, backbone.num_features) == (2, 512) and torch.isfinite(out).all()
    # 32 px reach the last stage at 4x4 (stride 8 after the stem), not 1x1
    assert backbone.forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)
    # at 96 px (STL-10) timm's own stem stays
    big = build_backbone(cfg.model, 96)
    assert isinstance(big.conv1, nn.Sequential) and not isinstance(big.maxpool, nn.Identity)


def test_convnext_tiny_takes_a_stride_one_stem_and_forwards_32px() -> None:
    cfg = load_config(overrides=["model.backbone=convnext_tiny"])
    backbone = build_backbone(cfg.model, 32)
    stem = backbone.stem[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1) and stem.out_channels == 96
    out = _forward(backbone, 32)
    assert out.shape == (2, 768) and torch.isfinite(out).all()
    assert backbone.forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)
    assert build_backbone(ModelConfig(backbone="convnext_tiny", cifar_stem=False), 32).stem[0].stride == (4, 4)


def test_a_full_vit_name_gets_small_patches_for_small_images() -> None:
    small = build_backbone(ModelConfig(backbone="vit_small_patch16_224"), 32)
    assert small.patch_embed.patch_size == (4, 4) and small.patch_embed.grid_size == (8, 8)
    assert _forward(small, 32).shape == (2, 384)
    # at > 64 px the name's own patch size is kept (patch8 stays 8; the alias keeps its 16)
    assert build_backbone(ModelConfig(backbone="vit_small_patch8_224"), 96).patch_embed.patch_size == (8, 8)
    assert build_backbone(ModelConfig(backbone="vit_tiny"), 96).patch_embed.patch_size == (16, 16)


def test_the_seven_aliases_stay() -> None:
    assert set(ALIASES) == {"resnet_tiny", "resnet18", "resnet34", "resnet50", "vit_tiny", "vit_small", "vit_base"}
    for alias, name in ALIASES.items():
        assert not name or timm.is_model(name)
        assert load_config(overrides=[f"model.backbone={alias}"]).model.backbone == alias


def test_misspelt_backbone_is_one_line_with_close_matches() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["model.backbone=convnext_tinny"])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("model.backbone = 'convnext_tinny': allowed values are resnet_tiny, ")
    assert "any timm model name" in message
    close = message.split("close matches: ")[1].split(", ")
    assert close[0] == "convnext_tiny" and all(timm.is_model(n) for n in close)


def test_misspelt_backbone_on_the_command_line_exits_2_without_a_traceback() -> None:
    proc = subprocess.run([sys.executable, "-m", "nrcc_scale.train", "--no-ray", "model.backbone=resnt10t"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("config error: model.backbone = 'resnt10t': allowed values are")
    assert "close matches: resnet10t" in lines[0]
    assert "Traceback" not in proc.stderr and "run directory" not in proc.stdout


def test_cifar_stem_is_refused_where_no_family_defines_one() -> None:
    with pytest.raises(ConfigError, match=r"model.cifar_stem = true: no CIFAR stem is defined for efficientnet_b0"):
        load_config(overrides=["model.backbone=efficientnet_b0", "model.cifar_stem=true"])
    load_config(overrides=["model.backbone=efficientnet_b0"])  # unset: built as timm defines it


def test_method_and_dataset_names_are_the_registries() -> None:
    assert method_names() == tuple(METHOD_CLASSES)
    assert set(NRCC_METHODS) <= set(METHOD_CLASSES)
    assert set(dataset_names()) == set(BUILDERS) and "cifar10" in dataset_names()
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["method.name=simclr"])
    assert str(err.value) == f"method.name = 'simclr': allowed values are {', '.join(METHOD_CLASSES)}"
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["data.dataset=cifar11"])
    assert str(err.value) == f"data.dataset = 'cifar11': allowed values are {', '.join(BUILDERS)}"
