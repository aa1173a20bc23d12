"""SimCLR augmentation, split in two so every loader shares it.

* :class:`SpatialAugment` — random resized crop and horizontal flip, per image, in the loader (FFCV does
  the same two at JPEG decode time). Output stays uint8, which keeps host-to-device copies small.
* :class:`BatchPhotometricAugment` — colour jitter (random order per image, as torchvision), grayscale,
  Gaussian blur and solarize, applied to a whole uint8 batch on the training device (GPU when present),
  with parameters drawn per image; then normalisation. FFCV has none of these ops, and doing them on
  batches is also faster than per-image PIL work on a CPU.

The photometric ops follow torchvision's definitions (brightness/contrast/saturation as blends with black,
the grayscale mean and the grayscale image; hue as a rotation in HSV), so the torchvision and FFCV paths
have the same augmentation semantics.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nrcc_scale.config import AugmentConfig

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, with torchvision's rounding of 0.299


class SpatialAugment:
    """Random resized crop (scale range, aspect 3/4-4/3) to ``resolution`` and a horizontal flip."""

    def __init__(self, resolution: int, scale: tuple[float, float] = (0.08, 1.0), flip_p: float = 0.5,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        self.resolution = resolution
        self.scale = scale
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.flip_p = flip_p

    def crop_box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(top, left, h, w) of a crop, by the same rule as torchvision's RandomResizedCrop."""
        area = height * width
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*self.log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w
        # fall back to a central crop with the aspect ratio clamped to the allowed range
        ratio = width / height
        lo, hi = math.exp(self.log_ratio[0]), math.exp(self.log_ratio[1])
        if ratio < lo:
            w, h = width, int(round(width / lo))
        elif ratio > hi:
            h, w = height, int(round(height * hi))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> Tensor:
        """``H x W x 3`` uint8 array -> ``3 x R x R`` uint8 tensor."""
        height, width = image.shape[:2]
        top, left, h, w = self.crop_box(height, width, rng)
        crop = torch.from_numpy(np.ascontiguousarray(image[top:top + h, left:left + w])).permute(2, 0, 1)
        out = resize_uint8(crop, self.resolution)
        if rng.random() < self.flip_p:
            out = out.flip(-1)
        return out


def resize_uint8(image: Tensor, size: int) -> Tensor:
    """Bilinear, antialiased resize of a ``3 x H x W`` uint8 tensor to ``size x size``.

    torchvision's resize has a native uint8 kernel for this (the one ``transforms.v2.RandomResizedCrop``
    uses): ~3x faster on a CPU than converting to float, ``F.interpolate`` and rounding back, which made our
    loader slower than stock torchvision v2 (benchmarks/loader_throughput.py). Same filter (bilinear,
    antialiased, half-pixel centres); it rounds in fixed point, so pixels may differ from the float path by
    one grey level.
    """
    if image.shape[-2:] == (size, size):
        return image.contiguous()
    from torchvision.transforms.v2 import functional as TF

    return TF.resize(image, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def center_resize(image: np.ndarray, resolution: int) -> Tensor:
    """Evaluation transform: the whole image resized to ``resolution`` (no crop), uint8 ``3 x R x R``."""
    return resize_uint8(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), resolution)


# ----------------------------------------------------------------------------------------------------------
# Batch ops on float images in [0, 1], shape B x 3 x H x W; per-image factors have shape B x 1 x 1 x 1.
# ----------------------------------------------------------------------------------------------------------


