"""Object storage through ``pyarrow.fs``: one place that turns a URI into a file system and a path.

Schemes: ``s3://``, ``gs://``, ``abfs://`` / ``az://``, ``file://`` (and plain local paths). Credentials come
from the environment exactly as the cloud SDKs read them (``AWS_ACCESS_KEY_ID`` / ``AWS_PROFILE`` / instance
roles, ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_ACCOUNT_KEY`` ...); nothing is stored here.
For S3-compatible servers (MinIO, Ceph, a test server on loopback) ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` overrides the endpoint, as in the AWS CLI; ``http://`` endpoints turn TLS off.

Every failure that a user can fix (no such object, access denied, bad credentials, unknown scheme) becomes
one :class:`~nrcc_scale.data.base.DataError` line naming the URI.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from urllib.parse import urlparse

from nrcc_scale.data.base import DataError

REMOTE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "az")
SCHEMES = (*REMOTE_SCHEMES, "file")


def is_uri(path: str) -> bool:
    """True for ``scheme://...`` (a ``file://`` URI included), False for a plain path."""
    return "://" in str(path)


def is_remote(path: str) -> bool:
    return is_uri(path) and urlparse(str(path)).scheme.lower() in REMOTE_SCHEMES


def local_path_of(path: str) -> str:
    """A plain path for a local path or a ``file://`` URI (``~`` expanded)."""
    if str(path).startswith("file://"):
        return urlparse(str(path)).path
    return os.path.expanduser(str(path))


def _s3_filesystem(uri: str):
    from pyarrow import fs as pafs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    kwargs: dict = {}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    elif endpoint:
        kwargs["region"] = "us-east-1"  # an explicit endpoint needs no region lookup (which would go online)
    try:
        return pafs.S3FileSystem(**kwargs)
    except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError for bad settings
        raise DataError(f"{uri}: cannot set up the S3 client ({_short(err)}); check AWS_* variables") from None


def filesystem(uri: str):
    """(pyarrow FileSystem, path inside it) for a URI or a local path."""
    from pyarrow import fs as pafs

    text = str(uri)
    if not is_uri(text):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))
    scheme = urlparse(text).scheme.lower()
    if scheme not in SCHEMES:
        raise DataError(f"{text}: unknown scheme {scheme!r}; use one of "
                        f"{', '.join(s + '://' for s in SCHEMES)} or a local path")
    if scheme == "file":
        return pafs.LocalFileSystem(), local_path_of(text)
    if scheme == "s3":
        parsed = urlparse(text)
        return _s3_filesystem(text), f"{parsed.netloc}{parsed.path}".rstrip("/")
    try:
        return pafs.FileSystem.from_uri(text.replace("gcs://", "gs://", 1))
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{text}: cannot open this location ({_short(err)}); check the URI and the "
                        f"credentials in the environment") from None


@dataclass(frozen=True)
class RemoteFile:
    """What identifies one version of an object: its size and modification time (S3: ``Last-Modified``,
    which changes with every PUT, as the ETag does)."""

    uri: str
    size: int
    mtime_ns: int

    def version(self) -> dict:
        return {"uri": self.uri, "size": self.size, "mtime_ns": self.mtime_ns}


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 240 else text[:237] + "..."


def explain_error(uri: str, err: BaseException) -> DataError:
    """A one-line DataError for an error from the object store."""
    text = _short(err)
    low = text.lower().replace("_", " ")
    if "access denied" in low or "accessdenied" in low or "invalidaccesskeyid" in low or \
            "signaturedoesnotmatch" in low or "forbidden" in low or "403" in low:
        return DataError(f"{uri}: access denied ({text}); check the credentials in the environment "
                         f"(AWS_ACCESS_KEY_ID/AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*)")
    if "nosuchbucket" in low or "bucket does not exist" in low:
        return DataError(f"{uri}: the bucket does not exist ({text})")
    return DataError(f"{uri}: cannot read it ({text})")


