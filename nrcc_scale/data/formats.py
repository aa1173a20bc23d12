"""Readers for the papers' data sets in their standard on-disk formats, registered in ``registry.BUILDERS``.

=================  ===================================================================================
``image_folder``   ``data.root`` = a folder of class folders; ``train/`` and ``val/`` (or ``test/``)
                   subfolders are used as splits when present, else a seeded stratified hold-out.
``cifar10``        ``cifar-10-batches-py/`` (the "python version": ``data_batch_1..5``, ``test_batch``).
``cifar100``       ``cifar-100-python/`` (``train``, ``test``, ``meta``), the 100 fine labels.
``cifar20``        the same files, the 20 coarse (superclass) labels stored in the pickles.
``cifar10_lt``     long-tailed training split, ``n_c = n_max * ratio^(-c/(C-1))`` (Cao et al. 2019);
``cifar20_lt``     the test split stays balanced.
``stl10``          ``stl10_binary/`` (``train_X.bin`` ...); optionally the 100k unlabelled images.
``imagenet10``     the 10 / 15 classes of ``nrcc_scale/data/wnids/*.txt`` taken from an ImageNet-1k
``imagenet_dogs``  ``train/`` folder of wnid folders (13,000 / 19,500 images, the paper's Table 12).
``tinyimagenet``   ``tiny-imagenet-200/`` (``train/<wnid>/images``, ``val/images`` +
                   ``val_annotations.txt``, ``wnids.txt``).
``imagenet1k``     ``train/`` and ``val/`` wnid folders; ``val/`` may also be flat with Kaggle's
                   ``LOC_val_solution.csv`` (in the root or up to three folders above it).
=================  ===================================================================================

Which split does what (``DataBundle``): self-supervised training uses the training split. Clustering is
scored on the set the paper's Table 12 counts: train + test for CIFAR (60,000) and STL-10 (13,000); the
training images only for the ImageNet subsets (13,000 / 19,500), TinyImageNet (100,000) and ImageNet-1k;
the long-tailed training split alone for the LT sets (so the clustered set has the stated imbalance ratio
10). Probes fit on the training split and score on the test / validation split (a seeded stratified
hold-out where there is none). Probe splits are row subsets of ``evaluate`` where possible, so evaluation
embeds every image once.

Bad files in image folders (policy ``data.on_bad_file``):

* Listing is cheap and always done: files are listed once, sorted, hidden files (``.DS_Store``) ignored;
  a file without an image extension inside a class folder is a bad file (a non-image).
* ``verify_files`` (``auto`` | ``none`` | ``header`` | ``decode``) decides how much more is checked when
  the index is built: ``header`` opens every file with PIL (``verify()``) and checks that a JPEG ends with
  its end-of-image marker (a truncated JPEG does not; such files are then fully decoded to confirm), in
  threads; ``decode`` decodes every image; ``auto`` = ``header`` up to 200,000 files, else ``none`` (the
  ImageNet-1k training set would take minutes at every start; it is fully decoded once by ``prepare``).
* Files found bad at index build: ``fail`` raises :class:`DataError` with the first paths and the count
  (and says to use ``on_bad_file=skip``); ``skip`` warns with the count and drops them from the index.
* A read that fails later (lazy decoding during training): ``fail`` raises :class:`DataError` with the
  path; ``skip`` warns once per file and returns the next readable image of the same class instead (the
  index cannot shrink in the middle of an epoch).
* ``python -m nrcc_scale.data prepare`` decodes every image anyway: with ``skip`` it validates with
  ``decode`` first so the .beton holds only good images; with ``fail`` the first unreadable image stops
  the write with its path.
"""

from __future__ import annotations

import csv
import logging
import os
import pickle
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nrcc_scale.config import DataConfig
from nrcc_scale.data import registry
from nrcc_scale.data.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ArraySource,
    ConcatSource,
    DataBundle,
    DataError,
    ImageSource,
    SubsetSource,
    stratified_holdout,
)

log = logging.getLogger("nrcc_scale.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")
IGNORED_FILES = ("thumbs.db", "desktop.ini")  # operating-system droppings, ignored like hidden files
VERIFY_LEVELS = ("auto", "none", "header", "decode")
AUTO_HEADER_LIMIT = 200_000  # verify_files=auto checks headers up to this many files
MAX_LISTED_BAD = 5  # bad paths quoted in a message


