"""What every data set provides: labelled RGB images as ``H x W x 3`` uint8 arrays.

Formats (digits, CIFAR pickles, STL-10 binaries, image folders, FFCV files) differ only in how an image
is read; everything downstream (augmentation, loaders, evaluation) works on an :class:`ImageSource`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# ImageNet statistics: the default normalisation for natural images.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(ValueError):
    """A problem with the data on disk, worded with the path and what to do."""


def describe_error(err: BaseException) -> str:
    """An exception as the short reason quoted in a :class:`DataError` or a warning."""
    text = str(err).strip() or type(err).__name__
    return f"{type(err).__name__}: {text}" if type(err).__name__ not in text else text


class ImageSource(abc.ABC):
    """A labelled image collection. Subclasses set the attributes and implement :meth:`image`."""

    name: str = "images"
    labels: np.ndarray  # int64, shape (N,)
    class_names: list[str]
    native_resolution: int  # side length in pixels of a typical image
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __len__(self) -> int:
        return int(len(self.labels))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abc.abstractmethod
    def image(self, index: int) -> np.ndarray:
        """The image at ``index`` as a contiguous ``H x W x 3`` uint8 array."""

    def describe(self) -> str:
        return f"{self.name}: {len(self)} images, {self.num_classes} classes, {self.native_resolution} px"


class ArraySource(ImageSource):
    """Images held in memory as one ``N x H x W x 3`` uint8 array (digits, CIFAR, STL-10)."""

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                 mean: tuple[float, float, float] = IMAGENET_MEAN,
                 std: tuple[float, float, float] = IMAGENET_STD) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise DataError(f"{name}: expected N x H x W x 3 uint8 images, got {images.shape} {images.dtype}")
        if len(images) != len(labels):
            raise DataError(f"{name}: {len(images)} images but {len(labels)} labels")
        if len(images) == 0:
            raise DataError(f"{name}: the data set is empty")
        self.name = name
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.native_resolution = int(images.shape[1])
        self.mean, self.std = mean, std

    def image(self, index: int) -> np.ndarray:
        return self.images[index]


class SubsetSource(ImageSource):
    """A view of some rows of another source (a split, a long-tailed subset)."""

    def __init__(self, base: ImageSource, indices: np.ndarray, name: str | None = None) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.name = name or f"{base.name}[subset]"
        self.labels = base.labels[self.indices]
        self.class_names = base.class_names
        self.native_resolution = base.native_resolution
        self.mean, self.std = base.mean, base.std

    def image(self, index: int) -> np.ndarray:
        return self.base.image(int(self.indices[index]))


class ConcatSource(ImageSource):
    """Several sources with the same classes, one after another (e.g. the paper's train + test union)."""

    def __init__(self, parts: Sequence[ImageSource], name: str | None = None) -> None:
        if not parts:
            raise DataError("ConcatSource needs at least one part")
        first = parts[0]
        for part in parts[1:]:
            if part.class_names != first.class_names:
                raise DataError(f"{part.name} and {first.name} have different classes; cannot concatenate")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.name = name or "+".join(p.name for p in parts)
        self.labels = np.concatenate([p.labels for p in parts])
        self.class_names = first.class_names
        self.native_resolution = first.native_resolution
        self.mean, self.std = first.mean, first.std

    def image(self, index: int) -> np.ndarray:
        part = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.parts[part].image(int(index - self.offsets[part]))


@dataclass
class DataBundle:
    """The splits one run needs.

    ``train`` is what self-supervised training sees; ``evaluate`` is what clustering is scored on (the
    paper clusters the train + test union); ``probe_train`` / ``probe_test`` fit and score the linear and
    kNN probes (the test split, or a seeded stratified hold-out for sets without one).
    """

    train: ImageSource
    evaluate: ImageSource
    probe_train: ImageSource
    probe_test: ImageSource


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (keep, held_out), taking ``fraction`` of every class, deterministically."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        rng.shuffle(rows)
        n_held = int(round(fraction * len(rows)))
        held.append(rows[:n_held])
        keep.append(rows[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation in [0, 1] of ``N x H x W x 3`` uint8 images."""
    total = np.zeros(3)
    squares = np.zeros(3)
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk].reshape(-1, 3).astype(np.float64)
        total += block.sum(0)
        squares += (block * block).sum(0)
    count = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 1e-12))
    return tuple(float(m / 255) for m in mean), tuple(float(s / 255) for s in std)


def raw_pixel_features(source: ImageSource, max_side: int = 32) -> np.ndarray:
    """Flattened pixels in [0, 1] (images larger than ``max_side`` are downsampled first): the input of the
    paper's raw-pixel baseline (UMAP + GridShift on pixels)."""
    import torch
    import torch.nn.functional as F

    rows = []
    for i in range(len(source)):
        img = torch.from_numpy(np.ascontiguousarray(source.image(i))).permute(2, 0, 1).float() / 255.0
        if max(img.shape[1:]) > max_side or img.shape[1] != img.shape[2]:
            img = F.interpolate(img[None], size=(max_side, max_side), mode="bilinear", antialias=True,
                                align_corners=False)[0]
        rows.append(img.reshape(-1).numpy())
    return np.stack(rows).astype(np.float32)
