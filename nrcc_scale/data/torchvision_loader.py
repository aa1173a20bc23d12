"""PyTorch datasets over an :class:`ImageSource`, and the torchvision-style training/evaluation loaders.

Training items are ``(views, label, index)`` with ``views`` a ``V x 3 x R x R`` uint8 tensor of independently
cropped and flipped copies (V = 2, or 3 when NRCC takes an ordinary augmentation as x^c). The random
draws for an item depend only on (seed, epoch, index), so an epoch is reproducible whatever the number
of loader processes, and a resumed run sees exactly the crops it would have seen.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from nrcc_scale.data.augment import SpatialAugment, center_resize
from nrcc_scale.data.base import ImageSource


class MultiViewDataset(Dataset):
    def __init__(self, source: ImageSource, spatial: SpatialAugment, num_views: int = 2, seed: int = 0) -> None:
        self.source = source
        self.spatial = spatial
        self.num_views = num_views
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image = self.source.image(index)
        views = torch.stack([self.spatial(image, rng) for _ in range(self.num_views)])
        return views, int(self.source.labels[index]), index


class EvalDataset(Dataset):
    """Whole images resized to the training resolution; items ``(image uint8, label, index)``."""

    def __init__(self, source: ImageSource, resolution: int) -> None:
        self.source = source
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return center_resize(self.source.image(index), self.resolution), int(self.source.labels[index]), index


class EpochLoader:
    """A DataLoader over a DistributedSampler that reshuffles every epoch on every worker.

    Each worker sees a distinct 1/world_size share of a fresh permutation every epoch
    (``DistributedSampler.set_epoch``); the last incomplete batch is dropped so BatchNorm and the
    contrastive losses always see full batches.
    """

    def __init__(self, dataset: MultiViewDataset, batch_size: int, rank: int, world_size: int, seed: int,
                 num_workers: int = 0, pin_memory: bool = False) -> None:
        self.dataset = dataset
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, num_workers=num_workers,
                                 pin_memory=pin_memory, drop_last=True,
                                 persistent_workers=False)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)
