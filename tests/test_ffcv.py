"""FFCV files and the FFCV training loader: written atomically, read back exactly, sharded across workers.

Skipped when ffcv (or its system libraries) is not importable. FFCV compiles its pipelines with numba when
a loader is built (a few seconds each), so the data here are tiny and loaders are shared where possible.
"""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    import ffcv  # noqa: F401
except Exception as err:  # noqa: BLE001 - ImportError or a missing system library
    pytest.skip(f"ffcv is not importable: {err}", allow_module_level=True)

from nrcc_scale.config import AugmentConfig, DataConfig
from nrcc_scale.data.__main__ import main as data_cli
from nrcc_scale.data.augment import SpatialAugment
from nrcc_scale.data.base import ArraySource, DataError
from nrcc_scale.data.ffcv_io import read_beton_fields, write_beton
from nrcc_scale.data.ffcv_loader import FFCVTrainLoader, epoch_shard
from nrcc_scale.data.loaders import build_train_loader, use_ffcv
from nrcc_scale.data.torchvision_loader import EpochLoader, MultiViewDataset

pytestmark = pytest.mark.ffcv

REPO = Path(__file__).resolve().parents[1]
N = 48  # divisible by the global batch (2 workers x 4): every sample is served once per epoch


@pytest.fixture(scope="module", autouse=True)
def _quiet_numba_finalizers():
    """numba's dispatcher finalizer raises a harmless KeyError when FFCV's compiled pipelines are
    garbage-collected; keep it out of the report (any other unraisable exception still shows)."""
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
        if isinstance(unraisable.exc_value, KeyError) and any("numba" in f.filename for f in frames):
            return
        previous(unraisable)

    sys.unraisablehook = hook
    yield
    gc.collect()
    gc.collect()
    sys.unraisablehook = previous