class BadImageWarning(UserWarning):
    """Unreadable, corrupt or non-image files were skipped (``data.on_bad_file=skip``)."""


# ----------------------------------------------------------------------------------------------------------
# Lazy image folders
# ----------------------------------------------------------------------------------------------------------


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


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode one image file to a contiguous ``H x W x 3`` uint8 array (any mode converted to RGB)."""
    from PIL import Image

    with Image.open(path) as img:
        rgb = img.convert("RGB")
    return np.array(rgb, dtype=np.uint8)


def _describe_error(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return f"{type(err).__name__}: {text}" if type(err).__name__ not in text else text


def check_image_file(path: str | os.PathLike[str], level: str = "header") -> str | None:
    """``None`` when the file looks like a readable image at this check level, else the reason it is not.

    ``header``: PIL opens it and ``verify()`` passes, and a JPEG ends with its end-of-image marker (else the
    file is decoded to confirm: truncated JPEGs lack the marker). ``decode``: the whole image decodes.
    """
    from PIL import Image

    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file (0 bytes)"
        if level == "decode":
            read_rgb(path)
            return None
        with open(path, "rb") as fh:
            with Image.open(fh) as img:
                fmt = img.format
                img.verify()
            if fmt == "JPEG":
                fh.seek(max(0, size - 1024))
                if b"\xff\xd9" not in fh.read():
                    # no end-of-image marker: decode fully to tell truncation from trailing junk
                    read_rgb(path)
    except Exception as err:  # noqa: BLE001 - any failure to read is what we report
        return _describe_error(err)
    return None


@dataclass(frozen=True)
class BadFile:
    path: str
    reason: str


def _quote_bad(bad: Sequence[BadFile]) -> str:
    shown = "; ".join(f"{b.path} ({b.reason})" for b in bad[:MAX_LISTED_BAD])
    more = f"; ... and {len(bad) - MAX_LISTED_BAD} more" if len(bad) > MAX_LISTED_BAD else ""
    return shown + more


def handle_bad_files(name: str, bad: Sequence[BadFile], on_bad_file: str) -> None:
    """Apply the ``data.on_bad_file`` policy to files found bad while building an index."""
    if not bad:
        return
    if on_bad_file == "fail":
        raise DataError(f"{name}: {len(bad)} unreadable, corrupt or non-image file(s): {_quote_bad(bad)}. "
                        "Fix or remove them, or set data.on_bad_file=skip (--on-bad-file skip) to leave them "
                        "out")
    warnings.warn(f"{name}: skipped {len(bad)} unreadable, corrupt or non-image file(s): {_quote_bad(bad)}",
                  BadImageWarning, stacklevel=3)


def _verify_level(cfg: DataConfig) -> str:
    # ``data.verify_files`` is a proposed DataConfig key; until it exists the default is ``auto``
    level = cfg.verify_files
    if level not in VERIFY_LEVELS:
        raise DataError(f"data.verify_files = {level!r}: allowed values are {', '.join(VERIFY_LEVELS)}")
    return level


def check_files(paths: Sequence[str], level: str, desc: str = "checking images") -> list[tuple[int, str]]:
    """(position, reason) of every path that fails the check, using threads (file I/O and decoding
    release the GIL)."""
    if level == "none" or not paths:
        return []
    workers = min(32, 4 * (os.cpu_count() or 1))
    bad: list[tuple[int, str]] = []
    progress = None
    if len(paths) > 20_000:
        from tqdm import tqdm

        progress = tqdm(total=len(paths), desc=desc, unit="img")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), 4096):  # bounded numbers of futures in flight
            chunk = paths[start:start + 4096]
            for i, reason in enumerate(pool.map(lambda p: check_image_file(p, level), chunk), start=start):
                if reason is not None:
                    bad.append((i, reason))
            if progress is not None:
                progress.update(len(chunk))
    if progress is not None:
        progress.close()
    return bad


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_FILES


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_class_folder(folder: Path) -> tuple[list[str], list[str]]:
    """(image files, other files) below ``folder`` (recursively), as sorted paths relative to it."""
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, folder)
        for name in sorted(filenames):
            if _is_ignored(name):
                continue
            rel = name if rel_dir == "." else os.path.join(rel_dir, name)
            (images if _is_image_name(name) else others).append(rel)
    return images, others


@dataclass
class FileIndex:
    """Image files with integer labels, before bad files are dropped."""

    root: Path
    relative: list[str]
    labels: list[int]
    class_names: list[str]
    bad: list[BadFile]

    def folder_of(self, label: int) -> Path:
        return self.root / self.class_names[label]


def index_class_folders(root: Path, name: str, classes: Sequence[str] | None = None,
                        class_dirs: dict[str, Path] | None = None) -> FileIndex:
    """Index ``root/<class>/**/<image>``; ``classes`` picks and orders the class folders (default: every
    non-hidden folder, sorted). ``class_dirs`` overrides where a class's images are (tiny-imagenet)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{name}: folder {root} not found")
    if classes is None:
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise DataError(f"{name}: {root} contains no class folders; expected "
                            f"{root}/<class>/<image files>")
    relative, labels, bad = [], [], []
    for label, cls in enumerate(classes):
        folder = (class_dirs or {}).get(cls, root / cls)
        if not folder.is_dir():
            raise DataError(f"{name}: class folder {folder} not found")
        images, others = list_class_folder(folder)
        prefix = os.path.relpath(folder, root)
        bad.extend(BadFile(str(folder / o), "not an image file (extension)") for o in others)
        relative.extend(os.path.join(prefix, f) for f in images)
        labels.extend([label] * len(images))
    return FileIndex(root, relative, labels, list(classes), bad)


