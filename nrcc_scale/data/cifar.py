"""CIFAR in its python-pickle format, and the long-tailed CIFAR training splits.

=================  ===================================================================================
``cifar10``        ``cifar-10-batches-py/`` (the "python version": ``data_batch_1..5``, ``test_batch``).
``cifar100``       ``cifar-100-python/`` (``train``, ``test``, ``meta``), the 100 fine labels.
``cifar20``        the same files, the 20 coarse (superclass) labels stored in the pickles.
``cifar10_lt``     long-tailed training split, ``n_c = n_max * ratio^(-c/(C-1))`` (Cao et al. 2019);
``cifar20_lt``     the test split stays balanced.
=================  ===================================================================================
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nrcc_scale.data.base import (
    ArraySource,
    DataBundle,
    DataError,
    ImageSource,
    SubsetSource,
    channel_stats,
    describe_error,
)
from nrcc_scale.data.bundles import train_only_bundle, train_test_bundle
from nrcc_scale.data.locate import data_root, locate

if TYPE_CHECKING:  # annotations only: the data set table (catalog) must not import the config at run time
    from nrcc_scale.config import DataConfig

log = logging.getLogger("nrcc_scale.data")

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"

# The 20 CIFAR-100 superclasses in coarse-label order, each with its five fine classes (Krizhevsky 2009).
CIFAR100_SUPERCLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("aquatic_mammals", ("beaver", "dolphin", "otter", "seal", "whale")),
    ("fish", ("aquarium_fish", "flatfish", "ray", "shark", "trout")),
    ("flowers", ("orchid", "poppy", "rose", "sunflower", "tulip")),
    ("food_containers", ("bottle", "bowl", "can", "cup", "plate")),
    ("fruit_and_vegetables", ("apple", "mushroom", "orange", "pear", "sweet_pepper")),
    ("household_electrical_devices", ("clock", "keyboard", "lamp", "telephone", "television")),
    ("household_furniture", ("bed", "chair", "couch", "table", "wardrobe")),
    ("insects", ("bee", "beetle", "butterfly", "caterpillar", "cockroach")),
    ("large_carnivores", ("bear", "leopard", "lion", "tiger", "wolf")),
    ("large_man-made_outdoor_things", ("bridge", "castle", "house", "road", "skyscraper")),
    ("large_natural_outdoor_scenes", ("cloud", "forest", "mountain", "plain", "sea")),
    ("large_omnivores_and_herbivores", ("camel", "cattle", "chimpanzee", "elephant", "kangaroo")),
    ("medium_mammals", ("fox", "porcupine", "possum", "raccoon", "skunk")),
    ("non-insect_invertebrates", ("crab", "lobster", "snail", "spider", "worm")),
    ("people", ("baby", "boy", "girl", "man", "woman")),
    ("reptiles", ("crocodile", "dinosaur", "lizard", "snake", "turtle")),
    ("small_mammals", ("hamster", "mouse", "rabbit", "shrew", "squirrel")),
    ("trees", ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree")),
    ("vehicles_1", ("bicycle", "bus", "motorcycle", "pickup_truck", "train")),
    ("vehicles_2", ("lawn_mower", "rocket", "streetcar", "tank", "tractor")),
)
# fine label ids are the fine names in alphabetical order (the order of ``meta``'s fine_label_names)
CIFAR100_FINE_NAMES: tuple[str, ...] = tuple(sorted(f for _, fines in CIFAR100_SUPERCLASSES for f in fines))
CIFAR100_COARSE_NAMES: tuple[str, ...] = tuple(c for c, _ in CIFAR100_SUPERCLASSES)
_COARSE_OF = {fine: c for c, (_, fines) in enumerate(CIFAR100_SUPERCLASSES) for fine in fines}
CIFAR100_FINE_TO_COARSE: np.ndarray = np.asarray([_COARSE_OF[f] for f in CIFAR100_FINE_NAMES], dtype=np.int64)


def _unpickle(path: Path, dataset: str, hint: str) -> dict:
    if not path.is_file():
        raise DataError(f"{dataset}: {path} not found; {hint}")
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="bytes")
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{dataset}: cannot read {path} ({describe_error(err)}); the file is damaged or "
                        f"not the CIFAR python version; {hint}") from err


def _key(batch: dict, key: str, path: Path, dataset: str):
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DataError(f"{dataset}: {path} has no '{key}' entry; is it the CIFAR python version?")


def _cifar_images(batch: dict, path: Path, dataset: str) -> np.ndarray:
    data = np.asarray(_key(batch, "data", path, dataset), dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{dataset}: {path}: expected N x 3072 pixel rows, got shape {data.shape}")
    # rows hold the red, green and blue 32 x 32 planes one after another
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _names(values: Iterable) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


@dataclass
class CifarArrays:
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]


CIFAR10_HINT = ("download CIFAR-10 python version (cifar-10-python.tar.gz) and point data.root at the folder "
                "containing cifar-10-batches-py")
CIFAR100_HINT = ("download CIFAR-100 python version (cifar-100-python.tar.gz) and point data.root at the "
                 "folder containing cifar-100-python")


def read_cifar10(root: Path) -> CifarArrays:
    folder = locate(root, CIFAR10_FOLDER, "data_batch_1")
    images, labels = [], []
    for i in range(1, 6):
        path = folder / f"data_batch_{i}"
        batch = _unpickle(path, "cifar10", CIFAR10_HINT)
        images.append(_cifar_images(batch, path, "cifar10"))
        labels.append(np.asarray(_key(batch, "labels", path, "cifar10"), dtype=np.int64))
    test_path = folder / "test_batch"
    test = _unpickle(test_path, "cifar10", CIFAR10_HINT)
    meta_path = folder / "batches.meta"
    meta = _unpickle(meta_path, "cifar10", CIFAR10_HINT)
    arrays = CifarArrays(np.concatenate(images), np.concatenate(labels),
                         _cifar_images(test, test_path, "cifar10"),
                         np.asarray(_key(test, "labels", test_path, "cifar10"), dtype=np.int64),
                         _names(_key(meta, "label_names", meta_path, "cifar10")))
    _check_labels(arrays, "cifar10", folder)
    return arrays


def read_cifar100(root: Path, coarse: bool) -> CifarArrays:
    folder = locate(root, CIFAR100_FOLDER, "train")
    dataset = "cifar20" if coarse else "cifar100"
    parts = {}
    for split in ("train", "test"):
        path = folder / split
        batch = _unpickle(path, dataset, CIFAR100_HINT)
        fine = np.asarray(_key(batch, "fine_labels", path, dataset), dtype=np.int64)
        coarse_labels = np.asarray(_key(batch, "coarse_labels", path, dataset), dtype=np.int64)
        if len(fine) != len(coarse_labels):
            raise DataError(f"{dataset}: {path}: {len(fine)} fine but {len(coarse_labels)} coarse labels")
        if fine.size and (fine.min() < 0 or fine.max() >= 100):
            raise DataError(f"{dataset}: {path}: fine labels outside 0..99")
        disagree = int(np.sum(CIFAR100_FINE_TO_COARSE[fine] != coarse_labels))
        if disagree:
            raise DataError(f"{dataset}: {path}: {disagree} rows pair fine and coarse labels differently "
                            "from the standard CIFAR-100 superclass table; the file is not the standard "
                            "CIFAR-100")
        parts[split] = (_cifar_images(batch, path, dataset), coarse_labels if coarse else fine)
    meta_path = folder / "meta"
    meta = _unpickle(meta_path, dataset, CIFAR100_HINT)
    names = _names(_key(meta, "coarse_label_names" if coarse else "fine_label_names", meta_path, dataset))
    arrays = CifarArrays(*parts["train"], *parts["test"], names)
    _check_labels(arrays, dataset, folder)
    return arrays


def _check_labels(arrays: CifarArrays, dataset: str, folder: Path) -> None:
    n = len(arrays.class_names)
    for split, images, labels in (("train", arrays.train_images, arrays.train_labels),
                                  ("test", arrays.test_images, arrays.test_labels)):
        if len(images) != len(labels):
            raise DataError(f"{dataset}: {folder} {split}: {len(images)} images but {len(labels)} labels")
        if labels.size and (labels.min() < 0 or labels.max() >= n):
            raise DataError(f"{dataset}: {folder} {split}: labels outside 0..{n - 1}")


def _cifar_sources(dataset: str, arrays: CifarArrays) -> tuple[ArraySource, ArraySource]:
    mean, std = channel_stats(arrays.train_images)
    names = arrays.class_names
    train = ArraySource(f"{dataset}[train]", arrays.train_images, arrays.train_labels, names, mean, std)
    test = ArraySource(f"{dataset}[test]", arrays.test_images, arrays.test_labels, names, mean, std)
    return train, test


def _cifar_arrays(cfg: DataConfig, dataset: str) -> CifarArrays:
    if dataset.startswith("cifar10") and not dataset.startswith("cifar100"):
        return read_cifar10(data_root(cfg, "the folder containing cifar-10-batches-py"))
    root = data_root(cfg, "the folder containing cifar-100-python")
    return read_cifar100(root, coarse=dataset.startswith("cifar20"))


def build_cifar(cfg: DataConfig, seed: int) -> DataBundle:
    train, test = _cifar_sources(cfg.dataset, _cifar_arrays(cfg, cfg.dataset))
    return train_test_bundle(train, test, cfg.dataset)



# ----------------------------------------------------------------------------------------------------------
# Long-tailed CIFAR
# ----------------------------------------------------------------------------------------------------------


def long_tail_counts(n_max: int, num_classes: int, ratio: float) -> np.ndarray:
    """``n_c = floor(n_max * ratio^(-c / (C - 1)))``, c = 0..C-1 (Cao et al. 2019): class 0 keeps
    ``n_max`` images, the last class ``n_max / ratio``."""
    if num_classes < 2:
        raise DataError("a long-tailed split needs at least two classes")
    if ratio < 1:
        raise DataError(f"imbalance ratio {ratio}: must be >= 1")
    c = np.arange(num_classes, dtype=np.float64)
    # the small epsilon keeps exact products (5000 / 10 = 500) from flooring to 499 in floating point
    counts = np.floor(n_max * ratio ** (-c / (num_classes - 1)) + 1e-9).astype(np.int64)
    return np.maximum(counts, 1)


def long_tail_indices(labels: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Sorted row indices of a seeded long-tailed subset; ``n_max`` is the smallest class size."""
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1
    per_class = np.bincount(labels, minlength=num_classes)
    counts = long_tail_counts(int(per_class.min()), num_classes, ratio)
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:counts[c]] for c in range(num_classes)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


class LongTailSource(SubsetSource):
    """A long-tailed subset that reports its per-class counts."""

    def __init__(self, base: ImageSource, indices: np.ndarray, ratio: float, name: str) -> None:
        super().__init__(base, indices, name=name)
        self.ratio = ratio
        self.class_counts = np.bincount(self.labels, minlength=len(self.class_names))

    def describe(self) -> str:
        counts = ", ".join(str(int(c)) for c in self.class_counts)
        return f"{super().describe()}, imbalance ratio {self.ratio:g}, per-class counts [{counts}]"


def build_cifar_lt(cfg: DataConfig, seed: int) -> DataBundle:
    base_name = cfg.dataset[: -len("_lt")]
    train, test = _cifar_sources(base_name, _cifar_arrays(cfg, base_name))
    rows = long_tail_indices(train.labels, cfg.imbalance_ratio, seed)
    lt = LongTailSource(train, rows, cfg.imbalance_ratio, name=f"{cfg.dataset}[train]")
    log.info("%s", lt.describe())
    return train_only_bundle(lt, test, cfg.dataset, cfg.holdout_fraction, seed)