def _source(n: int = N, side: int = 32, seed: int = 0) -> ArraySource:
    """Smooth random colour waves (JPEG-friendly, unlike pixel noise) with labels ``i % 7``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    freq = rng.uniform(0.5, 2.0, (n, 1, 1, 3))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1, 3))
    waves = np.sin(2 * np.pi * freq * (x[None, ..., None] + 0.5 * y[None, ..., None]) + phase)
    images = np.clip(128 + 100 * waves, 0, 255).astype(np.uint8)
    return ArraySource("synthetic", images, np.arange(n) % 7, [f"c{i}" for i in range(7)])


def _cfg(beton: Path, **augment) -> DataConfig:
    return DataConfig(dataset="cifar10", beton=str(beton), loader="ffcv", augment=AugmentConfig(**augment))


def _epoch(loader, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    loader.set_epoch(epoch)
    views, labels, indices = zip(*loader, strict=True)
    return torch.cat(views), torch.cat(labels), torch.cat(indices)


@pytest.fixture(scope="module")
def source() -> ArraySource:
    return _source()


@pytest.fixture(scope="module")
def raw_beton(tmp_path_factory, source) -> Path:
    return write_beton(source, tmp_path_factory.mktemp("beton") / "raw.beton", write_mode="raw",
                       num_workers=2, progress=False)


@pytest.fixture(scope="module")
def shards(raw_beton):
    """Rank 0 and rank 1 of two workers (V = 2), and a second rank 0 built independently."""
    make = lambda rank: FFCVTrainLoader(_cfg(raw_beton), 24, 2, 4, rank=rank, world_size=2, seed=5,  # noqa: E731
                                        device="cpu", threads=1)
    return make(0), make(1), make(0)


def test_write_and_read_back_raw_exactly_and_jpeg_closely(tmp_path, source, raw_beton) -> None:
    assert read_beton_fields(raw_beton) == (N, ["index", "image", "label"])
    jpg = write_beton(source, tmp_path / "q.beton", write_mode="jpg", jpeg_quality=95, num_workers=2,
                      progress=False)
    # whole-image "crops", never or always flipped: the views are the stored images (mirrored)
    for path, exact, flip in ((raw_beton, True, False), (raw_beton, True, True), (jpg, False, False)):
        cfg = _cfg(path, crop_scale_min=1.0, crop_scale_max=1.0, flip_p=1.0 if flip else 0.0)
        loader = FFCVTrainLoader(cfg, 32, 3, 8, device="cpu", threads=1)
        views, labels, indices = _epoch(loader, 0)
        assert views.shape == (N, 3, 3, 32, 32) and views.dtype == torch.uint8
        assert labels.dtype == torch.int64 and indices.dtype == torch.int64 and labels.shape == (N,)
        assert sorted(indices.tolist()) == list(range(N))
        np.testing.assert_array_equal(labels.numpy(), source.labels[indices.numpy()])  # labels round-trip
        expected = torch.from_numpy(source.images[indices.numpy()]).permute(0, 3, 1, 2)
        expected = expected.flip(-1) if flip else expected
        for v in range(3):
            diff = (views[:, v].float() - expected.float()).abs()
            assert diff.max() == 0 if exact else diff.mean() < 6, float(diff.mean())  # OpenCV round trip: 3.4


def test_a_failed_write_leaves_nothing_at_the_destination(tmp_path) -> None:
    class Failing(ArraySource):
        def image(self, index: int) -> np.ndarray:
            if index == 37:
                raise OSError("simulated read error")
            return super().image(index)

    base = _source(200)
    failing = Failing("failing", base.images, base.labels, base.class_names)
    out = tmp_path / "out" / "data.beton"
    with pytest.raises(DataError, match="sample 37: OSError: simulated read error") as err:
        write_beton(failing, out, write_mode="jpg", num_workers=2, progress=False, chunk_size=10)
    assert "Nothing was written" in str(err.value)
    assert not out.exists() and os.listdir(out.parent) == []  # no half-written file, no temporary left
    with pytest.raises(DataError, match="write_mode"):
        write_beton(base, out, write_mode="png")


def test_loader_shapes_labels_and_views_differ(shards, source) -> None:
    rank0 = shards[0]
    assert len(rank0) == N // 2 // 4
    views, labels, indices = next(iter(rank0))
    assert views.shape == (4, 2, 3, 24, 24) and views.dtype == torch.uint8 and views.is_contiguous()
    assert labels.shape == (4,) and indices.shape == (4,)
    np.testing.assert_array_equal(labels.numpy(), source.labels[indices.numpy()])
    assert not torch.equal(views[:, 0], views[:, 1])  # independent crops per view


def test_every_sample_once_per_epoch_across_two_workers(shards) -> None:
    rank0, rank1, _ = shards
    for epoch in (0, 1):
        seen0 = _epoch(rank0, epoch)[2].tolist()
        seen1 = _epoch(rank1, epoch)[2].tolist()
        assert len(seen0) == len(seen1) == N // 2
        assert not set(seen0) & set(seen1)  # no overlap
        assert sorted(seen0 + seen1) == list(range(N))  # the union is every sample, each once


def test_order_changes_every_epoch_and_is_a_function_of_seed_and_epoch(shards) -> None:
    rank0, _, rank0_again = shards
    e0, e1, e2 = (_epoch(rank0, e)[2] for e in (0, 1, 2))
    assert not torch.equal(e0, e1) and not torch.equal(e1, e2)
    # an independently built loader (a resumed run) replays any epoch exactly, in any order of epochs
    assert torch.equal(_epoch(rank0_again, 2)[2], e2)
    assert torch.equal(_epoch(rank0_again, 0)[2], e0)
    assert torch.equal(_epoch(rank0, 1)[2], e1)  # re-running an epoch on the same loader
    np.testing.assert_array_equal(e1.numpy(), epoch_shard(N, 0, 2, 5, 1))
    assert not np.array_equal(epoch_shard(N, 0, 2, 6, 1), e1.numpy())  # another seed, another order


def test_same_shards_and_order_as_the_torchvision_loader(shards, source) -> None:
    rank1 = shards[1]
    dataset = MultiViewDataset(source, SpatialAugment(24), num_views=2, seed=5)
    torchvision_loader = EpochLoader(dataset, batch_size=4, rank=1, world_size=2, seed=5)
    for epoch in (0, 3):
        torchvision_loader.set_epoch(epoch)
        expected = torch.cat([batch[2] for batch in torchvision_loader])
        assert torch.equal(_epoch(rank1, epoch)[2], expected)


def test_uneven_sizes_drop_like_distributed_sampler() -> None:
    shard0, shard1 = epoch_shard(50, 0, 2, 0, 0), epoch_shard(50, 1, 2, 0, 0)
    assert len(shard0) == len(shard1) == 25 and not set(shard0) & set(shard1)
    assert len(set(shard0) | set(shard1)) == 50


def test_build_train_loader_picks_ffcv_for_a_beton(raw_beton, source) -> None:
    cfg = DataConfig(dataset="cifar10", beton=str(raw_beton), loader="auto", loader_workers=1)
    assert use_ffcv(cfg)
    loader = build_train_loader(cfg, source, 16, 3, 6, 0, 1, 0, torch.device("cpu"))
    assert isinstance(loader, FFCVTrainLoader) and len(loader) == N // 6
    loader.set_epoch(0)
    views, labels, indices = next(iter(loader))
    assert views.shape == (6, 3, 3, 16, 16)


def test_clear_errors_for_missing_or_mismatched_files(tmp_path, raw_beton, monkeypatch) -> None:
    with pytest.raises(DataError, match="not found; write it with `python -m nrcc_scale.data prepare"):
        FFCVTrainLoader(_cfg(tmp_path / "none.beton"), 16, 2, 4)
    (tmp_path / "junk.beton").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="not a readable FFCV .beton"):
        FFCVTrainLoader(_cfg(tmp_path / "junk.beton"), 16, 2, 4)
    with pytest.raises(DataError, match="holds 48 images but the training split has 50"):
        FFCVTrainLoader(_cfg(raw_beton), 16, 2, 4, expected_samples=50)
    with pytest.raises(DataError, match="fewer than one batch"):
        FFCVTrainLoader(_cfg(raw_beton), 16, 2, 32, world_size=2)
    from nrcc_scale.data import ffcv_loader

    monkeypatch.setattr(ffcv_loader, "MAX_DECODE_BUFFER", 1 << 16)
    with pytest.raises(DataError, match=r"images up to 32x32 px need .* decode buffers.*--max-resolution"):
        FFCVTrainLoader(_cfg(raw_beton), 16, 2, 16)


def test_per_view_pipelines_with_ffcv_stock_decoders(raw_beton, source) -> None:
    """FFCV's own RandomResizedCropRGBImageDecoder + RandomHorizontalFlip, one pipeline per view."""
    loader = FFCVTrainLoader(_cfg(raw_beton), 16, 2, 8, rank=0, world_size=2, seed=5, decode="per_view",
                             threads=1)
    views, labels, indices = _epoch(loader, 1)
    assert views.shape == (N // 2, 2, 3, 16, 16) and views.dtype == torch.uint8
    np.testing.assert_array_equal(indices.numpy(), epoch_shard(N, 0, 2, 5, 1))
    np.testing.assert_array_equal(labels.numpy(), source.labels[indices.numpy()])


def _write_cifar10(root: Path, per_class: int = 5) -> np.ndarray:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = np.tile(np.arange(10), per_class)
    data = np.random.default_rng(0).integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    for b, rows in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        with open(folder / f"data_batch_{b}", "wb") as fh:
            pickle.dump({b"data": data[rows], b"labels": labels[rows].tolist()}, fh)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": data[:10], b"labels": labels[:10].tolist()}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, fh)
    return labels


def test_prepare_cli_subprocess_writes_a_loadable_file(tmp_path) -> None:
    labels = _write_cifar10(tmp_path / "data")
    out = tmp_path / "files" / "c10_train.beton"
    command = [sys.executable, "-m", "nrcc_scale.data", "prepare", "--dataset", "cifar10", "--root",
               str(tmp_path / "data"), "--out", str(out), "--workers", "2"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert f"wrote 50 images to {out}" in proc.stdout and "data.beton=" in proc.stdout
    assert read_beton_fields(out) == (50, ["index", "image", "label"])
    assert sorted(os.listdir(out.parent)) == ["c10_train.beton"]
    loader = FFCVTrainLoader(_cfg(out), 32, 2, 10, device="cpu", threads=1)
    _, got_labels, indices = _epoch(loader, 0)
    np.testing.assert_array_equal(got_labels.numpy(), labels[indices.numpy()])


def test_prepare_skips_bad_images_of_a_folder(tmp_path, capsys) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "set" / cls).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "set" / cls / f"{i}.jpg")
    (tmp_path / "set" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)
    out = tmp_path / "set.beton"
    args = ["prepare", "--dataset", "image_folder", "--root", str(tmp_path / "set"), "--out", str(out),
            "--split", "all", "--workers", "1", "--no-progress"]
    assert data_cli(args) == 2 and not out.exists()  # fail (default): the error names the file
    assert "broken.jpg" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert data_cli([*args, "--on-bad-file", "skip"]) == 0
    assert read_beton_fields(out)[0] == 6
