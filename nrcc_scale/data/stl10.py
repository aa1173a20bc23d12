"""STL-10 in its binary format: ``stl10_binary/`` (``train_X.bin`` ...); optionally the 100k unlabelled images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nrcc_scale.data.base import ArraySource, ConcatSource, DataBundle, DataError, ImageSource, channel_stats
from nrcc_scale.data.bundles import train_test_bundle
from nrcc_scale.data.locate import data_root, locate

if TYPE_CHECKING:  # annotations only: the data set table (catalog) must not import the config at run time
    from nrcc_scale.config import DataConfig

STL10_FOLDER = "stl10_binary"
STL10_SIDE = 96
STL10_BYTES = 3 * STL10_SIDE * STL10_SIDE
STL10_HINT = ("download the STL-10 binary version (stl10_binary.tar.gz) and point data.root at the folder "
              "containing stl10_binary")


def _stl_images(path: Path, memmap: bool = False) -> np.ndarray:
    """``N x 96 x 96 x 3``: the files store each image as 3 planes of column-major 96 x 96 pixels."""
    if not path.is_file():
        raise DataError(f"stl10: {path} not found; {STL10_HINT}")
    size = path.stat().st_size
    if size == 0 or size % STL10_BYTES:
        raise DataError(f"stl10: {path} has {size} bytes, not a multiple of {STL10_BYTES} (one 96x96x3 "
                        "image); the file is truncated or not an STL-10 binary")
    raw = np.memmap(path, dtype=np.uint8, mode="r") if memmap else np.fromfile(path, dtype=np.uint8)
    planes = raw.reshape(-1, 3, STL10_SIDE, STL10_SIDE)  # [n, channel, x (column), y (row)]
    return planes if memmap else np.ascontiguousarray(planes.transpose(0, 3, 2, 1))


def _stl_labels(path: Path, count: int, num_classes: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"stl10: {path} not found; {STL10_HINT}")
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1  # stored as 1..10
    if len(labels) != count:
        raise DataError(f"stl10: {path} has {len(labels)} labels for {count} images")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"stl10: {path}: labels outside 1..{num_classes}")
    return labels


class STL10UnlabelledSource(ImageSource):
    """STL-10's 100,000 unlabelled images, read lazily from a memory map (2.8 GB); labels are -1."""

    def __init__(self, path: Path, class_names: Sequence[str], mean, std) -> None:
        self.name = "stl10[unlabeled]"
        self.planes = _stl_images(path, memmap=True)
        self.labels = np.full(len(self.planes), -1, dtype=np.int64)
        self.class_names = list(class_names)
        self.native_resolution = STL10_SIDE
        self.mean, self.std = mean, std

    def image(self, index: int) -> np.ndarray:
        return np.ascontiguousarray(self.planes[int(index)].transpose(2, 1, 0))


def read_stl10(root: Path, unlabeled: bool = False) -> tuple[ImageSource, ImageSource, ImageSource | None]:
    folder = locate(root, STL10_FOLDER, "train_X.bin")
    names_path = folder / "class_names.txt"
    if not names_path.is_file():
        raise DataError(f"stl10: {names_path} not found; {STL10_HINT}")
    class_names = [line.strip() for line in names_path.read_text().splitlines() if line.strip()]
    parts = []
    for split in ("train", "test"):
        images = _stl_images(folder / f"{split}_X.bin")
        labels = _stl_labels(folder / f"{split}_y.bin", len(images), len(class_names))
        parts.append((images, labels))
    mean, std = channel_stats(parts[0][0])
    train = ArraySource("stl10[train]", parts[0][0], parts[0][1], class_names, mean, std)
    test = ArraySource("stl10[test]", parts[1][0], parts[1][1], class_names, mean, std)
    extra = STL10UnlabelledSource(folder / "unlabeled_X.bin", class_names, mean, std) if unlabeled else None
    return train, test, extra


def build_stl10(cfg: DataConfig, seed: int) -> DataBundle:
    # ``data.use_unlabeled`` is a proposed DataConfig key (default false): add the 100k unlabelled
    # images to the self-supervised training split (never to clustering or probes: they have no labels)
    unlabeled = cfg.use_unlabeled
    train, test, extra = read_stl10(data_root(cfg, "the folder containing stl10_binary"), unlabeled)
    bundle = train_test_bundle(train, test, "stl10")
    if extra is not None:
        bundle.train = ConcatSource([train, extra], name="stl10[train+unlabeled]")
        if cfg.labels == "none":  # cluster the 100k unlabelled images themselves (label-free scores only)
            return DataBundle(train=bundle.train, evaluate=extra, probe_train=extra, probe_test=extra)
    return bundle
