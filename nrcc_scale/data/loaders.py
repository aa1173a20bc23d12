"""Training loaders: FFCV when a .beton is given and ffcv imports, the torchvision-style loader otherwise.

Both yield ``(views, labels, indices)`` with ``views`` a ``B x V x 3 x R x R`` uint8 tensor of randomly
cropped and flipped copies; the photometric half of the augmentation runs on the device afterwards
(:class:`nrcc_scale.data.augment.BatchPhotometricAugment`), so both paths share its semantics. Every worker
sees a distinct shard that changes every epoch (``set_epoch``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch

from nrcc_scale.config import DataConfig
from nrcc_scale.data.augment import SpatialAugment
from nrcc_scale.data.base import ImageSource
from nrcc_scale.data.ffcv_io import ffcv_available
from nrcc_scale.data.torchvision_loader import EpochLoader, MultiViewDataset


class TrainLoader(Protocol):
    def set_epoch(self, epoch: int) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]: ...


def use_ffcv(cfg: DataConfig) -> bool:
    if cfg.loader == "torchvision":
        return False
    if cfg.loader == "ffcv":
        if not cfg.beton:
            raise ValueError("data.loader = 'ffcv' needs data.beton: write one with "
                             "`python -m nrcc_scale.data prepare --dataset NAME --root DIR --out FILE.beton`")
        if not ffcv_available():
            raise ValueError("data.loader = 'ffcv' but ffcv is not importable: apt-get install -y pkg-config "
                             "libturbojpeg0-dev libopencv-dev && pip install 'nrcc-scale[ffcv]'")
        return True
    return bool(cfg.beton) and ffcv_available()


def build_train_loader(cfg: DataConfig, source: ImageSource, resolution: int, num_views: int, batch_size: int,
                       rank: int, world_size: int, seed: int, device: torch.device) -> TrainLoader:
    aug = cfg.augment
    if cfg.format == "parquet":
        from nrcc_scale.data.parquet_loader import ParquetTrainLoader

        return ParquetTrainLoader(cfg, source, resolution, num_views, batch_size, rank, world_size, seed)
    if cfg.format == "ray_data":  # decoding and crops run in Ray Data tasks (built by the driver)
        from nrcc_scale.data.ray_data_loader import RayDataTrainLoader

        return RayDataTrainLoader(cfg, len(source), num_views, batch_size, rank, world_size, seed)
    if use_ffcv(cfg):
        from nrcc_scale.data.ffcv_loader import FFCVTrainLoader
        from nrcc_scale.data.staging import stage_for_loader

        cfg = stage_for_loader(cfg)  # a remote .beton: this node's local copy (staged once per node)
        return FFCVTrainLoader(cfg, resolution, num_views, batch_size, rank, world_size, seed, device,
                               expected_samples=len(source))
    spatial = SpatialAugment(resolution, (aug.crop_scale_min, aug.crop_scale_max), aug.flip_p)
    dataset = MultiViewDataset(source, spatial, num_views=num_views, seed=seed)
    return EpochLoader(dataset, batch_size, rank, world_size, seed=seed, num_workers=cfg.loader_workers,
                       pin_memory=device.type == "cuda")
