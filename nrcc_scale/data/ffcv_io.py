"""Writing FFCV ``.beton`` files from any :class:`ImageSource`.

A file holds three fields per sample: ``index`` (the row in the source, so a loader can say which image it
served), ``image`` (RGB; JPEG-compressed, raw pixels, or a random proportion of each) and ``label``.

The file is written under a temporary name in the destination folder and renamed into place only when it
is complete (``nrcc_scale.utils.files.atomic_path``): an error or an interrupt leaves nothing at the
destination. FFCV's writer runs worker processes and waits for them in a loop that would wait forever if
one of them died; so the samples it is given never raise (a failed read is recorded, and the remaining
samples are replaced by a tiny placeholder so the writer finishes fast), and a watchdog thread interrupts
the wait when the worker processes are gone. Either way the write then fails with a :class:`DataError`
naming the sample (and the file, for image folders) and the temporary file is removed.

``ffcv`` is imported only inside these functions: importing ``nrcc_scale`` never needs it.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing
import os
import threading
import time
from pathlib import Path

import numpy as np

from nrcc_scale.data.base import DataError, ImageSource
from nrcc_scale.utils.files import atomic_path


def ffcv_available() -> bool:
    try:
        import ffcv  # noqa: F401
    except Exception:  # ImportError, or a missing system library (libturbojpeg, OpenCV)
        return False
    return True


WRITE_MODES = ("jpg", "raw", "proportion")
FIELDS = ("index", "image", "label")
MIN_PAGE = 1 << 21  # FFCV's smallest page (2 MiB); a sample must fit in one page
DEFAULT_PAGE = 1 << 23  # FFCV's default page (8 MiB)
MAX_ERRORS_KEPT = 5
WATCHDOG_POLL_S = 0.2
WATCHDOG_GRACE_S = 30.0  # all workers gone this long while the writer still waits: it never will finish


def import_ffcv():
    """The ffcv modules this package uses, or a DataError saying how to install them."""
    try:
        from ffcv.fields import IntField, RGBImageField
        from ffcv.writer import DatasetWriter
    except Exception as err:  # ImportError, or a missing system library (libturbojpeg, OpenCV)
        raise DataError(f"ffcv is not importable ({type(err).__name__}: {err}); install it with: apt-get "
                        "install -y pkg-config libturbojpeg0-dev libopencv-dev && pip install "
                        "'nrcc-scale[ffcv]'") from err
    return DatasetWriter, RGBImageField, IntField


def fit_resolution(image: np.ndarray, max_resolution: int | None) -> np.ndarray:
    """Shrink so that the longer side is at most ``max_resolution`` (area interpolation, as FFCV)."""
    if not max_resolution:
        return image
    height, width = image.shape[:2]
    scale = max_resolution / max(height, width)
    if scale >= 1:
        return image
    import cv2

    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def page_size_for(max_side: int | None) -> int:
    """FFCV writes whole pages (and each worker at least one), so a page should be small, yet one sample
    must fit in one: the smallest power of two >= 2 MiB that holds a raw ``max_side``-square image, or
    FFCV's default 8 MiB when the largest size is unknown."""
    if not max_side:
        return DEFAULT_PAGE
    return max(MIN_PAGE, 1 << math.ceil(math.log2(3 * max_side * max_side)))


def known_max_side(source: ImageSource) -> int | None:
    """The longest image side of an in-memory source (arrays, and subsets or unions of them)."""
    if hasattr(source, "images") and getattr(source.images, "ndim", 0) == 4:
        return int(max(source.images.shape[1:3]))
    if hasattr(source, "planes"):  # STL-10's unlabelled memory map
        return int(max(source.planes.shape[2:4]))
    if hasattr(source, "base") and hasattr(source, "indices"):
        return known_max_side(source.base)
    if hasattr(source, "parts"):
        sides = [known_max_side(p) for p in source.parts]
        return None if None in sides else max(sides)
    return None


def _sample_path(source: ImageSource, index: int) -> str | None:
    """The file behind a sample, when the source (or the source it is a view of) reads files."""
    while True:
        if hasattr(source, "path") and callable(source.path):
            try:
                return str(source.path(index))
            except Exception:  # noqa: BLE001
                return None
        if hasattr(source, "indices") and hasattr(source, "base"):
            source, index = source.base, int(source.indices[index])
        elif hasattr(source, "offsets") and hasattr(source, "parts"):
            part = int(np.searchsorted(source.offsets, index, side="right") - 1)
            source, index = source.parts[part], int(index - source.offsets[part])
        else:
            return None


