"""The ``image_folder`` data set: ``data.root`` = a folder of class folders; ``train/`` and ``val/`` (or
``test/``) subfolders are used as splits when present, else a seeded stratified hold-out. A root that holds
image files itself, or ``data.labels: none``, is read unlabelled (:mod:`nrcc_scale.data.unlabelled`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from nrcc_scale.data.base import DataBundle, DataError
from nrcc_scale.data.bundles import holdout_bundle, train_test_bundle
from nrcc_scale.data.image_checks import finalize_index, index_class_folders, verify_level
from nrcc_scale.data.image_files import ImageFolderSource, folder_source
from nrcc_scale.data.locate import data_root, find_dir
from nrcc_scale.data.unlabelled import build_unlabelled_folder, has_top_level_images

if TYPE_CHECKING:  # annotations only: the data set table (catalog) must not import the config at run time
    from nrcc_scale.config import DataConfig


def build_image_folder(cfg: DataConfig, seed: int) -> DataBundle:
    root = data_root(cfg, "a folder of class folders (optionally with train/ and val/ or test/ inside)")
    name = root.name or "image_folder"
    if root.is_dir() and (cfg.labels == "none" or has_top_level_images(root)):
        return build_unlabelled_folder(cfg, root)  # no class folders: every image below root, labels -1
    train_dir = find_dir(root, ("train",))
    if train_dir is None:
        return holdout_bundle(folder_source(name, root, cfg), cfg.holdout_fraction, seed)
    train = folder_source(f"{name}/train", train_dir, cfg)
    test_dir = find_dir(root, ("val", "test"))
    if test_dir is None:
        return holdout_bundle(train, cfg.holdout_fraction, seed)
    test_classes = sorted(e.name for e in os.scandir(test_dir) if e.is_dir() and not e.name.startswith("."))
    extra = sorted(set(test_classes) - set(train.class_names))
    if extra:
        raise DataError(f"{name}: {test_dir} has class folders that {train_dir} lacks: "
                        f"{', '.join(extra[:5])}")
    # the test split may lack some classes; its labels follow the training split's class list
    present = [c for c in train.class_names if c in set(test_classes)]
    test_name = f"{name}/{test_dir.name}"
    test_index = index_class_folders(test_dir, test_name, classes=present)
    relative, local = finalize_index(test_index, test_name, cfg.on_bad_file, verify_level(cfg))
    to_train = np.asarray([train.class_names.index(c) for c in present], dtype=np.int64)
    test = ImageFolderSource(test_name, test_dir, relative, to_train[local], train.class_names,
                             cfg.on_bad_file, train.native_resolution)
    return train_test_bundle(train, test, name)
