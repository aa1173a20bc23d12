"""``data.format: parquet``: training batches read from Parquet shards in a deterministic order (no Ray Data).

Yields what the other loaders yield: ``(views, labels, indices)``, ``views`` a ``B x V x 3 x R x R`` uint8
tensor. Each image is decoded once and its V crops are cut from it by the same
:class:`~nrcc_scale.data.augment.SpatialAugment` with the same random draws as the torchvision loader (a
generator seeded by (seed, epoch, sample id)); the photometric half runs on the device as for every loader.

This is the bitwise-reproducible sibling of ``data.format: ray_data``
(:mod:`nrcc_scale.data.ray_data_loader`), which streams the same shards through Ray Data. Under Ray Data,
``streaming_split`` hands blocks to whichever worker asks first, so which worker sees a row is decided at run
time; here the order is a pure function of (seed, epoch), as for the other loaders:

* the shard files are permuted by a generator seeded with (seed, epoch), and the rows inside each shard by
  one seeded with (seed, epoch, shard); concatenating them gives the epoch's global order (a "shard-level +
  within-shard" shuffle: rows of one shard stay together, so a worker reads few files);
* worker ``rank`` takes the contiguous positions ``[rank * L, (rank + 1) * L)`` of that order, with
  ``L = N // world_size``: disjoint shares, every sample exactly once per epoch across the workers except the
  last ``N mod world_size`` (as ``DistributedSampler(drop_last=True)`` drops them), and the last partial
  batch of each worker is dropped as the other loaders do;
* each worker streams just the shard files its share touches, in its share's order, with ``pyarrow.parquet``
  through ``pyarrow.fs`` (object storage or disk), ``read_ahead`` shard files ahead in background threads;
  rows are put in shard order by their ``index`` column.

The reads and decoding run in the training worker's process (no Ray tasks, so no CPU beyond the workers'
is needed); ``data.format: ray_data`` moves them to Ray Data tasks on other CPUs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from nrcc_scale.config import DataConfig
from nrcc_scale.data.augment import SpatialAugment
from nrcc_scale.data.base import DataError
from nrcc_scale.data.parquet_shards import BadImagePolicy, Manifest, ParquetSource, read_manifest


def epoch_plan(rows: list[int], rank: int, world_size: int, seed: int, epoch: int) -> list[tuple[int, np.ndarray]]:
    """Worker ``rank``'s share of ``epoch`` as ``[(shard k, row positions inside shard k in visiting order)]``."""
    offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
    n = int(offsets[-1])
    share = n // world_size
    lo, hi = rank * share, (rank + 1) * share
    file_order = np.random.default_rng([seed, epoch, 0x5EED]).permutation(len(rows))
    plan, position = [], 0
    for k in file_order:
        count = int(rows[k])
        if position + count > lo and position < hi:
            inner = np.random.default_rng([seed, epoch, int(k)]).permutation(count)
            plan.append((int(k), inner[max(lo - position, 0):min(hi - position, count)]))
        position += count
        if position >= hi:
            break
    return plan


def epoch_indices(manifest: Manifest, rank: int, world_size: int, seed: int, epoch: int) -> np.ndarray:
    """The sample ids worker ``rank`` visits in ``epoch``, in order (before the last partial batch is dropped)."""
    offsets = manifest.offsets
    parts = [offsets[k] + rows for k, rows in epoch_plan(manifest.rows, rank, world_size, seed, epoch)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class ParquetTrainLoader:
    """The deterministic Parquet counterpart of :class:`nrcc_scale.data.torchvision_loader.EpochLoader`
    (module docstring)."""

    def __init__(self, cfg: DataConfig, source: ParquetSource | None, resolution: int, num_views: int,
                 batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0, read_ahead: int = 2) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.manifest = source.manifest if isinstance(source, ParquetSource) else read_manifest(cfg.root)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.batch_size, self.num_views = batch_size, num_views
        aug = cfg.augment
        self.spatial = SpatialAugment(resolution, (aug.crop_scale_min, aug.crop_scale_max), aug.flip_p)
        self.policy = BadImagePolicy(cfg.on_bad_file)
        self.epoch = 0
        self.read_ahead = max(1, read_ahead)
        per_worker = self.manifest.num_rows // world_size
        if per_worker < batch_size:
            raise DataError(f"{self.manifest.uri}: {self.manifest.num_rows} images give each of {world_size} "
                            f"worker(s) {per_worker}, fewer than one batch of {batch_size}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return (self.manifest.num_rows // self.world_size) // self.batch_size

    def epoch_indices(self, epoch: int) -> np.ndarray:
        return epoch_indices(self.manifest, self.rank, self.world_size, self.seed, epoch)

    def _files(self, plan: list[tuple[int, np.ndarray]]) -> Iterator[tuple[int, np.ndarray, np.ndarray, list]]:
        """(shard k, its ids, labels, image bytes) for the shards of ``plan``, in plan order, read ahead."""
        from concurrent.futures import ThreadPoolExecutor

        from nrcc_scale.data.parquet_shards import read_shard

        def load(k: int):
            table = read_shard(self.manifest, k)
            ids = np.asarray(table.column("index"))
            if len(ids) != self.manifest.rows[k]:
                raise DataError(f"{self.manifest.file_uri(k)} holds {len(ids)} rows but the manifest lists "
                                f"{self.manifest.rows[k]}; write the shards again")
            sort = np.argsort(ids)  # position p of shard k is sample offsets[k] + p
            images = table.column("image").to_pylist()
            return k, ids[sort], np.asarray(table.column("label"))[sort], [images[int(i)] for i in sort]

        order = [k for k, _ in plan]
        with ThreadPoolExecutor(max_workers=self.read_ahead) as pool:
            pending = [pool.submit(load, k) for k in order[:self.read_ahead]]
            for nxt in range(len(order)):
                result = pending.pop(0).result()
                if nxt + self.read_ahead < len(order):
                    pending.append(pool.submit(load, order[nxt + self.read_ahead]))
                yield result

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        plan = epoch_plan(self.manifest.rows, self.rank, self.world_size, self.seed, self.epoch)
        positions = dict(plan)
        views, labels, indices = [], [], []
        batches = len(self)
        for k, ids, shard_labels, blobs in self._files(plan):
            where = self.manifest.file_uri(k)
            for p in positions[k]:
                sample = int(ids[p])
                image = self.policy.decode(blobs, int(p), where, sample)
                rng = np.random.default_rng([self.seed, self.epoch, sample])
                views.append(torch.stack([self.spatial(image, rng) for _ in range(self.num_views)]))
                labels.append(int(shard_labels[p]))
                indices.append(sample)
                if len(views) == self.batch_size:
                    yield torch.stack(views), torch.tensor(labels), torch.tensor(indices)
                    views, labels, indices = [], [], []
                    batches -= 1
                    if batches == 0:
                        return