class _Samples:
    """The indexable FFCV's writer reads in its worker processes: ``(index, image, label)``.

    A read that raises is recorded (the shared flag and an error file beside the output) instead of
    killing the worker; afterwards every sample becomes a placeholder so the write ends quickly and is
    then discarded.
    """

    def __init__(self, source: ImageSource, max_resolution: int | None, page_size: int, error_file: Path,
                 write_mode: str, jpeg_quality: int) -> None:
        self.source = source
        self.max_resolution = max_resolution
        self.page_size = page_size
        self.write_mode, self.jpeg_quality = write_mode, jpeg_quality
        self.error_file = str(error_file)
        self.failed = multiprocessing.Value(ctypes.c_int, 0)

    def __len__(self) -> int:
        return len(self.source)

    def _jpeg_size(self, image: np.ndarray) -> int:
        import cv2

        quality = [int(cv2.IMWRITE_JPEG_QUALITY), self.jpeg_quality]
        ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), quality)
        return int(encoded.size) if ok else image.nbytes

    def _placeholder(self, index: int) -> tuple[int, np.ndarray, int]:
        return index, np.zeros((8, 8, 3), dtype=np.uint8), 0

    def _record(self, index: int, message: str) -> None:
        with self.failed.get_lock():
            self.failed.value += 1
            count = self.failed.value
        if count <= MAX_ERRORS_KEPT:
            path = _sample_path(self.source, index)
            where = f"sample {index}" + (f" ({path})" if path else "")
            with open(self.error_file, "a") as fh:
                fh.write(f"{where}: {message}\n")

    def __getitem__(self, index: int) -> tuple[int, np.ndarray, int]:
        index = int(index)
        if self.failed.value:
            return self._placeholder(index)
        try:
            image = np.asarray(self.source.image(index))
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise DataError(f"expected an H x W x 3 uint8 image, got {image.shape} {image.dtype}")
            image = np.ascontiguousarray(fit_resolution(image, self.max_resolution))
            too_big = image.nbytes > self.page_size
            if too_big and (self.write_mode != "jpg" or self._jpeg_size(image) > self.page_size):
                raise DataError(f"a {image.shape[1]}x{image.shape[0]} image does not fit FFCV's "
                                f"{self.page_size} byte page; pass a smaller max_resolution "
                                "(--max-resolution)")
            label = int(self.source.labels[index])
        except Exception as err:  # noqa: BLE001 - reported after the write, with the sample's path
            self._record(index, f"{type(err).__name__}: {err}")
            return self._placeholder(index)
        return index, image, label


def _new_children(before: set[int]) -> list[multiprocessing.Process]:
    """Live child processes started since ``before`` (pids) was taken: the writer's workers."""
    return [p for p in multiprocessing.active_children() if p.pid not in before]


def _watch_workers(before: set[int], stop: threading.Event, fired: threading.Event) -> None:
    """Interrupt the main thread when a writer worker process died (non-zero exit: killed by a signal or
    the out-of-memory killer), or all of them are gone while the writer still waits: such a worker never
    reports back, and FFCV's writer (and the other workers, waiting for its page) would wait forever."""
    import _thread

    seen: dict[int, multiprocessing.Process] = {}
    gone_since: float | None = None
    while not stop.wait(WATCHDOG_POLL_S):
        alive = _new_children(before)
        seen.update((p.pid, p) for p in alive)
        crashed = any(p.exitcode not in (None, 0) for p in seen.values())
        if alive and not crashed:
            gone_since = None
            continue
        if not seen:
            continue
        gone_since = gone_since or time.monotonic()
        if (crashed or time.monotonic() - gone_since > WATCHDOG_GRACE_S) and not stop.is_set():
            fired.set()
            _thread.interrupt_main()
            return


@contextlib.contextmanager
def _progress_bar(enabled: bool, desc: str):
    """FFCV's writer always draws a plain tqdm bar; give it a label, or switch it off."""
    import functools

    import ffcv.writer

    original = ffcv.writer.tqdm
    ffcv.writer.tqdm = functools.partial(original, disable=not enabled, desc=desc, unit="img")
    try:
        yield
    finally:
        ffcv.writer.tqdm = original


