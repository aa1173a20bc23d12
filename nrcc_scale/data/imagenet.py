"""The ImageNet family: ImageNet-1k, the ImageNet-10 / ImageNet-Dogs subsets, and TinyImageNet.

=================  ===================================================================================
``imagenet10``     the 10 / 15 classes of ``nrcc_scale/data/wnids/*.txt`` taken from an ImageNet-1k
``imagenet_dogs``  ``train/`` folder of wnid folders (13,000 / 19,500 images, the paper's Table 12).
``tinyimagenet``   ``tiny-imagenet-200/`` (``train/<wnid>/images``, ``val/images`` +
                   ``val_annotations.txt``, ``wnids.txt``).
``imagenet1k``     ``train/`` and ``val/`` wnid folders; ``val/`` may also be flat with Kaggle's
                   ``LOC_val_solution.csv`` (in the root or up to three folders above it).
=================  ===================================================================================
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nrcc_scale.data.base import DataBundle, DataError, ImageSource
from nrcc_scale.data.bundles import train_only_bundle
from nrcc_scale.data.image_files import folder_source, labelled_files_source
from nrcc_scale.data.locate import data_root, find_dir, locate

if TYPE_CHECKING:  # annotations only: the data set table (catalog) must not import the config at run time
    from nrcc_scale.config import DataConfig

log = logging.getLogger("nrcc_scale.data")

WNID_DIR = Path(__file__).resolve().parent / "wnids"
IMAGENET_HINT = ("point data.root at the ImageNet-1k folder that contains train/ (one folder per wnid, e.g. "
                 "train/n01440764/*.JPEG) and optionally val/")


def load_wnids(list_name: str) -> list[str]:
    """A class list shipped in ``nrcc_scale/data/wnids/`` (one wnid per line, ``#`` comments)."""
    path = WNID_DIR / f"{list_name}.txt"
    if not path.is_file():
        raise DataError(f"wnid list {path} is missing from the installed package")
    wnids = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [w for w in wnids if w]


def _imagenet_dirs(root: Path, dataset: str) -> tuple[Path, Path | None]:
    """(train folder, val folder or None) of an ImageNet-style root (or a root that is train/ itself)."""
    train = find_dir(root, ("train", "ILSVRC2012_img_train"))
    if train is None:
        if any(e.is_dir() and e.name.startswith("n") and len(e.name) == 9 for e in os.scandir(root)):
            return root, None  # the root is the folder of wnid folders
        raise DataError(f"{dataset}: {root}/train not found; {IMAGENET_HINT}")
    return train, find_dir(root, ("val", "ILSVRC2012_img_val", "validation"))


def _find_loc_solution(root: Path, val_dir: Path) -> Path | None:
    for folder in (val_dir, root, *list(root.parents)[:3]):
        candidate = folder / "LOC_val_solution.csv"
        if candidate.is_file():
            return candidate
    return None


def imagenet_val_source(root: Path, val_dir: Path, class_names: Sequence[str], cfg: DataConfig,
                        dataset: str, native_resolution: int) -> ImageSource | None:
    """The validation images of ``class_names``: wnid folders, or a flat folder with LOC_val_solution.csv.
    ``None`` when ``val_dir`` has neither (the caller then uses a hold-out)."""
    wnid_dirs = {e.name for e in os.scandir(val_dir) if e.is_dir() and not e.name.startswith(".")}
    if wnid_dirs:
        missing = [c for c in class_names if c not in wnid_dirs]
        if missing:
            raise DataError(f"{dataset}: {val_dir} lacks the class folders {', '.join(missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''}")
        return folder_source(f"{dataset}[val]", val_dir, cfg, classes=class_names,
                             native_resolution=native_resolution)
    solution = _find_loc_solution(root, val_dir)
    if solution is None:
        log.warning("%s: %s has no wnid folders and no LOC_val_solution.csv was found; using a hold-out of "
                    "the training images for the probes", dataset, val_dir)
        return None
    label_of = {c: i for i, c in enumerate(class_names)}
    relative, labels = [], []
    with open(solution, newline="") as fh:
        for row in csv.DictReader(fh):
            image_id = (row.get("ImageId") or "").strip()
            tokens = (row.get("PredictionString") or "").split()
            if image_id and tokens and tokens[0] in label_of:
                relative.append(f"{image_id}.JPEG")
                labels.append(label_of[tokens[0]])
    if not relative:
        raise DataError(f"{dataset}: {solution} lists no validation images of the selected classes")
    order = np.argsort(relative, kind="stable")
    return labelled_files_source(f"{dataset}[val]", val_dir, [relative[i] for i in order],
                                 [labels[i] for i in order], class_names, cfg, native_resolution)


def build_imagenet_subset(cfg: DataConfig, seed: int, list_name: str,
                          native_resolution: int = 224) -> DataBundle:
    dataset = cfg.dataset
    root = data_root(cfg, "the ImageNet-1k folder containing train/<wnid>/")
    train_dir, val_dir = _imagenet_dirs(root, dataset)
    wnids = sorted(load_wnids(list_name))
    missing = [w for w in wnids if not (train_dir / w).is_dir()]
    if missing:
        raise DataError(f"{dataset}: {train_dir} lacks the class folders {', '.join(missing)}; "
                        f"{IMAGENET_HINT}")
    train = folder_source(f"{dataset}[train]", train_dir, cfg, classes=wnids,
                          native_resolution=native_resolution)
    val = imagenet_val_source(root, val_dir, wnids, cfg, dataset, native_resolution) if val_dir else None
    return train_only_bundle(train, val, dataset, cfg.holdout_fraction, seed)


def build_imagenet10(cfg: DataConfig, seed: int) -> DataBundle:
    return build_imagenet_subset(cfg, seed, "imagenet10")


def build_imagenet_dogs(cfg: DataConfig, seed: int) -> DataBundle:
    return build_imagenet_subset(cfg, seed, "imagenet_dogs")


def build_imagenet1k(cfg: DataConfig, seed: int) -> DataBundle:
    dataset = cfg.dataset
    root = data_root(cfg, "the ImageNet-1k folder containing train/<wnid>/ and val/")
    train_dir, val_dir = _imagenet_dirs(root, dataset)
    train = folder_source(f"{dataset}[train]", train_dir, cfg, native_resolution=224)
    val = imagenet_val_source(root, val_dir, train.class_names, cfg, dataset, 224) if val_dir else None
    return train_only_bundle(train, val, dataset, cfg.holdout_fraction, seed)


TINY_FOLDER = "tiny-imagenet-200"
TINY_HINT = ("download tiny-imagenet-200.zip and point data.root at the unzipped tiny-imagenet-200 folder "
             "(or the folder containing it)")


def build_tinyimagenet(cfg: DataConfig, seed: int) -> DataBundle:
    root = locate(data_root(cfg, "the tiny-imagenet-200 folder"), TINY_FOLDER, "wnids.txt")
    wnids_path = root / "wnids.txt"
    if not wnids_path.is_file():
        raise DataError(f"tinyimagenet: {wnids_path} not found; {TINY_HINT}")
    wnids = sorted(w.strip() for w in wnids_path.read_text().splitlines() if w.strip())
    train_root = root / "train"
    if not train_root.is_dir():
        raise DataError(f"tinyimagenet: {train_root} not found; {TINY_HINT}")
    # train/<wnid>/images/*.JPEG; the <wnid>_boxes.txt beside images/ is annotation, not a bad file
    class_dirs = {w: train_root / w / "images" for w in wnids}
    train = folder_source("tinyimagenet[train]", train_root, cfg, classes=wnids, class_dirs=class_dirs,
                          native_resolution=64)
    annotations = root / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DataError(f"tinyimagenet: {annotations} not found; {TINY_HINT}")
    label_of = {w: i for i, w in enumerate(wnids)}
    relative, labels = [], []
    for line_no, line in enumerate(annotations.read_text().splitlines(), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in label_of:
            raise DataError(f"tinyimagenet: {annotations} line {line_no}: expected '<file>\\t<wnid>\\t...' "
                            f"with a wnid of wnids.txt, got {line[:80]!r}")
        relative.append(f"images/{fields[0]}")
        labels.append(label_of[fields[1]])
    order = np.argsort(relative, kind="stable")
    val = labelled_files_source("tinyimagenet[val]", root / "val", [relative[i] for i in order],
                                [labels[i] for i in order], wnids, cfg, native_resolution=64)
    return train_only_bundle(train, val, "tinyimagenet", cfg.holdout_fraction, seed)
