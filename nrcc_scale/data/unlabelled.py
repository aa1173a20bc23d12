"""Data without labels: a folder of images with no class folders, or any data set with ``data.labels: none``.

An unlabelled sample has the label -1 (:data:`nrcc_scale.evaluation.label_free.UNLABELLED`) and an
unlabelled source has no class names. Self-supervised training never reads labels; the evaluation sees
that labels are absent (:func:`nrcc_scale.evaluation.label_free.has_labels`) and computes only what needs
none (clusters, galleries, label-free scores), skipping NMI/ACC/ARI/AMI, k-means with the true k, the kNN
monitor and the probes.

``image_folder`` is unlabelled when ``data.labels: none`` (every image below ``data.root``, any nesting,
sub-folders ignored) or, with ``data.labels: auto``, when ``data.root`` holds image files itself (then its
sub-folders, at any depth, are just more images, not classes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nrcc_scale.data.base import DataBundle, DataError, ImageSource
from nrcc_scale.data.image_checks import (
    IMAGE_EXTENSIONS,
    BadFile,
    FileIndex,
    finalize_index,
    is_ignored,
    is_image_name,
    list_class_folder,
    verify_level,
)
from nrcc_scale.data.image_files import ImageFolderSource

if TYPE_CHECKING:  # annotations only: the data set table (catalog) must not import the config at run time
    from nrcc_scale.config import DataConfig

UNLABELLED = -1


class UnlabelledView(ImageSource):
    """Another source's images with the labels removed (all -1, no class names)."""

    def __init__(self, base: ImageSource, name: str | None = None) -> None:
        self.base = base
        self.name = name or base.name
        self.labels = np.full(len(base), UNLABELLED, dtype=np.int64)
        self.class_names = []
        self.native_resolution = base.native_resolution
        self.mean, self.std = base.mean, base.std

    def image(self, index: int) -> np.ndarray:
        return self.base.image(index)


def unlabelled_bundle(source: ImageSource) -> DataBundle:
    """Train on and cluster every image; the probe splits are there for the type only (never scored)."""
    return DataBundle(train=source, evaluate=source, probe_train=source, probe_test=source)


def strip_labels(bundle: DataBundle) -> DataBundle:
    """``data.labels: none`` on a labelled data set: the same images, no labels anywhere."""
    if bundle.evaluate is bundle.train:
        view = UnlabelledView(bundle.train)
        return unlabelled_bundle(view)
    return DataBundle(train=UnlabelledView(bundle.train), evaluate=UnlabelledView(bundle.evaluate),
                      probe_train=UnlabelledView(bundle.probe_train), probe_test=UnlabelledView(bundle.probe_test))


def has_top_level_images(root: Path) -> bool:
    return any(e.is_file() and not is_ignored(e.name) and is_image_name(e.name) for e in os.scandir(root))


def unlabelled_folder_source(name: str, root: Path, cfg: DataConfig) -> ImageSource:
    """Every image file below ``root`` (recursively, sorted), labels -1."""
    images, others = list_class_folder(root)
    if not images:
        raise DataError(f"{name}: no images found in {root} (expected files with one of the extensions "
                        f"{', '.join(IMAGE_EXTENSIONS)}, at any depth)")
    # one pseudo-class 0 lets the bad-file checks and the same-class substitution work unchanged
    index = FileIndex(root, images, [0] * len(images), ["images"], [BadFile(str(root / o), "not an image file "
                                                                            "(extension)") for o in others])
    relative, _ = finalize_index(index, name, cfg.on_bad_file, verify_level(cfg))
    source = ImageFolderSource(name, root, relative, np.zeros(len(relative), dtype=np.int64), ["images"],
                               cfg.on_bad_file)
    return UnlabelledView(source, name=name)


def build_unlabelled_folder(cfg: DataConfig, root: Path) -> DataBundle:
    return unlabelled_bundle(unlabelled_folder_source(root.name or "image_folder", root, cfg))
