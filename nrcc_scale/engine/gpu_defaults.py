"""What a training worker switches on when it runs on a CUDA device, decided in one place and logged.

Why this module exists
----------------------
PyTorch's defaults are conservative: cuDNN does not benchmark convolution algorithms, float32 matrix
products do not use TF32, convolutions run in NCHW, and BatchNorm normalises with each GPU's own batch.
On a GPU each of these costs throughput (or, for BatchNorm, lets InfoNCE/NRCC "cheat" on per-GPU batch
statistics), and none of them matters on a CPU. The loop asks this module what to do and prints the
answer once (:func:`describe`), so a run's log says how it ran.
"""

from __future__ import annotations

import torch
from torch import nn

from nrcc_scale.config import Config, ConfigError

#: Backbone families made of convolutions (channels_last helps cuDNN); ViTs gain nothing from it.
CONV_FAMILIES = ("resnet", "convnext")


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """``train.amp`` -> the autocast dtype (None = float32). ``auto``: bf16 where the GPU supports it, else
    fp16 (with a GradScaler, see the loop), and float32 on a CPU."""
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    if setting == "fp16":
        return torch.float16
    if setting == "auto" and not torch.cuda.is_bf16_supported():
        return torch.float16  # pre-Ampere GPUs: bf16 would be emulated, slower than float32
    return torch.bfloat16


def configure_cuda(device: torch.device, deterministic: bool) -> None:
    """cuDNN autotuning (not with ``train.deterministic``: it picks algorithms by timing) and TF32 for the
    float32 matrix products that autocast leaves in float32."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    """``model.channels_last``; None = on for convolutional backbones on CUDA."""
    if cfg.model.channels_last is not None:
        return cfg.model.channels_last
    from nrcc_scale.models.backbones import backbone_family

    return device.type == "cuda" and backbone_family(cfg.model.backbone) in CONV_FAMILIES


def use_sync_bn(cfg: Config, device: torch.device, world_size: int) -> bool:
    """``model.sync_bn``; None = on when several CUDA workers train together. SyncBatchNorm needs CUDA
    tensors, so an explicit ``true`` on CPU workers is a configuration error."""
    wanted = cfg.model.sync_bn
    if wanted is None:
        return device.type == "cuda" and world_size > 1
    if wanted and world_size > 1 and device.type != "cuda":
        raise ConfigError("model.sync_bn = true needs CUDA workers (SyncBatchNorm runs on GPUs only); "
                          "set model.sync_bn=false or train.use_gpu=true")
    return bool(wanted) and world_size > 1


def convert_sync_bn(module: nn.Module) -> nn.Module:
    """Every BatchNorm of ``module`` (online, target, heads) as SyncBatchNorm; timm's converter also
    handles its fused BatchNorm+activation layers."""
    try:
        from timm.layers import convert_sync_batchnorm
    except ImportError:  # pragma: no cover - timm is a dependency
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return convert_sync_batchnorm(module)


def describe(device: torch.device, dtype: torch.dtype | None, channels_last: bool, sync_bn: bool,
             compiled: bool) -> str:
    """One line for the log: what this run switched on."""
    amp = {None: "float32", torch.bfloat16: "bf16", torch.float16: "fp16 (GradScaler)"}[dtype]
    parts = [f"amp {amp}", f"channels_last {'on' if channels_last else 'off'}",
             f"sync_bn {'on' if sync_bn else 'off'}", f"compile {'on' if compiled else 'off'}"]
    if device.type == "cuda":
        parts.append(f"cudnn.benchmark {'on' if torch.backends.cudnn.benchmark else 'off'}, TF32 on")
    return "precision and layout: " + ", ".join(parts)
