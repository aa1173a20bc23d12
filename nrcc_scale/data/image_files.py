"""Images decoded lazily from files (:class:`ImageFolderSource`), and the constructors that index a folder or
an explicit (file, label) list into one after the checks of :mod:`nrcc_scale.data.image_checks`.

A read that fails during training follows ``data.on_bad_file``: ``fail`` raises :class:`DataError` with the
path; ``skip`` warns once per file and returns the next readable image of the same class instead (the index
cannot shrink in the middle of an epoch).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nrcc_scale.data.base import IMAGENET_MEAN, IMAGENET_STD, DataError, ImageSource, describe_error
from nrcc_scale.data.image_checks import (
    BadImageWarning,
    FileIndex,
    finalize_index,
    index_class_folders,
    read_rgb,
    verify_level,
)

if TYPE_CHECKING:  # annotations only: the data set table (catalog) must not import the config at run time
    from nrcc_scale.config import DataConfig


class PathTable:
    """Many file paths relative to one root, packed into two numpy arrays.

    A Python list of a million strings is touched (reference counts) by every forked loader process and
    so copied page by page into each of them; two flat arrays are shared for free.
    """

    def __init__(self, root: Path, relative: Sequence[str]) -> None:
        self.root = Path(root)
        encoded = [p.encode("utf-8", "surrogateescape") for p in relative]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def relative(self, index: int) -> str:
        start, stop = self.offsets[index], self.offsets[index + 1]
        return self.blob[start:stop].tobytes().decode("utf-8", "surrogateescape")

    def __getitem__(self, index: int) -> Path:
        return self.root / self.relative(index)



def _typical_side(paths: PathTable, samples: int = 32) -> int | None:
    """Median shorter side of up to ``samples`` evenly spaced images (headers only)."""
    from PIL import Image

    sides = []
    for i in np.linspace(0, len(paths) - 1, num=min(samples, len(paths))).astype(int):
        try:
            with Image.open(paths[int(i)]) as img:
                sides.append(min(img.size))
        except Exception:  # noqa: BLE001 - a bad file says nothing about the typical size
            continue
    return int(np.median(sides)) if sides else None


class ImageFolderSource(ImageSource):
    """Images decoded from files on access (PIL, converted to RGB); see the module docstring for what
    happens when a read fails."""

    def __init__(self, name: str, root: Path, relative: Sequence[str], labels: np.ndarray,
                 class_names: Sequence[str], on_bad_file: str = "fail", native_resolution: int | None = None,
                 mean: tuple[float, float, float] = IMAGENET_MEAN,
                 std: tuple[float, float, float] = IMAGENET_STD) -> None:
        if len(relative) != len(labels):
            raise DataError(f"{name}: {len(relative)} files but {len(labels)} labels")
        if len(relative) == 0:
            raise DataError(f"{name}: the data set is empty ({root})")
        self.name = name
        self.root = Path(root)
        self.paths = PathTable(self.root, relative)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.on_bad_file = on_bad_file
        self.native_resolution = native_resolution or _typical_side(self.paths) or 224
        self.mean, self.std = mean, std
        self.bad_reads: dict[int, str] = {}  # rows that failed to decode in this process

    def path(self, index: int) -> Path:
        return self.paths[int(index)]

    def image(self, index: int) -> np.ndarray:
        index = int(index)
        try:
            return read_rgb(self.path(index))
        except Exception as err:  # noqa: BLE001
            reason = describe_error(err)
        if self.on_bad_file == "fail":
            raise DataError(f"{self.name}: cannot read image {self.path(index)} ({reason}). Fix or remove "
                            "the file, or set data.on_bad_file=skip to replace unreadable images")
        self._note_bad(index, reason)
        return self._substitute(index)

    def _note_bad(self, index: int, reason: str) -> None:
        if index not in self.bad_reads:
            self.bad_reads[index] = reason
            warnings.warn(f"{self.name}: unreadable image {self.path(index)} ({reason}) replaced by another "
                          f"image of its class ({len(self.bad_reads)} so far in this process)",
                          BadImageWarning, stacklevel=3)

    def _substitute(self, index: int) -> np.ndarray:
        """The next readable image of the same class (deterministic, wraps around)."""
        rows = np.flatnonzero(self.labels == self.labels[index])
        start = int(np.searchsorted(rows, index))
        for k in range(1, len(rows)):
            row = int(rows[(start + k) % len(rows)])
            if row in self.bad_reads:
                continue
            try:
                return read_rgb(self.path(row))
            except Exception as err:  # noqa: BLE001
                self._note_bad(row, describe_error(err))
        cls = self.class_names[self.labels[index]]
        raise DataError(f"{self.name}: no readable image left in class {cls!r}")


def folder_source(name: str, root: Path, cfg: DataConfig, classes: Sequence[str] | None = None,
                  class_dirs: dict[str, Path] | None = None, native_resolution: int | None = None,
                  verify: str | None = None) -> ImageFolderSource:
    index = index_class_folders(root, name, classes, class_dirs)
    relative, labels = finalize_index(index, name, cfg.on_bad_file, verify or verify_level(cfg))
    return ImageFolderSource(name, index.root, relative, labels, index.class_names, cfg.on_bad_file,
                             native_resolution)


def labelled_files_source(name: str, root: Path, relative: Sequence[str], labels: Sequence[int],
                          class_names: Sequence[str], cfg: DataConfig, native_resolution: int | None = None,
                          verify: str | None = None) -> ImageFolderSource:
    """A source from an explicit (file, label) list, e.g. a flat validation folder with a label file."""
    index = FileIndex(Path(root), list(relative), list(labels), list(class_names), [])
    kept, kept_labels = finalize_index(index, name, cfg.on_bad_file, verify or verify_level(cfg))
    return ImageFolderSource(name, Path(root), kept, kept_labels, class_names, cfg.on_bad_file,
                             native_resolution)
