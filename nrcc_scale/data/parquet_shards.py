"""Parquet shards of a data set (JPEG bytes + label + index) in object storage or on disk, and reading them back.

Layout at the destination URI (written by ``python -m nrcc_scale.data shard``)::

    part-00000.parquet ... part-NNNNN.parquet   columns: index int64, label int64, image binary (JPEG)
    _manifest.json                              rows per file, class names, resolution, mean/std

Shard ``k`` holds the consecutive sample ids ``offsets[k] .. offsets[k+1]-1``, so an id names its file. Every
shard is written completely on local disk and then uploaded (an object appears only when complete), and the
manifest is written last: a reader that finds the manifest finds every shard it lists.

:class:`ParquetSource` is the :class:`~nrcc_scale.data.base.ImageSource` over the shards (labels from the
``label`` columns, images decoded on demand, one shard cached), used for evaluation and by the driver's
check; training streams the shards with :mod:`nrcc_scale.data.ray_data_loader` (``data.format: ray_data``) or
:mod:`nrcc_scale.data.parquet_loader` (``data.format: parquet``).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nrcc_scale.data.base import DataBundle, DataError, ImageSource
from nrcc_scale.utils import remote_fs

MANIFEST = "_manifest.json"
COLUMNS = ("index", "label", "image")


@dataclass
class Manifest:
    uri: str
    files: list[str]
    rows: list[int]
    class_names: list[str]
    native_resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.rows)]).astype(np.int64)

    @property
    def num_rows(self) -> int:
        return int(sum(self.rows))

    def file_uri(self, k: int) -> str:
        return remote_fs.join(self.uri, self.files[k])


def read_manifest(uri: str) -> Manifest:
    """The shards' manifest; a one-line DataError naming the URI when it is missing or unreadable."""
    where = remote_fs.join(uri, MANIFEST)
    if not remote_fs.is_remote(uri) and not os.path.isfile(remote_fs.local_path_of(where)):
        raise DataError(f"{where} not found: data.root must be a folder written by `python -m nrcc_scale.data "
                        f"shard --out {uri}`")
    try:
        doc = json.loads(remote_fs.read_bytes(where))
    except DataError as err:
        raise DataError(f"{err}; data.root must be a location written by `python -m nrcc_scale.data shard`") \
            from None
    except ValueError as err:
        raise DataError(f"{where} is not a valid manifest ({err}); write the shards again") from None
    return Manifest(str(uri).rstrip("/"), list(doc["files"]), [int(r) for r in doc["rows"]],
                    list(doc["class_names"]), int(doc["native_resolution"]), tuple(doc["mean"]),
                    tuple(doc["std"]), str(doc.get("name", "shards")))


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """``H x W x 3`` uint8 RGB from JPEG (or any PIL-readable) bytes; raises on corrupt bytes."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.array(img.convert("RGB"))  # writable: torch.from_numpy of a read-only array warns


def write_shards(source: ImageSource, uri: str, rows_per_file: int = 1000, quality: int = 95,
                 progress: bool = True, log: Callable[[str], None] = print) -> Manifest:
    """Write ``source`` as Parquet shards plus the manifest at ``uri`` (see the module docstring)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    if rows_per_file < 1:
        raise DataError(f"rows per shard = {rows_per_file}: must be at least 1")
    n = len(source)
    files, rows = [], []
    schema = pa.schema([("index", pa.int64()), ("label", pa.int64()), ("image", pa.binary())])
    with tempfile.TemporaryDirectory(prefix="nrcc-shards-") as scratch:
        bar = tqdm(total=n, desc="writing shards", unit="img", disable=not progress, mininterval=1.0)
        for k, start in enumerate(range(0, n, rows_per_file)):
            ids = np.arange(start, min(n, start + rows_per_file), dtype=np.int64)
            images = []
            for i in ids:
                images.append(encode_jpeg(source.image(int(i)), quality))
                bar.update(1)
            table = pa.table({"index": ids, "label": source.labels[ids].astype(np.int64), "image": images},
                             schema=schema)
            name = f"part-{k:05d}.parquet"
            local = os.path.join(scratch, name)
            pq.write_table(table, local, row_group_size=256, compression="none")  # JPEG is compressed already
            remote_fs.upload_file(local, remote_fs.join(uri, name))
            os.unlink(local)
            files.append(name)
            rows.append(len(ids))
        bar.close()
        manifest = {"version": 1, "name": source.name, "files": files, "rows": rows,
                    "class_names": list(source.class_names), "native_resolution": int(source.native_resolution),
                    "mean": list(source.mean), "std": list(source.std), "num_rows": n, "jpeg_quality": quality}
        local = os.path.join(scratch, MANIFEST)
        with open(local, "w") as fh:
            json.dump(manifest, fh, indent=1)
        remote_fs.upload_file(local, remote_fs.join(uri, MANIFEST))
    log(f"wrote {n} images in {len(files)} Parquet shard(s) to {uri}; train with data.format=ray_data (or parquet) "
        f"data.root={uri}")
    return read_manifest(uri)