def finalize_index(index: FileIndex, name: str, on_bad_file: str, level: str) -> tuple[list[str], np.ndarray]:
    """Check the files (per ``level``), apply the bad-file policy, and make sure no class and not the whole
    set is empty. Returns the kept relative paths and labels."""
    if level == "auto":
        level = "header" if len(index.relative) <= AUTO_HEADER_LIMIT else "none"
        if level == "none":
            log.info("%s: %d files, so their headers are not checked at start-up (verify_files=auto); "
                     "unreadable images are handled when read", name, len(index.relative))
    paths = [str(index.root / r) for r in index.relative]
    failures = check_files(paths, level, desc=f"{name}: checking images")
    bad = list(index.bad) + [BadFile(paths[i], reason) for i, reason in failures]
    handle_bad_files(name, bad, on_bad_file)
    drop = {i for i, _ in failures}
    relative = [r for i, r in enumerate(index.relative) if i not in drop]
    labels = np.asarray([lab for i, lab in enumerate(index.labels) if i not in drop], dtype=np.int64)
    if len(relative) == 0:
        raise DataError(f"{name}: no images found in {index.root} (expected image files with one of the "
                        f"extensions {', '.join(IMAGE_EXTENSIONS)} in class folders)")
    counts = np.bincount(labels, minlength=len(index.class_names))
    for label in np.flatnonzero(counts == 0):
        raise DataError(f"{name}: class folder {index.folder_of(int(label))} contains no readable images; "
                        "remove the folder or add images to it")
    return relative, labels


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
            reason = _describe_error(err)
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
                self._note_bad(row, _describe_error(err))
        cls = self.class_names[self.labels[index]]
        raise DataError(f"{self.name}: no readable image left in class {cls!r}")


def folder_source(name: str, root: Path, cfg: DataConfig, classes: Sequence[str] | None = None,
                  class_dirs: dict[str, Path] | None = None, native_resolution: int | None = None,
                  verify: str | None = None) -> ImageFolderSource:
    index = index_class_folders(root, name, classes, class_dirs)
    relative, labels = finalize_index(index, name, cfg.on_bad_file, verify or _verify_level(cfg))
    return ImageFolderSource(name, index.root, relative, labels, index.class_names, cfg.on_bad_file,
                             native_resolution)


