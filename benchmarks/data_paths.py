"""Where the training images come from: local FFCV, FFCV staged from object storage, Parquet shards streamed
from object storage (``data.format: parquet`` and ``data.format: ray_data``), and the plain image-folder
loader, side by side.

    python benchmarks/data_paths.py [--quick] [--json docs/benchmarks/data_paths.json] [--workers N]

Task: one epoch of two-view training batches (random resized crop + flip per view, uint8
``B x 2 x 3 x R x R``, exactly what ``engine/loop.py`` consumes; the photometric half runs on the device and
costs the same for every path, so it is left out), images/second after two untimed warm-up batches.

Data: JPEGs of smooth random colour fields with texture and noise (``loader_throughput.py``'s generator,
quality 90), 10 classes; full: 3,000 images of 224 px trained at 128 px; ``--quick``: 600 of 96 px at 64 px.

Paths (one training process, ``--workers`` decoding workers where the path has them):

* ``folder`` - ``build_train_loader(loader=torchvision)`` on the image folder (PIL decode, DataLoader with
  ``--workers`` processes): what a user without FFCV runs;
* ``ffcv local`` - ``FFCVTrainLoader`` on a .beton on local disk (``--workers`` numba threads);
* ``ffcv staged`` - the same .beton uploaded to an S3-compatible server on loopback (moto), staged into a
  cache folder by :func:`nrcc_scale.data.staging.stage` (the time to stage is its own column), then read by
  FFCV from the staged copy;
* ``parquet s3`` - Parquet shards (JPEG bytes) on the same loopback server, streamed by
  ``ParquetTrainLoader`` (pyarrow reads two shard files ahead in a thread; the training process decodes each
  image once and cuts both views, single-threaded). Writing the shards is the one-off column.
* ``ray_data s3`` - the same shards through Ray Data, as ``data.format: ray_data`` builds them
  (``read_parquet`` with a seeded file shuffle -> ``map_batches(decode_views)``), consumed by
  ``RayDataTrainLoader`` with its seeded local shuffle buffer; the read/decode/crop tasks run in a local Ray
  with ``--workers`` CPUs (started outside the timing; its start-up is the one-off column). Without Ray Train
  (one consumer, so no ``streaming_split``). Timed over a second epoch from its first request, start-up of
  the epoch's execution included (the other rows skip two warm-up batches; during those Ray Data would have
  prefetched most of a small set, which measures nothing), so on small sets this row is a lower bound.

The loopback server is moto, a Python server: its throughput is far below S3's, so the staging MB/s and the
streaming rate are lower bounds for those paths; the ratios between FFCV local and staged show that once
staged, FFCV runs at local speed.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import parse_args, print_table, write_json
from loader_throughput import beton_for, folder_source, jpeg_folder, time_batches

from nrcc_scale.config import AugmentConfig, DataConfig
from nrcc_scale.data.ffcv_io import ffcv_available
from nrcc_scale.data.loaders import build_train_loader

BATCH = 64
SEED = 0


def _add(parser) -> None:
    parser.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                        help="decoding workers (DataLoader processes / FFCV threads)")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "nrcc_loader_bench")


def _cfg(**kw) -> DataConfig:
    return DataConfig(augment=AugmentConfig(crop_scale_min=0.25, flip_p=0.5), **kw)


def _s3_server():
    """A loopback moto server and the environment pyarrow needs to reach it (None when moto is missing)."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        return None, None
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    import boto3

    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1").create_bucket(
        Bucket="bench")
    return server, "s3://bench"


def _row(path: str, rate: float, images: int, one_off: float | None, one_off_what: str, note: str) -> dict:
    return {"path": path, "img/s": rate, "images": images, "one-off s": one_off, "one-off": one_off_what,
            "note": note}