def rgb_to_gray(x: Tensor) -> Tensor:
    w = x.new_tensor(_GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    return (x * factor).clamp_(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    mean = rgb_to_gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor + mean).clamp_(0, 1)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    gray = rgb_to_gray(x)
    return ((x - gray) * factor + gray).clamp_(0, 1)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue by ``shift`` (fraction of a turn, in [-0.5, 0.5]) in HSV space.

    A hue rotation keeps each pixel's max and min channel (V and V(1 - S)), so only the hue is computed
    and the closed form HSV -> RGB, c = V - (V - min) * clamp(min(k_c, 4 - k_c), 0, 1) with
    k_c = (n_c + 6 h) mod 6 and n = (5, 3, 1) for (R, G, B), gives the result without a 6-way selection.
    """
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    inv = 1.0 / delta.clamp_min(1e-12)
    # hue in sextants (0..6): which channel is the max decides the formula
    h = torch.where(maxc == r, (g - b) * inv, torch.where(maxc == g, 2.0 + (b - r) * inv, 4.0 + (r - g) * inv))
    h = torch.where(delta > 0, h, torch.zeros_like(h)) + 6.0 * shift.view(-1, 1, 1)
    out = torch.empty_like(x)
    for channel, n in enumerate((5.0, 3.0, 1.0)):
        k = torch.remainder(h + n, 6.0)
        weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
        out[:, channel] = maxc - delta * weight
    return out.clamp_(0, 1)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur with a per-image sigma (reflect padding, as torchvision)."""
    b, c, h, w = x.shape
    half = kernel_size // 2
    pos = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (pos.view(1, -1) / sigma.view(-1, 1)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # B x K
    kernel = kernel.repeat_interleave(c, dim=0)  # (B*C) x K
    flat = x.reshape(1, b * c, h, w)
    flat = F.pad(flat, (half, half, half, half), mode="reflect")
    flat = F.conv2d(flat, kernel.view(b * c, 1, 1, kernel_size), groups=b * c)
    flat = F.conv2d(flat, kernel.view(b * c, 1, kernel_size, 1), groups=b * c)
    return flat.view(b, c, h, w)


def solarize(x: Tensor, threshold: float = 0.5) -> Tensor:
    return torch.where(x >= threshold, 1.0 - x, x)


class BatchPhotometricAugment(nn.Module):
    """SimCLR's photometric augmentations on a uint8 batch, then normalisation; parameters per image.

    ``generator`` (optional) makes the draws reproducible independently of the global RNG.
    """

    def __init__(self, cfg: AugmentConfig, mean: tuple[float, ...], std: tuple[float, ...],
                 resolution: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.blur_p = cfg.blur_p if cfg.blur_p is not None else (0.5 if resolution >= 96 else 0.0)
        # SimCLR: kernel 10% of the image side, odd
        self.blur_kernel = max(3, int(0.1 * resolution) // 2 * 2 + 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    def _uniform(self, n: int, lo: float, hi: float, device: torch.device) -> Tensor:
        return torch.empty(n, device=device).uniform_(lo, hi).view(n, 1, 1, 1)

    def _jitter(self, x: Tensor) -> Tensor:
        cfg, n, dev = self.cfg, x.shape[0], x.device
        apply = torch.rand(n, device=dev) < cfg.jitter_p
        if not apply.any():
            return x
        factors = {
            0: self._uniform(n, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness, dev),
            1: self._uniform(n, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, dev),
            2: self._uniform(n, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation, dev),
            3: self._uniform(n, -cfg.hue, cfg.hue, dev),
        }
        ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
        # a random order of the four ops for every image, as torchvision's ColorJitter
        order = torch.argsort(torch.rand(n, 4, device=dev), dim=1)
        out = x
        for position in range(4):
            for op_index, op in enumerate(ops):
                rows = apply & (order[:, position] == op_index)
                if rows.any():
                    out = out.clone() if out is x else out
                    out[rows] = op(out[rows], factors[op_index][rows])
        return out

    def forward(self, images: Tensor) -> Tensor:
        """uint8 ``B x 3 x H x W`` (any device) -> normalised float32."""
        x = images.float().div_(255.0)
        n, dev = x.shape[0], x.device
        x = self._jitter(x)
        gray_rows = torch.rand(n, device=dev) < self.cfg.grayscale_p
        if gray_rows.any():
            x[gray_rows] = rgb_to_gray(x[gray_rows]).expand(-1, 3, -1, -1)
        if self.blur_p > 0:
            blur_rows = torch.rand(n, device=dev) < self.blur_p
            if blur_rows.any():
                sigma = torch.empty(int(blur_rows.sum()), device=dev).uniform_(0.1, 2.0)
                x[blur_rows] = gaussian_blur(x[blur_rows], sigma, self.blur_kernel)
        if self.cfg.solarize_p > 0:
            sol_rows = torch.rand(n, device=dev) < self.cfg.solarize_p
            if sol_rows.any():
                x[sol_rows] = solarize(x[sol_rows])
        return (x - self.mean) / self.std

    def normalize(self, images: Tensor) -> Tensor:
        """Evaluation path: uint8 batch -> normalised float, no augmentation."""
        return (images.float().div_(255.0) - self.mean) / self.std
