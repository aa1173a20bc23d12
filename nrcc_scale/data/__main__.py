"""``python -m nrcc_scale.data``: prepare FFCV files, write Parquet shards, long-tailed index lists, describe.

    python -m nrcc_scale.data prepare  --dataset imagenet10 --root /data/imagenet --out in10.beton
    python -m nrcc_scale.data prepare  --dataset imagenet10 --root /data/imagenet --out s3://bucket/in10.beton
    python -m nrcc_scale.data shard    --dataset imagenet10 --root /data/imagenet --out s3://bucket/in10-shards
    python -m nrcc_scale.data longtail --dataset cifar10 --root /data/cifar10 --ratio 10 --out lt.npy
    python -m nrcc_scale.data describe --dataset cifar20 --root /data/cifar100

``--config FILE`` (repeatable) takes the ``data`` section of a run config (e.g. configs/datasets/*.yaml);
flags override it. Mistakes are reported as one line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nrcc_scale.config import Config, ConfigError
from nrcc_scale.config_checks import validate_config
from nrcc_scale.config_load import load_config
from nrcc_scale.data.base import DataBundle, DataError, ImageSource
from nrcc_scale.data.catalog import dataset_names
from nrcc_scale.data.image_checks import VERIFY_LEVELS

SPLITS = ("train", "test", "evaluate", "all")
LONGTAIL_DATASETS = ("cifar10", "cifar10_lt", "cifar20", "cifar20_lt", "cifar100")


class UsageError(Exception):
    """A command-line mistake (exit status 2)."""


def _add_data_args(parser: argparse.ArgumentParser, need_root: bool = True) -> None:
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="run config(s) whose data section to use (flags override it)")
    parser.add_argument("--dataset", choices=dataset_names(), help="data set name")
    parser.add_argument("--root", help="data folder (see nrcc_scale/data/catalog.py for each layout)")
    parser.add_argument("--on-bad-file", choices=("fail", "skip"),
                        help="unreadable or corrupt images: stop with their paths (fail) or leave them "
                             "out (skip)")
    parser.add_argument("--verify", choices=VERIFY_LEVELS,
                        help="how image files are checked when indexed (default: decode with --on-bad-file "
                             "skip for prepare, else auto)")
    parser.add_argument("--imbalance-ratio", type=float, help="long-tailed sets: largest / smallest class")
    parser.add_argument("--holdout-fraction", type=float, help="hold-out share for sets without a test split")
    parser.add_argument("--use-unlabeled", action="store_true",
                        help="STL-10: add the 100,000 unlabelled images to the training split")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of hold-outs and long-tailed subsets (use the run's train.seed; "
                             "default 0)")


def _config(args: argparse.Namespace, verify_default: str = "auto") -> Config:
    cfg = load_config(args.config, validate=False)
    d = cfg.data
    if args.dataset:
        d.dataset = args.dataset
    if args.root:
        d.root = args.root
    if args.on_bad_file:
        d.on_bad_file = args.on_bad_file
    if args.imbalance_ratio is not None:
        d.imbalance_ratio = args.imbalance_ratio
    if args.holdout_fraction is not None:
        d.holdout_fraction = args.holdout_fraction
    if not args.dataset and not args.config:
        raise UsageError("--dataset is required (or --config with a data.dataset)")
    if d.dataset == "digits":
        raise UsageError("the bundled digits need no preparation; pick a data set stored on disk")
    if not d.root:
        raise UsageError(f"--root is required: the folder that holds {d.dataset}")
    validate_config(cfg)
    # proposed DataConfig keys, read by the readers with getattr until they exist
    d.verify_files = args.verify or verify_default  # type: ignore[attr-defined]
    if args.use_unlabeled:
        d.use_unlabeled = True  # type: ignore[attr-defined]
    return cfg


def _build(cfg: Config, seed: int) -> DataBundle:
    from nrcc_scale.data.registry import build_data

    return build_data(cfg.data, seed=seed)


def _split(bundle: DataBundle, split: str) -> ImageSource:
    if split == "train":
        return bundle.train
    if split == "test":
        return bundle.probe_test
    return bundle.evaluate  # "evaluate" / "all": the set clustering is scored on


# ----------------------------------------------------------------------------------------------------------
# prepare
# ----------------------------------------------------------------------------------------------------------


def cmd_prepare(args: argparse.Namespace) -> int:
    from nrcc_scale.data.ffcv_io import write_beton
    from nrcc_scale.utils import remote_fs

    destination = args.out
    remote = remote_fs.is_remote(destination)
    if remote:
        if not destination.endswith(".beton"):
            raise UsageError(f"--out {destination}: expected a URI ending in .beton")
        remote_fs.check_destination(destination)  # fail early (one line): missing bucket, bad credentials
    out = Path(remote_fs.local_path_of(destination)) if not remote else _upload_scratch(destination)
    if out.suffix != ".beton":
        raise UsageError(f"--out {out}: expected a file name ending in .beton")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name ending in .beton")
    if args.max_resolution and args.max_resolution < 8:
        raise UsageError(f"--max-resolution {args.max_resolution}: must be at least 8 (or 0: keep the size)")
    max_resolution = args.max_resolution or None
    if not 1 <= args.jpeg_quality <= 100:
        raise UsageError(f"--jpeg-quality {args.jpeg_quality}: must be in 1..100")
    on_bad = args.on_bad_file or "fail"
    # with skip, every image is decoded before writing so the file holds only readable images
    cfg = _config(args, verify_default="decode" if on_bad == "skip" else "auto")
    bundle = _build(cfg, args.seed)
    source = _split(bundle, args.split)
    side = min(source.native_resolution, max_resolution or source.native_resolution)
    mode = args.write_mode if args.write_mode != "auto" else ("raw" if side <= 96 else "jpg")
    print(f"writing {source.describe()} ({args.split} split) to {out}: {mode}"
          f"{f' quality {args.jpeg_quality}' if mode != 'raw' else ''}, max resolution "
          f"{max_resolution or 'original'}", flush=True)
    started = time.perf_counter()
    write_beton(source, out, max_resolution=max_resolution, jpeg_quality=args.jpeg_quality,
                write_mode=mode, num_workers=args.workers, progress=not args.no_progress)
    size_mb = out.stat().st_size / 2**20
    if remote:
        # written completely on local disk first; the object appears at the URI only when fully uploaded
        try:
            remote_fs.upload_file(out, destination, progress=not args.no_progress)
        finally:
            out.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    print(f"wrote {len(source)} images to {destination} ({size_mb:.1f} MiB) in {seconds:.1f} s; "
          f"train with data.beton={destination}" + (" (the training split)" if args.split == "train" else ""))
    return 0


def _upload_scratch(uri: str) -> Path:
    """A local file to write a .beton into before it is uploaded to ``uri`` (in the staging cache dir,
    which is on a large local disk on cloud nodes)."""
    import tempfile

    from nrcc_scale.data.staging import default_cache_dir

    folder = default_cache_dir() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".prepare-", suffix=".beton", dir=folder)
    import os

    os.close(fd)
    return Path(name)


# ----------------------------------------------------------------------------------------------------------
# shard
# ----------------------------------------------------------------------------------------------------------


def cmd_shard(args: argparse.Namespace) -> int:
    from nrcc_scale.data.parquet_shards import write_shards
    from nrcc_scale.utils import remote_fs

    if remote_fs.is_remote(args.out):
        remote_fs.check_destination(args.out)
    if args.rows_per_file < 1:
        raise UsageError(f"--rows-per-file {args.rows_per_file}: must be at least 1")
    if not 1 <= args.jpeg_quality <= 100:
        raise UsageError(f"--jpeg-quality {args.jpeg_quality}: must be in 1..100")
    if args.dataset == "digits":  # the bundled set: handy for tests and the demo of the streaming path
        cfg = load_config(args.config, ["data.dataset=digits"])
    else:
        cfg = _config(args, verify_default="decode" if (args.on_bad_file or "fail") == "skip" else "auto")
    source = _split(_build(cfg, args.seed), args.split)
    print(f"writing {source.describe()} ({args.split} split) to {args.out} as Parquet shards of "
          f"{args.rows_per_file} images (JPEG quality {args.jpeg_quality})", flush=True)
    started = time.perf_counter()
    write_shards(source, args.out, args.rows_per_file, args.jpeg_quality, progress=not args.no_progress)
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


# ----------------------------------------------------------------------------------------------------------
# longtail
# ----------------------------------------------------------------------------------------------------------


def cmd_longtail(args: argparse.Namespace) -> int:
    from nrcc_scale.data.cifar import long_tail_indices, read_cifar10, read_cifar100
    from nrcc_scale.utils.files import atomic_path

    if args.dataset not in LONGTAIL_DATASETS:
        raise UsageError(f"--dataset {args.dataset}: long-tailed lists are made for "
                         f"{', '.join(LONGTAIL_DATASETS)}")
    if args.ratio < 1:
        raise UsageError(f"--ratio {args.ratio}: must be >= 1")
    out = Path(args.out).expanduser()
    if out.suffix != ".npy":
        raise UsageError(f"--out {out}: expected a file name ending in .npy")
    root = Path(args.root).expanduser()
    if not root.exists():
        raise UsageError(f"--root {root} does not exist")
    base = args.dataset.removesuffix("_lt")
    arrays = read_cifar10(root) if base == "cifar10" else read_cifar100(root, coarse=base == "cifar20")
    rows = long_tail_indices(arrays.train_labels, args.ratio, args.seed)
    counts = np.bincount(arrays.train_labels[rows], minlength=len(arrays.class_names))
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.save(fh, rows)
    print(f"{base} long-tailed training subset, ratio {args.ratio:g}, seed {args.seed}: {len(rows)} of "
          f"{len(arrays.train_labels)} images -> {out}")
    pairs = zip(arrays.class_names, counts, strict=True)
    print("per-class counts: " + ", ".join(f"{n}={c}" for n, c in pairs))
    return 0


# ----------------------------------------------------------------------------------------------------------
# describe
# ----------------------------------------------------------------------------------------------------------


def cmd_describe(args: argparse.Namespace) -> int:
    cfg = _config(args)
    bundle = _build(cfg, args.seed)
    splits = {"train": bundle.train, "evaluate": bundle.evaluate, "probe_train": bundle.probe_train,
              "probe_test": bundle.probe_test}
    class_names = bundle.evaluate.class_names
    counts = {}
    for key, source in splits.items():
        labels = source.labels[source.labels >= 0]
        counts[key] = np.bincount(labels, minlength=len(class_names))
    print(f"{cfg.data.dataset} at {cfg.data.root}: {len(class_names)} classes, "
          f"{bundle.train.native_resolution} px native")
    print(f"{'split':<12} {'images':>9} {'unlabelled':>10}  per class min / median / max   source")
    for key, source in splits.items():
        c = counts[key]
        unlabelled = int(np.sum(source.labels < 0))
        spread = f"{c.min():>7} / {int(np.median(c)):>6} / {c.max():<7}"
        print(f"{key:<12} {len(source):>9} {unlabelled:>10}  {spread}   {source.name}")
    if args.per_class or len(class_names) <= 50:
        width = max(len(n) for n in class_names)
        print(f"\n{'class':<{width}} " + " ".join(f"{k:>11}" for k in splits))
        for i, name in enumerate(class_names):
            print(f"{name:<{width}} " + " ".join(f"{int(counts[k][i]):>11}" for k in splits))
    return 0


# ----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nrcc_scale.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="write an FFCV .beton of one split")
    _add_data_args(prep)
    prep.add_argument("--out", required=True, help="output file (.beton); written atomically")
    prep.add_argument("--split", choices=SPLITS, default="train",
                      help="train (what data.beton is for), test, or evaluate/all (the clustering set)")
    prep.add_argument("--max-resolution", type=int, default=512,
                      help="shrink images whose longer side is larger (default 512; 0 keeps every size, which "
                           "makes FFCV's decode buffers as large as the largest image)")
    prep.add_argument("--jpeg-quality", type=int, default=90)
    prep.add_argument("--write-mode", choices=("auto", "jpg", "raw", "proportion"), default="auto",
                      help="auto: raw pixels for images of <= 96 px, else JPEG")
    prep.add_argument("--workers", type=int, default=0, help="encoding processes (0: all cores)")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")
    prep.set_defaults(func=cmd_prepare)

    sh = sub.add_parser("shard", help="write Parquet shards (JPEG + label + index) for data.format=ray_data or parquet")
    _add_data_args(sh)
    sh.add_argument("--out", required=True, help="destination folder or URI (s3://, gs://, abfs://, file://)")
    sh.add_argument("--split", choices=SPLITS, default="all",
                    help="all/evaluate (default: training sees every shard, probes use a hold-out of them), "
                         "train or test")
    sh.add_argument("--rows-per-file", type=int, default=1000, help="images per shard file (default 1000)")
    sh.add_argument("--jpeg-quality", type=int, default=95)
    sh.add_argument("--no-progress", action="store_true", help="no progress bar")
    sh.set_defaults(func=cmd_shard)

    lt = sub.add_parser("longtail", help="write the seeded long-tailed index list of a CIFAR training split")
    lt.add_argument("--dataset", required=True, choices=LONGTAIL_DATASETS)
    lt.add_argument("--root", required=True)
    lt.add_argument("--ratio", type=float, default=10.0, help="largest / smallest class (default 10)")
    lt.add_argument("--seed", type=int, default=0, help="selection seed (the run's train.seed; default 0)")
    lt.add_argument("--out", required=True, help="output .npy of sorted row indices into the training split")
    lt.set_defaults(func=cmd_longtail)

    desc = sub.add_parser("describe", help="image counts per split and class")
    _add_data_args(desc)
    desc.add_argument("--per-class", action="store_true", help="per-class table even for many classes")
    desc.set_defaults(func=cmd_describe)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (UsageError, DataError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written at the destination", file=sys.stderr)
        return 130


if __name__ == "__main__":
    warnings.formatwarning = _one_line_warning  # bad-file reports as plain lines, without source lines
    sys.exit(main())
