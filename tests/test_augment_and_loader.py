"""Augmentation semantics equal torchvision's; the loader reshuffles every epoch on every worker."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from nrcc_scale.config import AugmentConfig
from nrcc_scale.data.augment import (
    BatchPhotometricAugment,
    SpatialAugment,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    rgb_to_gray,
)
from nrcc_scale.data.digits import load_digits_source
from nrcc_scale.data.torchvision_loader import EpochLoader, MultiViewDataset


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 12, 12, generator=g)


def _per_image(images: torch.Tensor, factors: list[float], fn) -> torch.Tensor:
    return torch.stack([fn(img, f) for img, f in zip(images, factors, strict=True)])


@pytest.mark.parametrize(
    ("ours", "theirs", "factors"),
    [
        (adjust_brightness, TF.adjust_brightness, [0.6, 0.8, 1.0, 1.2, 1.4, 0.9]),
        (adjust_contrast, TF.adjust_contrast, [0.6, 0.8, 1.0, 1.2, 1.4, 0.9]),
        (adjust_saturation, TF.adjust_saturation, [0.6, 0.8, 1.0, 1.2, 1.4, 0.0]),
        (adjust_hue, TF.adjust_hue, [-0.1, -0.05, 0.0, 0.03, 0.1, 0.5]),
    ],
)
def test_batch_colour_ops_equal_torchvision_per_image(images, ours, theirs, factors) -> None:
    got = ours(images.clone(), torch.tensor(factors).view(-1, 1, 1, 1))
    expected = _per_image(images, factors, theirs)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)  # float rounding; 1/255 = 4e-3


def test_grayscale_and_blur_equal_torchvision(images) -> None:
    torch.testing.assert_close(rgb_to_gray(images), TF.rgb_to_grayscale(images), rtol=0, atol=1e-6)
    sigmas = [0.3, 0.7, 1.0, 1.5, 2.0, 0.1]
    got = gaussian_blur(images, torch.tensor(sigmas), kernel_size=5)
    expected = torch.stack([TF.gaussian_blur(img, [5, 5], [s, s]) for img, s in zip(images, sigmas, strict=True)])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_photometric_augment_draws_per_image_and_normalises() -> None:
    aug = BatchPhotometricAugment(AugmentConfig(jitter_p=1.0, grayscale_p=0.0), (0.5,) * 3, (0.25,) * 3, 16)
    batch = torch.full((8, 3, 16, 16), 128, dtype=torch.uint8)
    batch[:, 0] = 200  # a coloured image, so saturation and hue act
    torch.manual_seed(0)
    out = aug(batch)
    assert out.dtype == torch.float32 and out.shape == (8, 3, 16, 16)
    per_image = out.flatten(1).mean(1)
    assert len(torch.unique(per_image)) == 8  # each image got its own jitter factors
    plain = aug.normalize(batch)
    torch.testing.assert_close(plain[0, 1], torch.full((16, 16), (128 / 255 - 0.5) / 0.25))
    gray = BatchPhotometricAugment(AugmentConfig(jitter_p=0.0, grayscale_p=1.0), (0.0,) * 3, (1.0,) * 3, 16)
    g = gray(batch)
    assert torch.allclose(g[:, 0], g[:, 1]) and torch.allclose(g[:, 1], g[:, 2])


def test_spatial_augment_crops_inside_the_image_and_is_reproducible() -> None:
    spatial = SpatialAugment(16, (0.08, 1.0), flip_p=0.5)
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    for seed in range(50):
        top, left, h, w = spatial.crop_box(20, 30, np.random.default_rng(seed))
        assert top >= 0 and top + h <= 20 and left >= 0 and left + w <= 30 and h > 0 and w > 0
    a = spatial(image, np.random.default_rng(3))
    b = spatial(image, np.random.default_rng(3))
    assert a.dtype == torch.uint8 and a.shape == (3, 16, 16) and torch.equal(a, b)


def test_views_depend_only_on_seed_epoch_and_index() -> None:
    source = load_digits_source()
    ds = MultiViewDataset(source, SpatialAugment(16), num_views=3, seed=1)
    first = ds[5][0]
    assert first.shape == (3, 3, 16, 16)
    assert torch.equal(first, ds[5][0])
    assert not torch.equal(first[0], first[1])  # independent views
    ds.set_epoch(1)
    assert not torch.equal(first, ds[5][0])


def test_every_worker_gets_a_distinct_shard_reshuffled_every_epoch() -> None:
    source = load_digits_source()
    per_epoch = []
    for epoch in range(2):
        seen = []
        for rank in range(2):
            loader = EpochLoader(MultiViewDataset(source, SpatialAugment(8), seed=0), batch_size=64, rank=rank,
                                 world_size=2, seed=0)
            loader.set_epoch(epoch)
            seen.append(torch.cat([idx for _, _, idx in loader]).tolist())
        assert not set(seen[0]) & set(seen[1])  # distinct shards
        both = seen[0] + seen[1]
        assert len(both) == len(set(both)) == 2 * (len(source) // 2 // 64) * 64  # full batches only
        per_epoch.append(seen[0])
    assert per_epoch[0] != per_epoch[1]  # reshuffled


@pytest.mark.parametrize(("shape", "size"), [((3, 8, 8), 16), ((3, 180, 200), 224), ((3, 300, 250), 32)])
def test_resize_uint8_matches_the_float_antialiased_bilinear_resize(shape, size) -> None:
    """The uint8 fast path (torchvision's kernel) is the same filter as float interpolate, up to rounding."""
    from nrcc_scale.data.augment import resize_uint8

    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    crop = image.permute(1, 2, 0).permute(2, 0, 1)[:, 1:, 2:]  # non-contiguous, as SpatialAugment passes it
    reference = torch.nn.functional.interpolate(crop[None].float(), size=(size, size), mode="bilinear",
                                                antialias=True, align_corners=False)[0].round().clamp(0, 255)
    out = resize_uint8(crop, size)
    assert out.dtype == torch.uint8 and out.shape == (3, size, size) and out.is_contiguous()
    assert (out.float() - reference).abs().max() <= 1
    assert (out.float() - reference).abs().mean() < 0.3