def read_shard(manifest: Manifest, k: int, columns: tuple[str, ...] = COLUMNS):
    """One shard as a pyarrow Table."""
    import pyarrow.parquet as pq

    uri = manifest.file_uri(k)
    fs, path = remote_fs.filesystem(uri)
    try:
        return pq.read_table(path, columns=list(columns), filesystem=fs)
    except Exception as err:  # noqa: BLE001
        raise remote_fs.explain_error(uri, err) from None


class BadImagePolicy:
    """``data.on_bad_file`` for images decoded from shards: ``fail`` raises a DataError naming the shard and
    the sample; ``skip`` warns once per shard and hands out a neighbouring image of the same shard instead
    (the batch count, which every DDP worker must agree on, stays fixed)."""

    def __init__(self, on_bad_file: str) -> None:
        self.on_bad_file = on_bad_file
        self.warned: set[str] = set()

    def decode(self, blobs, position: int, where: str, sample: int) -> np.ndarray:
        try:
            return decode_image(blobs[position])
        except Exception as err:  # noqa: BLE001 - PIL raises many kinds for corrupt bytes
            if self.on_bad_file == "fail":
                raise DataError(f"{where}: sample {sample} holds corrupt image bytes ({type(err).__name__}: "
                                f"{err}); write the shards again, or set data.on_bad_file=skip") from None
            if where not in self.warned:
                self.warned.add(where)
                warnings.warn(f"{where}: sample {sample} holds corrupt image bytes; replaced by a neighbouring "
                              f"image (data.on_bad_file=skip)", stacklevel=2)
            for step in range(1, len(blobs)):
                with_neighbour = (position + step) % len(blobs)
                try:
                    return decode_image(blobs[with_neighbour])
                except Exception:  # noqa: BLE001, S112
                    continue
            raise DataError(f"{where}: no readable image in this shard") from None


class ParquetSource(ImageSource):
    """The shards as an ImageSource (labels read once from the ``label`` columns; images on demand)."""

    def __init__(self, uri: str, on_bad_file: str = "fail", cache_files: int = 2) -> None:
        self.manifest = m = read_manifest(uri)
        self.name = f"{m.name} (Parquet shards at {m.uri})"
        labels = [np.asarray(read_shard(m, k, ("label",)).column("label")) for k in range(len(m.files))]
        self.labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
        if len(self.labels) != m.num_rows:
            raise DataError(f"{m.uri}: the shards hold {len(self.labels)} rows but the manifest lists "
                            f"{m.num_rows}; write the shards again")
        self.class_names = m.class_names
        self.native_resolution = m.native_resolution
        self.mean, self.std = m.mean, m.std
        self.offsets = m.offsets
        self.policy = BadImagePolicy(on_bad_file)
        self._cache: OrderedDict[int, list] = OrderedDict()
        self._cache_files = cache_files

    def _blobs(self, k: int) -> list:
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        blobs = read_shard(self.manifest, k, ("image",)).column("image").to_pylist()
        self._cache[k] = blobs
        while len(self._cache) > self._cache_files:
            self._cache.popitem(last=False)
        return blobs

    def image(self, index: int) -> np.ndarray:
        k = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.policy.decode(self._blobs(k), int(index - self.offsets[k]), self.manifest.file_uri(k), index)


def parquet_bundle(uri: str, on_bad_file: str, holdout_fraction: float, seed: int) -> DataBundle:
    """Training on every shard; clustering scored on every shard (as the paper clusters all it trains on);
    probes fit and scored on a seeded stratified hold-out of them."""
    from nrcc_scale.data.base import SubsetSource, stratified_holdout

    source = ParquetSource(uri, on_bad_file)
    keep, held = stratified_holdout(source.labels, holdout_fraction, seed)
    return DataBundle(train=source, evaluate=source, probe_train=SubsetSource(source, keep, f"{source.name}[probe]"),
                      probe_test=SubsetSource(source, held, f"{source.name}[holdout]"))
