"""Which files below a folder are images, whether they read, and the bad-file policy (``data.on_bad_file``).

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
  index cannot shrink in the middle of an epoch); see :class:`nrcc_scale.data.image_files.ImageFolderSource`.
* ``python -m nrcc_scale.data prepare`` decodes every image anyway: with ``skip`` it validates with
  ``decode`` first so the .beton holds only good images; with ``fail`` the first unreadable image stops
  the write with its path.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nrcc_scale.data.base import DataError, describe_error

if TYPE_CHECKING:  # annotations only: the data set table (catalog) must not import the config at run time
    from nrcc_scale.config import DataConfig

log = logging.getLogger("nrcc_scale.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")
IGNORED_FILES = ("thumbs.db", "desktop.ini")  # operating-system droppings, ignored like hidden files
VERIFY_LEVELS = ("auto", "none", "header", "decode")
AUTO_HEADER_LIMIT = 200_000  # verify_files=auto checks headers up to this many files
MAX_LISTED_BAD = 5  # bad paths quoted in a message


class BadImageWarning(UserWarning):
    """Unreadable, corrupt or non-image files were skipped (``data.on_bad_file=skip``)."""


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode one image file to a contiguous ``H x W x 3`` uint8 array (any mode converted to RGB)."""
    from PIL import Image

    with Image.open(path) as img:
        rgb = img.convert("RGB")
    return np.array(rgb, dtype=np.uint8)



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
        return describe_error(err)
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


def verify_level(cfg: DataConfig) -> str:
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


def is_ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_FILES


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_class_folder(folder: Path) -> tuple[list[str], list[str]]:
    """(image files, other files) below ``folder`` (recursively), as sorted paths relative to it."""
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, folder)
        for name in sorted(filenames):
            if is_ignored(name):
                continue
            rel = name if rel_dir == "." else os.path.join(rel_dir, name)
            (images if is_image_name(name) else others).append(rel)
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
