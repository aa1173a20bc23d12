"""Parquet shards and the streaming (data.format=parquet) loader: exactly once per epoch, resume, on_bad_file."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
import s3_fixtures as s3f
import torch
from shard_helpers import corrupt_shard_row

from nrcc_scale.config import DataConfig
from nrcc_scale.data.augment import SpatialAugment
from nrcc_scale.data.base import ArraySource, DataError
from nrcc_scale.data.parquet_loader import ParquetTrainLoader, epoch_indices, epoch_plan
from nrcc_scale.data.parquet_shards import ParquetSource, read_manifest, write_shards
from nrcc_scale.data.registry import build_data

s3_server = s3f.s3_server


def _source(n: int = 203, side: int = 24) -> ArraySource:
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, size=(n, side // 8, side // 8, 3), dtype=np.uint8)  # JPEG-friendly blocks
    images = np.ascontiguousarray(np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2))
    return ArraySource("toy", images, rng.integers(0, 5, n), [f"c{i}" for i in range(5)])


@pytest.mark.parametrize("world", [1, 2, 3])
def test_epoch_plan_is_a_disjoint_exactly_once_share_that_depends_on_seed_and_epoch(world) -> None:
    rows = [50, 50, 50, 37, 16]
    n = sum(rows)
    offsets = np.concatenate([[0], np.cumsum(rows)])

    def ids(rank, seed, epoch):
        return np.concatenate([offsets[k] + p for k, p in epoch_plan(rows, rank, world, seed, epoch)])

    shares = [ids(r, 7, 2) for r in range(world)]
    assert all(len(s) == n // world for s in shares)
    union = np.concatenate(shares)
    assert len(np.unique(union)) == len(union) == (n // world) * world
    assert np.array_equal(ids(0, 7, 2), ids(0, 7, 2))  # a function of (seed, epoch): resumable
    assert not np.array_equal(ids(0, 7, 2), ids(0, 7, 3))
    assert not np.array_equal(ids(0, 7, 2), ids(0, 8, 2))
    if world == 1:  # within a shard the rows are shuffled too, not only the shard order
        assert not np.array_equal(np.sort(ids(0, 7, 2)[:50]), ids(0, 7, 2)[:50])


def test_shards_round_trip_and_source_reads_them(tmp_path) -> None:
    src = _source()
    write_shards(src, str(tmp_path / "shards"), rows_per_file=64, quality=95, progress=False, log=lambda m: None)
    m = read_manifest(str(tmp_path / "shards"))
    assert m.rows == [64, 64, 64, 11] and m.num_rows == len(src)
    table = pq.read_table(tmp_path / "shards" / m.files[1])
    assert table.column_names == ["index", "label", "image"]
    assert np.array_equal(np.asarray(table.column("index")), np.arange(64, 128))
    source = ParquetSource(str(tmp_path / "shards"))
    assert np.array_equal(source.labels, src.labels)
    diff = np.abs(source.image(100).astype(int) - src.image(100).astype(int)).mean()
    assert source.image(100).shape == (24, 24, 3) and diff < 20  # JPEG, not exact


def test_missing_shards_are_one_line_naming_the_location(tmp_path) -> None:
    with pytest.raises(DataError, match="_manifest.json not found") as err:
        build_data(DataConfig(format="parquet", root=str(tmp_path / "none")))
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_parquet_loader_exactly_once_resume_and_bad_files(s3_server, tmp_path) -> None:
    src = _source()
    uri = f"s3://{s3_server.new_bucket()}/toy-shards"
    write_shards(src, uri, rows_per_file=64, progress=False, log=lambda m: None)
    cfg = DataConfig(format="parquet", root=uri)
    source = ParquetSource(uri)
    loaders = [ParquetTrainLoader(cfg, source, 16, 2, batch_size=10, rank=r, world_size=2, seed=3) for r in (0, 1)]
    assert len(loaders[0]) == (203 // 2) // 10
    seen = []
    for loader in loaders:
        loader.set_epoch(1)
        batches = list(loader)
        assert len(batches) == len(loader)
        views, labels, indices = (torch.cat(x) for x in zip(*batches, strict=True))
        assert views.shape == (100, 2, 3, 16, 16) and views.dtype == torch.uint8
        assert np.array_equal(labels.numpy(), src.labels[indices.numpy()])
        assert np.array_equal(indices.numpy(), loader.epoch_indices(1)[:100])
        # the same crops as the torchvision loader would cut from the decoded image
        spatial = SpatialAugment(16, (cfg.augment.crop_scale_min, cfg.augment.crop_scale_max), cfg.augment.flip_p)
        i = int(indices[7])
        rng = np.random.default_rng([3, 1, i])
        expected = torch.stack([spatial(source.image(i), rng) for _ in range(2)])
        assert torch.equal(views[7], expected)
        seen.append(indices.numpy())
    assert len(np.intersect1d(seen[0], seen[1])) == 0  # disjoint across workers
    shares = [epoch_indices(source.manifest, r, 2, 3, 1) for r in (0, 1)]
    assert len(np.unique(np.concatenate(shares))) == 2 * (203 // 2)

    # resume: a fresh loader (a restarted worker) at epoch 2 continues with epoch 2's order
    fresh = ParquetTrainLoader(cfg, source, 16, 2, batch_size=10, rank=0, world_size=2, seed=3)
    fresh.set_epoch(2)
    idx2 = torch.cat([b[2] for b in fresh]).numpy()
    assert np.array_equal(idx2, epoch_indices(source.manifest, 0, 2, 3, 2)[:100])
    assert not np.array_equal(idx2, seen[0])

    # corrupt image bytes: fail names the shard and the sample; skip keeps the batch count and warns
    local = tmp_path / "shards"
    write_shards(src, str(local), rows_per_file=64, progress=False, log=lambda m: None)
    loader = ParquetTrainLoader(DataConfig(format="parquet", root=str(local)), None, 16, 2, 10, 0, 2, 3)
    bad = int(loader.epoch_indices(0)[3])  # a sample rank 0 visits in epoch 0
    corrupt_shard_row(local / f"part-{bad // 64:05d}.parquet", bad % 64)
    with pytest.raises(DataError, match=rf"part-{bad // 64:05d}\.parquet: sample {bad} holds corrupt image bytes"):
        list(loader)
    skip = ParquetTrainLoader(DataConfig(format="parquet", root=str(local), on_bad_file="skip"), None, 16, 2, 10,
                              0, 2, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(list(skip)) == len(skip)
    assert any(f"sample {bad}" in str(w.message) for w in caught)