def _ray_data_rate(uri: str, count: int, res: int, workers: int) -> tuple[float, int, float, float, float]:
    """(images/s, images, seconds to start Ray, seconds to the epoch's first batch, images/s after it) of
    ``data.format: ray_data``'s pipeline on ``workers`` CPUs."""
    import ray

    from nrcc_scale.config import Config, RayConfig
    from nrcc_scale.data.ray_data_loader import RayDataTrainLoader, build_train_dataset
    from nrcc_scale.ray_setup import init_ray

    cfg = Config()
    # the default 1000-row shuffle buffer, but at most half the set (the --quick set would fit in it whole)
    cfg.data = _cfg(format="ray_data", root=uri, resolution=res, shuffle_buffer=min(1000, count // 2))
    cfg.train.seed = SEED
    cfg.method.nrcc.enabled = False  # two views, as the other rows
    started = time.perf_counter()
    init_ray(RayConfig(num_cpus=workers))
    ray_s = time.perf_counter() - started
    try:
        loader = RayDataTrainLoader(cfg.data, count, 2, BATCH, 0, 1, SEED, shard=build_train_dataset(cfg))
        for _ in loader:  # epoch 0, untimed: Ray's worker processes start and import torch/pyarrow
            pass
        # epoch 1 timed from its first request: Ray Data prefetches the whole of a small set during the other
        # rows' two warm-up batches, so its start-up per epoch is part of the cost here
        loader.set_epoch(1)
        started, n, first = time.perf_counter(), 0, None
        for views, _labels, _index in loader:
            n += views.shape[0]
            if first is None:
                first = (time.perf_counter() - started, n)
        elapsed = time.perf_counter() - started
        rate = n / elapsed
        after_first = (n - first[1]) / max(elapsed - first[0], 1e-9)
    finally:
        ray.shutdown()
    return rate, n, ray_s, first[0], after_first


def main() -> int:
    args = parse_args(__doc__.split("\n")[0], _add)
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    count, side, res = (600, 96, 64) if args.quick else (3000, 224, 128)
    root = jpeg_folder(args.data_dir, count, side)
    source = folder_source(root)
    rows: list[dict[str, Any]] = []
    notes = [f"{count} JPEGs of {side} px trained at {res} px, batch {BATCH}, {args.workers} decoding workers; "
             f"loader only (crop + flip of 2 views), photometric augmentation left out (same for every path)",
             "the machine was shared with other work while this ran: compare ratios, not absolute rates"]

    folder = build_train_loader(_cfg(loader="torchvision", loader_workers=args.workers), source, res, 2, BATCH,
                                0, 1, SEED, __import__("torch").device("cpu"))
    rate, n = time_batches(folder, epoch=0)
    rows.append(_row("folder (PIL, DataLoader)", rate, n, None, "", "no preparation"))
    print(f"  folder: {rate:.0f} img/s", flush=True)

    server, bucket = _s3_server()
    if server is None:
        notes.append("moto is not installed (pip install 'nrcc-scale[dev]'): the object-storage paths were skipped")
    try:
        if ffcv_available():
            from nrcc_scale.data.ffcv_loader import FFCVTrainLoader

            beton = args.data_dir / f"jpeg{side}_n{count}.beton"
            beton, prep = beton_for(source, beton, "jpg", args.workers)
            # numba compiles the decoder on first use: one untimed pass so neither FFCV row pays for it
            time_batches(FFCVTrainLoader(_cfg(beton=str(beton)), res, 2, BATCH, threads=args.workers), epoch=0)
            local = FFCVTrainLoader(_cfg(beton=str(beton)), res, 2, BATCH, threads=args.workers)
            rate, n = time_batches(local, epoch=0)
            rows.append(_row("ffcv local", rate, n, prep, "write .beton" if prep else "", ".beton on local disk"))
            print(f"  ffcv local: {rate:.0f} img/s", flush=True)
            if server is not None:
                from nrcc_scale.data.staging import stage
                from nrcc_scale.utils import remote_fs

                uri = f"{bucket}/{beton.name}"
                remote_fs.upload_file(beton, uri)
                with tempfile.TemporaryDirectory() as cache:
                    staged = stage(uri, cache, progress=False)
                    mb_s = staged.size / 1e6 / max(staged.seconds, 1e-9)
                    loader = FFCVTrainLoader(_cfg(beton=str(staged.path)), res, 2, BATCH, threads=args.workers)
                    rate, n = time_batches(loader, epoch=0)
                    rows.append(_row("ffcv staged from s3 (loopback)", rate, n, staged.seconds, "stage",
                                     f"{staged.size / 1e6:.1f} MB staged at {mb_s:.0f} MB/s"))
                    print(f"  ffcv staged: {rate:.0f} img/s (staging {staged.seconds:.1f} s)", flush=True)
        else:
            notes.append("ffcv is not importable here: the FFCV rows are missing")

        if server is not None:
            from nrcc_scale.data.parquet_loader import ParquetTrainLoader
            from nrcc_scale.data.parquet_shards import ParquetSource, write_shards

            uri = f"{bucket}/shards-{side}-{count}"
            started = time.perf_counter()
            write_shards(source, uri, rows_per_file=max(100, count // 8), quality=90, progress=False,
                         log=lambda m: None)
            shard_s = time.perf_counter() - started
            parquet = ParquetSource(uri)
            loader = ParquetTrainLoader(_cfg(format="parquet", root=uri), parquet, res, 2, BATCH)
            rate, n = time_batches(loader, epoch=0)
            rows.append(_row("parquet on s3 (loopback)", rate, n, shard_s, "write shards",
                             "pyarrow reads ahead; decode + crops in the training process (1 thread)"))
            print(f"  parquet: {rate:.0f} img/s", flush=True)
            rate, n, ray_s, first_s, after = _ray_data_rate(uri, len(parquet), res, args.workers)
            rows.append(_row("ray_data on s3 (loopback)", rate, n, ray_s, "start Ray",
                             f"Ray Data read + decode + crops in tasks on {args.workers} CPU(s); 2nd epoch incl. "
                             f"{first_s:.1f} s to its first batch, {after:.0f} img/s after it"))
            print(f"  ray_data: {rate:.0f} img/s (Ray start {ray_s:.1f} s)", flush=True)
            notes.append("ray_data is timed over a whole epoch from its first request: each epoch is a new Ray Data "
                         "execution (task scheduling, a worker process per task); on a small set that start-up "
                         "dominates, and its tasks share this machine's cores with the consumer")
    finally:
        if server is not None:
            server.stop()

    base = rows[0]["img/s"]
    for row in rows:
        row["x folder"] = row["img/s"] / base
    columns = ["path", "img/s", "x folder", "images", "one-off", "one-off s", "note"]
    print_table(rows, columns, title=f"Training data paths ({'quick' if args.quick else 'full'})")
    for note in notes:
        print(f"note: {note}")
    if args.json:
        report = {"title": "Training data paths: images/s of two-view batches", "columns": columns, "rows": rows,
                  "notes": notes, "plots": []}
        write_json(args.json, {"quick": args.quick, "workers": args.workers, "rows": rows, "report": report})
    return 0


if __name__ == "__main__":
    sys.exit(main())
