"""Staging a remote file (an FFCV ``.beton``, an archive) onto each node's local disk, once per node.

FFCV memory-maps its file and reads it at random, which object storage cannot serve (ffcv#309), and a
distributed FFCV run is only fast when the file is local (ffcv-imagenet#10). So a URI in ``data.beton`` is
copied into ``data.cache_dir`` on every node before the loader opens it:

* **Once per node.** Every worker calls :func:`stage`; the first to take the entry's lock (``fcntl.flock``
  on a file in the cache dir, released by the kernel if the process dies) copies, the others block on the
  lock and then find the copy complete. Workers on different nodes each stage their own copy.
* **Versioned.** The remote size and modification time (S3 ``Last-Modified``, which changes with every
  PUT, as the ETag does) are stored beside the copy; a copy whose remote changed is staged again.
* **Never half-used.** Bytes go to ``<name>.partial``; only a complete copy of the expected size is renamed
  to ``<name>``. A killed copy leaves the ``.partial`` and its version record: the next start resumes it
  from where it stopped when the remote is unchanged, else starts over.
* **Bounded.** After staging, least recently used entries are evicted until the cache holds at most
  ``data.cache_max_gb`` (0: no limit); the entry in use and entries locked by another process are kept.

A log line says where the file came from, where it went, how many MB and how long it took; a tqdm bar
shows MB/s while copying (``NRCC_STAGING_PROGRESS=0`` turns it off).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nrcc_scale.config import SHARD_FORMATS
from nrcc_scale.data.base import DataError
from nrcc_scale.utils import remote_fs
from nrcc_scale.utils.files import atomic_write_json

CHUNK = 8 << 20
#: Testing aids: seconds to sleep after every chunk and the chunk size (so a test can kill a copy midway).
CHUNK_DELAY_ENV = "NRCC_STAGING_CHUNK_DELAY"
CHUNK_BYTES_ENV = "NRCC_STAGING_CHUNK_BYTES"
PROGRESS_ENV = "NRCC_STAGING_PROGRESS"
CACHE_DIR_ENV = "NRCC_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$NRCC_CACHE_DIR``, else ``$XDG_CACHE_HOME/nrcc_scale``, else ``~/.cache/nrcc_scale``. On cloud
    nodes point ``data.cache_dir`` (or ``NRCC_CACHE_DIR``) at the node's local NVMe SSD."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "nrcc_scale"


def resolve_cache_dir(setting: str) -> Path:
    return Path(setting).expanduser() if setting else default_cache_dir()


@dataclass
class StagedFile:
    path: Path  # the complete local copy
    source: str  # the URI it came from
    action: str  # "staged" (this process copied it), "resumed" (finished an interrupted copy), "cached"
    seconds: float  # copying time (0 for a cache hit)
    waited: float  # time spent waiting for another worker's lock
    size: int

    def describe(self) -> str:
        mb = self.size / 1e6
        if self.action == "cached":
            wait = f" after waiting {self.waited:.1f} s for another worker on this node" if self.waited > 0.5 else ""
            return f"data: using {self.path} (cached copy of {self.source}, {mb:.1f} MB){wait}"
        rate = mb / max(self.seconds, 1e-9)
        verb = "staged" if self.action == "staged" else "staged (resumed an interrupted copy)"
        return (f"data: {verb} {self.source} -> {self.path}: {mb:.1f} MB in {self.seconds:.1f} s "
                f"({rate:.1f} MB/s) on host {os.uname().nodename}")


def entry_dir(cache_dir: Path, uri: str) -> Path:
    """Cache folder of one URI: a hash of the URI (two URIs never share an entry) plus a readable name."""
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    name = os.path.basename(uri.rstrip("/")) or "object"
    return cache_dir / f"{digest}-{name}"


@contextlib.contextmanager
def _locked(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path``; yields False (without the lock) when not blocking and it is held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stage(uri: str, cache_dir: str | os.PathLike[str] = "", max_bytes: int = 0, progress: bool | None = None,
          log=None) -> StagedFile:
    """A complete local copy of ``uri`` (see the module docstring). Local paths are returned as they are."""
    if not remote_fs.is_remote(uri):
        path = Path(remote_fs.local_path_of(uri))
        if not path.is_file():
            raise DataError(f"{uri} does not exist; check the path")
        return StagedFile(path, uri, "local", 0.0, 0.0, path.stat().st_size)
    cache = resolve_cache_dir(str(cache_dir))
    entry = entry_dir(cache, uri)
    name = os.path.basename(uri.rstrip("/")) or "object"
    final, partial = entry / name, entry / f"{name}.partial"
    meta_path, partial_meta = entry / "version.json", entry / "partial.json"
    asked = time.perf_counter()
    with _locked(entry / ".lock"):
        waited = time.perf_counter() - asked
        remote = remote_fs.stat_file(uri)
        meta = _read_json(meta_path)
        if final.is_file() and meta == remote.version() and final.stat().st_size == remote.size:
            os.utime(entry / ".lock")  # the lock file's mtime records the last use, for LRU eviction
            result = StagedFile(final, uri, "cached", 0.0, waited, remote.size)
        else:
            _check_space(entry, remote.size, uri)
            result = _copy(remote, final, partial, partial_meta, meta_path, progress)
            result.waited = waited
            os.utime(entry / ".lock")
    if log is not None:
        log(result.describe())
    if max_bytes > 0:
        evict_lru(cache, max_bytes, keep=entry, log=log)
    return result


def _check_space(entry: Path, size: int, uri: str) -> None:
    free = shutil.disk_usage(entry).free
    if free < size:
        raise DataError(f"{uri}: {size / 1e9:.1f} GB does not fit in {entry.parent} ({free / 1e9:.1f} GB free); "
                        f"point data.cache_dir at a larger local disk or lower data.cache_max_gb")


def _copy(remote: remote_fs.RemoteFile, final: Path, partial: Path, partial_meta: Path, meta_path: Path,
          progress: bool | None) -> StagedFile:
    """Copy (or resume copying) ``remote`` into ``partial``, then rename it to ``final``."""
    fs, path = remote_fs.filesystem(remote.uri)
    start = 0
    if partial.is_file() and _read_json(partial_meta) == remote.version():
        start = min(partial.stat().st_size, remote.size)  # the same remote version: keep what arrived
    else:
        partial.unlink(missing_ok=True)
        atomic_write_json(partial_meta, remote.version())
    meta_path.unlink(missing_ok=True)  # the old copy (if any) is no longer the current version
    final.unlink(missing_ok=True)
    delay = float(os.environ.get(CHUNK_DELAY_ENV, "0") or 0)
    chunk = int(os.environ.get(CHUNK_BYTES_ENV, "0") or 0) or CHUNK
    if progress is None:
        progress = os.environ.get(PROGRESS_ENV, "1") != "0" and sys.stderr.isatty()
    from tqdm import tqdm

    started = time.perf_counter()
    bar = tqdm(total=remote.size, initial=start, desc=f"staging {final.name}", unit="B", unit_scale=True,
               unit_divisor=1000, disable=not progress, mininterval=1.0, leave=False)
    try:
        with fs.open_input_file(path) as src, open(partial, "ab" if start else "wb") as dst:
            if start:
                src.seek(start)
            done = start
            while done < remote.size:
                block = src.read(min(chunk, remote.size - done))
                if not block:
                    break
                dst.write(block)
                done += len(block)
                bar.update(len(block))
                if delay:
                    dst.flush()
                    time.sleep(delay)
            dst.flush()
            os.fsync(dst.fileno())
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001
        raise remote_fs.explain_error(remote.uri, err) from None
    finally:
        bar.close()
    got = partial.stat().st_size
    if got != remote.size:
        raise DataError(f"{remote.uri}: copied {got} bytes but the object has {remote.size}; it changed while "
                        f"being copied? Run again")
    seconds = time.perf_counter() - started
    os.replace(partial, final)
    atomic_write_json(meta_path, remote.version())
    partial_meta.unlink(missing_ok=True)
    return StagedFile(final, remote.uri, "resumed" if start else "staged", seconds, 0.0, remote.size)


def _entry_size(entry: Path) -> int:
    return sum(p.stat().st_size for p in entry.rglob("*") if p.is_file() and not p.is_symlink())


def evict_lru(cache: Path, max_bytes: int, keep: Path | None = None, log=None) -> list[Path]:
    """Delete least recently used entries until the cache holds at most ``max_bytes``. An entry whose lock
    another process holds (it is being staged) is skipped; a file FFCV has open stays readable by it after
    deletion (POSIX), so a running job is not disturbed."""
    entries = [e for e in cache.iterdir() if e.is_dir() and (e / ".lock").exists()] if cache.is_dir() else []
    sizes = {e: _entry_size(e) for e in entries}
    total = sum(sizes.values())
    evicted = []
    for entry in sorted(entries, key=lambda e: (e / ".lock").stat().st_mtime):
        if total <= max_bytes:
            break
        if keep is not None and entry == keep:
            continue
        with _locked(entry / ".lock", blocking=False) as got:
            if not got:
                continue
            for child in entry.iterdir():
                if child.name == ".lock":
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        (entry / ".lock").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            entry.rmdir()
        total -= sizes[entry]
        evicted.append(entry)
        if log is not None:
            log(f"data: evicted {entry.name} from {cache} ({sizes[entry] / 1e6:.1f} MB; cache limit "
                f"{max_bytes / 1e9:.1f} GB)")
    return evicted


ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".zip")


def stage_archive(uri: str, cache_dir: str | os.PathLike[str] = "", max_bytes: int = 0, log=None) -> Path:
    """A folder data set packed as one archive (``.tar``, ``.tar.gz``/``.tgz``, ``.zip``) at ``uri``: staged like
    any file, then unpacked once per node (under the same lock) into ``<entry>/unpacked``, whose name is
    returned. An interrupted unpack is redone: it goes to a temporary folder renamed when complete."""
    import tarfile
    import zipfile

    if not uri.endswith(ARCHIVE_SUFFIXES):
        raise DataError(f"data.root = {uri}: a remote folder must be one archive ({', '.join(ARCHIVE_SUFFIXES)}); "
                        f"pack it with `tar -cf NAME.tar -C DIR .`, or write Parquet shards "
                        f"(`python -m nrcc_scale.data shard`) and train with data.format=ray_data (or parquet)")
    staged = stage(uri, cache_dir, 0, log=log)
    entry = staged.path.parent
    unpacked, marker = entry / "unpacked", entry / "unpacked.json"
    with _locked(entry / ".lock"):
        version = _read_json(entry / "version.json")
        if not (unpacked.is_dir() and _read_json(marker) == version):
            started = time.perf_counter()
            shutil.rmtree(unpacked, ignore_errors=True)
            marker.unlink(missing_ok=True)
            tmp = entry / ".unpacking"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            try:
                if uri.endswith(".zip"):
                    with zipfile.ZipFile(staged.path) as archive:
                        archive.extractall(tmp)  # zipfile drops absolute paths and ".." components
                else:
                    with tarfile.open(staged.path) as archive:
                        archive.extractall(tmp, filter="data")  # no links out, no absolute paths
            except (tarfile.TarError, zipfile.BadZipFile, OSError) as err:
                shutil.rmtree(tmp, ignore_errors=True)
                raise DataError(f"{uri}: cannot unpack the archive ({err})") from None
            os.replace(tmp, unpacked)
            atomic_write_json(marker, version)
            if log is not None:
                log(f"data: unpacked {uri} into {unpacked} in {time.perf_counter() - started:.1f} s")
    if max_bytes > 0:
        evict_lru(entry.parent, max_bytes, keep=entry, log=log)
    # an archive holding one top-level folder: that folder is the data set's root
    children = [c for c in unpacked.iterdir() if not c.name.startswith(".")]
    return children[0] if len(children) == 1 and children[0].is_dir() else unpacked


def stage_root_for_build(cfg):
    """``cfg`` (a DataConfig) with a remote ``root`` archive replaced by this node's unpacked copy."""
    import dataclasses

    if cfg.format in SHARD_FORMATS or not cfg.root or not remote_fs.is_remote(cfg.root):
        return cfg
    root = stage_archive(cfg.root, cfg.cache_dir, int(cfg.cache_max_gb * 1e9), log=_emit)
    return dataclasses.replace(cfg, root=str(root))


def _emit(message: str) -> None:
    # a direct write: Ray Train V2 patches print() in its workers, which would show the line twice
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def stage_for_loader(cfg):
    """``cfg`` (a DataConfig) with ``beton`` replaced by this node's staged copy when it is a URI."""
    import dataclasses

    if not cfg.beton or not remote_fs.is_uri(cfg.beton):
        return cfg
    staged = stage(cfg.beton, cfg.cache_dir, int(cfg.cache_max_gb * 1e9), log=_emit)
    return dataclasses.replace(cfg, beton=str(staged.path))