def labelled_files_source(name: str, root: Path, relative: Sequence[str], labels: Sequence[int],
                          class_names: Sequence[str], cfg: DataConfig, native_resolution: int | None = None,
                          verify: str | None = None) -> ImageFolderSource:
    """A source from an explicit (file, label) list, e.g. a flat validation folder with a label file."""
    index = FileIndex(Path(root), list(relative), list(labels), list(class_names), [])
    kept, kept_labels = finalize_index(index, name, cfg.on_bad_file, verify or _verify_level(cfg))
    return ImageFolderSource(name, Path(root), kept, kept_labels, class_names, cfg.on_bad_file,
                             native_resolution)


# ----------------------------------------------------------------------------------------------------------
# Bundles
# ----------------------------------------------------------------------------------------------------------


def train_test_bundle(train: ImageSource, test: ImageSource, name: str) -> DataBundle:
    """Train on ``train``, cluster train + test, probes on the two parts (row subsets of ``evaluate``)."""
    evaluate = ConcatSource([train, test], name=f"{name}[train+test]")
    n = len(train)
    return DataBundle(train=train, evaluate=evaluate,
                      probe_train=SubsetSource(evaluate, np.arange(n), name=f"{name}[train]"),
                      probe_test=SubsetSource(evaluate, np.arange(n, n + len(test)), name=f"{name}[test]"))


def train_only_bundle(train: ImageSource, test: ImageSource | None, name: str, holdout_fraction: float,
                      seed: int) -> DataBundle:
    """Train and cluster on ``train`` (the paper's ImageNet subsets, TinyImageNet, the LT sets); probes
    score on ``test`` when there is one, else on a seeded stratified hold-out of ``train``."""
    if test is not None:
        probe_train: ImageSource = SubsetSource(train, np.arange(len(train)), name=f"{name}[train]")
        return DataBundle(train=train, evaluate=train, probe_train=probe_train, probe_test=test)
    keep, held = stratified_holdout(train.labels, holdout_fraction, seed)
    return DataBundle(train=train, evaluate=train,
                      probe_train=SubsetSource(train, keep, name=f"{name}[probe-train]"),
                      probe_test=SubsetSource(train, held, name=f"{name}[holdout]"))


def _root(cfg: DataConfig, what: str) -> Path:
    if not cfg.root:
        raise DataError(f"data.root is empty: data.dataset = '{cfg.dataset}' needs {what}")
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise DataError(f"{cfg.dataset}: data.root {root} does not exist; point data.root at {what}")
    return root


def _find_dir(root: Path, names: Iterable[str]) -> Path | None:
    for n in names:
        candidate = root / n
        if candidate.is_dir():
            return candidate
    return None


# ----------------------------------------------------------------------------------------------------------
# image_folder
# ----------------------------------------------------------------------------------------------------------


def build_image_folder(cfg: DataConfig, seed: int) -> DataBundle:
    root = _root(cfg, "a folder of class folders (optionally with train/ and val/ or test/ inside)")
    name = root.name or "image_folder"
    from nrcc_scale.data.unlabelled import build_unlabelled_folder, has_top_level_images

    if root.is_dir() and (cfg.labels == "none" or has_top_level_images(root)):
        return build_unlabelled_folder(cfg, root)  # no class folders: every image below root, labels -1
    train_dir = _find_dir(root, ("train",))
    if train_dir is None:
        return registry.holdout_bundle(folder_source(name, root, cfg), cfg.holdout_fraction, seed)
    train = folder_source(f"{name}/train", train_dir, cfg)
    test_dir = _find_dir(root, ("val", "test"))
    if test_dir is None:
        return registry.holdout_bundle(train, cfg.holdout_fraction, seed)
    test_classes = sorted(e.name for e in os.scandir(test_dir) if e.is_dir() and not e.name.startswith("."))
    extra = sorted(set(test_classes) - set(train.class_names))
    if extra:
        raise DataError(f"{name}: {test_dir} has class folders that {train_dir} lacks: "
                        f"{', '.join(extra[:5])}")
    # the test split may lack some classes; its labels follow the training split's class list
    present = [c for c in train.class_names if c in set(test_classes)]
    test_name = f"{name}/{test_dir.name}"
    test_index = index_class_folders(test_dir, test_name, classes=present)
    relative, local = finalize_index(test_index, test_name, cfg.on_bad_file, _verify_level(cfg))
    to_train = np.asarray([train.class_names.index(c) for c in present], dtype=np.int64)
    test = ImageFolderSource(test_name, test_dir, relative, to_train[local], train.class_names,
                             cfg.on_bad_file, train.native_resolution)
    return train_test_bundle(train, test, name)