def write_beton(source: ImageSource, out: str | os.PathLike[str], max_resolution: int | None = None,
                jpeg_quality: int = 90, write_mode: str = "jpg", num_workers: int = 0, progress: bool = True,
                compress_probability: float = 0.5, chunk_size: int = 100) -> Path:
    """Write ``source`` to the FFCV file ``out`` and return its path.

    ``max_resolution`` shrinks images whose longer side is larger (None keeps them); ``write_mode`` is
    ``jpg`` (quality ``jpeg_quality``), ``raw`` (lossless pixels; best for 32-96 px data sets) or
    ``proportion`` (a random ``compress_probability`` share as JPEG, FFCV's ImageNet recipe).
    ``num_workers`` processes encode (0: all cores).
    """
    if write_mode not in WRITE_MODES:
        raise DataError(f"write_mode = {write_mode!r}: allowed values are {', '.join(WRITE_MODES)}")
    if not 1 <= int(jpeg_quality) <= 100:
        raise DataError(f"jpeg_quality = {jpeg_quality}: must be in 1..100")
    if max_resolution is not None and max_resolution < 8:
        raise DataError(f"max_resolution = {max_resolution}: must be at least 8 px (or None: keep the size)")
    if len(source) == 0:
        raise DataError(f"{source.name}: nothing to write, the data set is empty")
    DatasetWriter, RGBImageField, IntField = import_ffcv()
    out = Path(out).expanduser()
    workers = num_workers if num_workers > 0 else (os.cpu_count() or 1)
    workers = max(1, min(workers, len(source)))
    page_size = page_size_for(max_resolution or known_max_side(source))
    fields = {
        "index": IntField(),
        # resizing happens in _Samples (so an oversized image is reported, not fatal to a worker)
        "image": RGBImageField(write_mode=write_mode, max_resolution=None, jpeg_quality=int(jpeg_quality),
                               compress_probability=compress_probability),
        "label": IntField(),
    }
    with atomic_path(out) as tmp:
        error_file = tmp.with_name(tmp.name + ".errors")
        samples = _Samples(source, max_resolution, page_size, error_file, write_mode, int(jpeg_quality))
        writer = DatasetWriter(str(tmp), fields, page_size=page_size, num_workers=workers)
        before = {p.pid for p in multiprocessing.active_children()}
        stop, fired = threading.Event(), threading.Event()
        watchdog = threading.Thread(target=_watch_workers, args=(before, stop, fired), daemon=True)
        watchdog.start()
        try:
            with _progress_bar(progress, f"writing {out.name}"):
                writer.from_indexed_dataset(samples, chunksize=chunk_size)
        except BaseException as err:
            stop.set()
            _cleanup_writer(writer, before)
            if isinstance(err, KeyboardInterrupt) and fired.is_set():
                raise DataError(f"writing {out} failed: the writer's worker processes died (killed, or out "
                                "of memory?); nothing was written at the destination") from None
            raise
        finally:
            stop.set()
            errors = error_file.read_text().strip() if error_file.exists() else ""
            with contextlib.suppress(OSError):
                error_file.unlink()
        if not samples.failed.value:
            os.chmod(tmp, _file_mode())  # a data file others read (the temporary file was private)
        if samples.failed.value:
            first = errors.replace("\n", "; ")
            raise DataError(f"writing {out} failed: {samples.failed.value} sample(s) could not be read; "
                            f"first: {first}. Nothing was written at the destination; fix or remove those "
                            "files, or use on_bad_file=skip (--on-bad-file skip) to validate and leave "
                            "unreadable images out")
    return out


def _file_mode() -> int:
    """rw for everyone, less the process umask (what ``open()`` would have created)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _cleanup_writer(writer, before: set[int]) -> None:
    """After a failed write: stop the writer's worker processes and free the shared metadata segment."""
    workers = _new_children(before)
    for child in workers:
        child.terminate()
    for child in workers:
        child.join(timeout=5)
    shared = getattr(writer, "metadata_sm", None)
    if shared is not None and not isinstance(shared, int):
        with contextlib.suppress(Exception):
            shared.close()
            shared.unlink()


def read_beton_fields(path: str | os.PathLike[str]) -> tuple[int, list[str]]:
    """(number of samples, field names) of a .beton, or a DataError when it is not one."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path} not found; write it with `python -m nrcc_scale.data prepare --dataset NAME "
                        f"--root DIR --out {path}`")
    try:
        from ffcv.reader import Reader

        reader = Reader(str(path))
    except DataError:
        raise
    except ImportError as err:
        import_ffcv()
        raise DataError(f"ffcv is not importable: {err}") from err
    except Exception as err:  # noqa: BLE001 - FFCV raises AssertionError/ValueError for foreign files
        raise DataError(f"{path} is not a readable FFCV .beton file ({type(err).__name__}: {err}); write "
                        "it again with `python -m nrcc_scale.data prepare`") from err
    return int(reader.num_samples), list(reader.field_names)
