"""What a worker switches on per device (nrcc_scale/engine/gpu_defaults.py), checked on the CPU."""

from __future__ import annotations

import pytest
import torch

from nrcc_scale.config import ConfigError
from nrcc_scale.config_load import load_config
from nrcc_scale.engine.gpu_defaults import (
    amp_dtype,
    convert_sync_bn,
    describe,
    use_channels_last,
    use_sync_bn,
)
from nrcc_scale.methods import build_method

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_amp_setting_to_dtype() -> None:
    assert amp_dtype("auto", CPU) is None and amp_dtype("off", CUDA) is None
    assert amp_dtype("bf16", CPU) == torch.bfloat16 and amp_dtype("fp16", CUDA) == torch.float16


def test_amp_auto_on_a_gpu_without_bf16_is_fp16(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype("auto", CUDA) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype("auto", CUDA) == torch.bfloat16


def test_channels_last_defaults_to_conv_backbones_on_cuda() -> None:
    cfg = load_config()
    assert use_channels_last(cfg, CUDA) and not use_channels_last(cfg, CPU)
    assert not use_channels_last(load_config(overrides=["model.backbone=vit_tiny"]), CUDA)
    # any timm name: by its family (convolutional ResNets and ConvNeXts yes, ViTs no)
    assert use_channels_last(load_config(overrides=["model.backbone=convnext_tiny"]), CUDA)
    assert use_channels_last(load_config(overrides=["model.backbone=resnet10t"]), CUDA)
    assert not use_channels_last(load_config(overrides=["model.backbone=vit_small_patch16_224"]), CUDA)
    assert use_channels_last(load_config(overrides=["model.channels_last=true"]), CPU)


def test_sync_bn_default_is_multi_gpu_only_and_explicit_cpu_is_an_error() -> None:
    cfg = load_config()
    assert use_sync_bn(cfg, CUDA, 2) and not use_sync_bn(cfg, CUDA, 1) and not use_sync_bn(cfg, CPU, 2)
    assert not use_sync_bn(load_config(overrides=["model.sync_bn=false"]), CUDA, 4)
    with pytest.raises(ConfigError, match="model.sync_bn"):
        use_sync_bn(load_config(overrides=["model.sync_bn=true"]), CPU, 2)


def test_convert_sync_bn_replaces_every_batchnorm_of_the_method() -> None:
    method = build_method(load_config(overrides=["model.projector_hidden=32", "model.predictor_hidden=32",
                                                 "model.projector_dim=16"]), 16)
    before = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in method.modules())
    names = [n for n, _ in method.named_parameters()]
    method = convert_sync_bn(method)
    synced = [m for m in method.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert before > 0 and len(synced) == before  # online, target and heads alike
    assert [n for n, _ in method.named_parameters()] == names  # checkpoints keep their keys


def test_describe_names_every_setting() -> None:
    line = describe(CPU, None, False, False, False)
    assert line == "precision and layout: amp float32, channels_last off, sync_bn off, compile off"