# ----------------------------------------------------------------------------------------------------------
# CIFAR
# ----------------------------------------------------------------------------------------------------------

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
        raise DataError(f"{dataset}: cannot read {path} ({_describe_error(err)}); the file is damaged or "
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


def _locate(root: Path, folder: str, marker: str) -> Path:
    """``root/folder`` if it exists, else ``root`` itself when it holds ``marker``."""
    if (root / folder).is_dir():
        return root / folder
    if (root / marker).exists():
        return root
    return root / folder  # missing: the caller's message names the expected path


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
    folder = _locate(root, CIFAR10_FOLDER, "data_batch_1")
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
    folder = _locate(root, CIFAR100_FOLDER, "train")
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
        return read_cifar10(_root(cfg, "the folder containing cifar-10-batches-py"))
    root = _root(cfg, "the folder containing cifar-100-python")
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


# ----------------------------------------------------------------------------------------------------------
# STL-10
# ----------------------------------------------------------------------------------------------------------

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
    folder = _locate(root, STL10_FOLDER, "train_X.bin")
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
    train, test, extra = read_stl10(_root(cfg, "the folder containing stl10_binary"), unlabeled)
    bundle = train_test_bundle(train, test, "stl10")
    if extra is not None:
        bundle.train = ConcatSource([train, extra], name="stl10[train+unlabeled]")
        if cfg.labels == "none":  # cluster the 100k unlabelled images themselves (label-free scores only)
            return DataBundle(train=bundle.train, evaluate=extra, probe_train=extra, probe_test=extra)
    return bundle


# ----------------------------------------------------------------------------------------------------------
# ImageNet and its subsets
# ----------------------------------------------------------------------------------------------------------

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
    train = _find_dir(root, ("train", "ILSVRC2012_img_train"))
    if train is None:
        if any(e.is_dir() and e.name.startswith("n") and len(e.name) == 9 for e in os.scandir(root)):
            return root, None  # the root is the folder of wnid folders
        raise DataError(f"{dataset}: {root}/train not found; {IMAGENET_HINT}")
    return train, _find_dir(root, ("val", "ILSVRC2012_img_val", "validation"))


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
    root = _root(cfg, "the ImageNet-1k folder containing train/<wnid>/")
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
    root = _root(cfg, "the ImageNet-1k folder containing train/<wnid>/ and val/")
    train_dir, val_dir = _imagenet_dirs(root, dataset)
    train = folder_source(f"{dataset}[train]", train_dir, cfg, native_resolution=224)
    val = imagenet_val_source(root, val_dir, train.class_names, cfg, dataset, 224) if val_dir else None
    return train_only_bundle(train, val, dataset, cfg.holdout_fraction, seed)


TINY_FOLDER = "tiny-imagenet-200"
TINY_HINT = ("download tiny-imagenet-200.zip and point data.root at the unzipped tiny-imagenet-200 folder "
             "(or the folder containing it)")


def build_tinyimagenet(cfg: DataConfig, seed: int) -> DataBundle:
    root = _locate(_root(cfg, "the tiny-imagenet-200 folder"), TINY_FOLDER, "wnids.txt")
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


# ----------------------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------------------

FORMAT_BUILDERS: dict[str, Callable[[DataConfig, int], DataBundle]] = {
    "image_folder": build_image_folder,
    "cifar10": build_cifar,
    "cifar100": build_cifar,
    "cifar20": build_cifar,
    "cifar10_lt": build_cifar_lt,
    "cifar20_lt": build_cifar_lt,
    "stl10": build_stl10,
    "imagenet10": build_imagenet10,
    "imagenet_dogs": build_imagenet_dogs,
    "tinyimagenet": build_tinyimagenet,
    "imagenet1k": build_imagenet1k,
}

registry.BUILDERS.update(FORMAT_BUILDERS)