def stat_file(uri: str) -> RemoteFile:
    """Size and modification time of one file or object; DataError (one line) if it is missing or unreadable."""
    from pyarrow import fs as pafs

    fs, path = filesystem(uri)
    try:
        info = fs.get_file_info(path)
    except Exception as err:  # noqa: BLE001
        raise explain_error(uri, err) from None
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{uri} does not exist; check the path (write it with `python -m nrcc_scale.data "
                        f"prepare ... --out {uri}`)")
    if info.type == pafs.FileType.Directory:
        raise DataError(f"{uri} is a folder; expected a file")
    mtime = info.mtime_ns if info.mtime_ns is not None else 0
    return RemoteFile(str(uri), int(info.size or 0), int(mtime))


def exists(uri: str) -> bool:
    from pyarrow import fs as pafs

    fs, path = filesystem(uri)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except Exception as err:  # noqa: BLE001
        raise explain_error(uri, err) from None


def check_destination(uri: str) -> None:
    """Fail early (one line) when the bucket / container of a destination URI is missing or unreadable,
    before anything is written."""
    from pyarrow import fs as pafs

    fs, path = filesystem(uri)
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except Exception as err:  # noqa: BLE001
        raise explain_error(uri, err) from None
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{uri}: the bucket {bucket!r} does not exist (or these credentials cannot see it)")


def join(uri: str, *names: str) -> str:
    return "/".join([str(uri).rstrip("/"), *names])


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as fh:
            return fh.read()
    except FileNotFoundError:
        raise DataError(f"{uri} does not exist") from None
    except Exception as err:  # noqa: BLE001
        raise explain_error(uri, err) from None


#: S3's CopyObject (what a server-side rename is on S3) takes objects up to 5 GiB in one request.
S3_SINGLE_COPY_LIMIT = 5 << 30


def upload_file(local: str | os.PathLike[str], uri: str, chunk: int = 8 << 20, progress: bool = False) -> None:
    """Copy a complete local file to ``uri`` so that ``uri`` only ever holds a complete file.

    The bytes go to a temporary object beside the destination (``.<name>.uploading-<pid>``), which is then
    renamed server-side (S3: one CopyObject, which makes the destination appear complete or not at all;
    GCS/Azure: their rename). Why not write the destination directly: pyarrow's S3 output stream completes
    the multipart upload when it is closed, also when the writer was interrupted, so a Ctrl-C would publish
    a truncated file. S3 objects over 5 GiB cannot be copied in one request; they are streamed to the
    destination directly, and an interrupted upload deletes what it published. A local destination is
    written under a temporary name and renamed."""
    from nrcc_scale.utils.files import atomic_path

    size = os.path.getsize(local)
    if not is_remote(uri):
        with atomic_path(local_path_of(uri)) as tmp, open(local, "rb") as src, open(tmp, "wb") as dst:
            while block := src.read(chunk):
                dst.write(block)
        return
    fs, path = filesystem(uri)
    direct = urlparse(str(uri)).scheme.lower() == "s3" and size > S3_SINGLE_COPY_LIMIT
    head, _, name = path.rpartition("/")
    target = path if direct else f"{head}/.{name}.uploading-{os.getpid()}"
    bar = _progress_bar(size, f"uploading {name}", progress)
    try:
        try:
            with open(local, "rb") as src, fs.open_output_stream(target) as dst:
                while block := src.read(chunk):
                    dst.write(block)
                    bar.update(len(block))
            if fs.get_file_info(target).size != size:
                raise OSError(f"uploaded {fs.get_file_info(target).size} bytes of {size}")
            if not direct:
                fs.move(target, path)
        except BaseException:
            with contextlib.suppress(Exception):
                fs.delete_file(target)
            raise
    except Exception as err:  # noqa: BLE001
        raise explain_error(uri, err) from None
    finally:
        bar.close()


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled,
                mininterval=1.0, leave=False)
