"""Training-loader throughput: ours (torchvision-style, FFCV) vs stock torchvision v2, same two views.

    python benchmarks/loader_throughput.py [--quick] [--json results/loader_throughput.json]
                                           [--data-dir DIR] [--workers N] [--batch-size B]
                                           [--images-224 N] [--images-32 N]

Task: one epoch of two-view training batches, images/second, as ``engine/loop.py`` consumes them:
random resized crop + flip per view in the loader (uint8 ``B x 2 x 3 x R x R``), then
``BatchPhotometricAugment`` (colour jitter, grayscale, blur at >= 96 px, normalisation) on each view of the
batch - here on the CPU, in the training process (on a GPU it is a small part of a step).

Data (generated once and cached under ``--data-dir``, default ``$TMPDIR/nrcc_loader_bench``):

* ``224 px``: an image folder of 10,000 JPEGs (quality 90, 10 classes; 256 with ``--quick``) of smooth
  random colour fields with texture and noise (~15-20 KB each, about ImageNet's JPEG cost per pixel),
  trained at 224 px. The torchvision path decodes the files with PIL (``ImageFolderSource``); FFCV reads a
  .beton written from the same folder (JPEG, quality 90).
* ``32 px``: 50,000 in-memory images (CIFAR-sized; 1,600 with ``--quick``). The torchvision path crops
  the arrays; FFCV reads a raw-pixel .beton.

Loaders, all on the same ``--workers`` CPU cores (default: all), all producing the same two views:

* ``stock v2`` - the baseline a user would write: ``torchvision.datasets.ImageFolder`` (an in-memory
  ``Dataset`` over the same arrays for the 32 px set) decoding each file with ``torchvision.io.decode_image``
  to a uint8 tensor, ``transforms.v2`` ``RandomResizedCrop`` + ``RandomHorizontalFlip`` per view, in a
  standard ``torch.utils.data.DataLoader`` with ``--workers`` processes. With photometric augmentation the
  v2 ops (``ColorJitter`` p 0.8, ``RandomGrayscale`` 0.2, ``GaussianBlur`` p 0.5 at >= 96 px, same
  parameters as ``AugmentConfig``; then ``ToDtype`` + ``Normalize``) run per image *in the loader workers*,
  the usual torchvision recipe;
* ``ours (torchvision-style)`` - ``build_train_loader(loader=torchvision)``: PIL decode, our crop + flip,
  a DataLoader with ``--workers`` processes; the photometric part is ``BatchPhotometricAugment`` on each
  batch in the training process (``--torch-threads`` threads), as in training;
* ``ffcv`` - ``FFCVTrainLoader`` (decode each JPEG once, cut both crops; ``--workers`` numba threads), with
  the same ``BatchPhotometricAugment`` in the training process;
* ``ffcv per-view`` - FFCV's stock ``RandomResizedCropRGBImageDecoder`` pipelines, one per view (each view
  decodes the JPEG again). Full mode only.

The training process runs the photometric part with ``--torch-threads`` PyTorch threads (default 1, as a Ray
CPU worker with ``train.cpus_per_worker=1``; on an oversubscribed machine, more PyTorch threads than free
cores make these small batch ops orders of magnitude slower).

Columns: ``loader img/s`` (a whole epoch of batches, nothing else), ``with photometric img/s`` (batches
plus the photometric augmentation of both views, for 30 s of the next epoch, 4 s with ``--quick``),
``photometric alone img/s`` (the photometric ops alone, two views, one thread: our batch op on a ready
batch for our loaders, the v2 ops image by image for ``stock v2`` - the figure that decides which
implementation the project uses on a CPU), and ``x``, the ratios to ``stock v2``. The stock loader's
photometric work runs in its ``--workers`` processes while ours runs in the one training thread, so the
``with photometric`` column compares the two recipes as each is normally used, not equal CPU budgets.
The first batches of each epoch (worker start-up, numba compilation) are not timed. ``prepare s`` is the
one-off .beton write (blank when the cached file was reused). Measurements run the DataLoaders first, then
FFCV, so that no DataLoader forks its workers after FFCV's threads exist.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import parse_args, print_table, write_json

from nrcc_scale.config import AugmentConfig, DataConfig
from nrcc_scale.data.augment import BatchPhotometricAugment
from nrcc_scale.data.base import ArraySource, ImageSource
from nrcc_scale.data.ffcv_io import ffcv_available
from nrcc_scale.data.loaders import build_train_loader

NUM_CLASSES = 10
STOCK = "stock v2"
WARMUP_BATCHES = 1  # the first batch of an epoch carries worker start-up / numba compilation


# ----------------------------------------------------------------------------------------------------------
# Synthetic data
# ----------------------------------------------------------------------------------------------------------


def synthetic_image(seed: int, side: int) -> np.ndarray:
    """A smooth random colour field with some texture and noise (natural-image-like JPEG cost)."""
    import cv2

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (6, 6, 3)).astype(np.float32)
    field = cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, 1, (side // 4, side // 4, 3)).astype(np.float32)
    texture = cv2.resize(fine, (side, side), interpolation=cv2.INTER_LINEAR) * 20
    noise = rng.normal(0, 6, (side, side, 3)).astype(np.float32)
    return np.clip(field + texture + noise, 0, 255).astype(np.uint8)


def _write_jpeg(args: tuple[Path, int, int]) -> None:
    from PIL import Image

    path, seed, side = args
    Image.fromarray(synthetic_image(seed, side)).save(path, format="JPEG", quality=90)


def jpeg_folder(data_dir: Path, count: int, side: int = 224) -> Path:
    """``count`` JPEGs in ``NUM_CLASSES`` class folders, generated once (a ``.complete`` marker)."""
    root = data_dir / f"jpeg{side}_n{count}"
    if (root / ".complete").exists():
        return root
    jobs = []
    for i in range(count):
        folder = root / f"class{i % NUM_CLASSES:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"{i:06d}.jpg", i, side))
    started = time.perf_counter()
    with Pool(os.cpu_count()) as pool:
        pool.map(_write_jpeg, jobs, chunksize=64)
    (root / ".complete").write_text(f"{count} images\n")
    seconds = time.perf_counter() - started
    print(f"generated {count} JPEGs of {side} px under {root} in {seconds:.0f} s", flush=True)
    return root


def array_source(count: int, side: int = 32) -> ArraySource:
    images = np.stack([synthetic_image(i, side) for i in range(count)])
    return ArraySource(f"array{side}", images, np.arange(count) % NUM_CLASSES,
                       [f"class{i}" for i in range(NUM_CLASSES)])


def folder_source(root: Path) -> ImageSource:
    from nrcc_scale.data.registry import build_data

    cfg = DataConfig(dataset="image_folder", root=str(root), holdout_fraction=0.0)
    cfg.verify_files = "none"  # type: ignore[attr-defined] # generated files; skip the header pass
    return build_data(cfg).evaluate


def beton_for(source: ImageSource, path: Path, mode: str, workers: int) -> tuple[Path, float | None]:
    from nrcc_scale.data.ffcv_io import write_beton

    if path.exists():
        return path, None
    started = time.perf_counter()
    write_beton(source, path, write_mode=mode, jpeg_quality=90, num_workers=workers, progress=False)
    return path, time.perf_counter() - started


# ----------------------------------------------------------------------------------------------------------
# The stock torchvision baseline
# ----------------------------------------------------------------------------------------------------------


def decode_file(path: str) -> torch.Tensor:
    """ImageFolder's loader for the stock path: the file decoded straight to a ``3 x H x W`` uint8 tensor."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    return decode_image(read_file(path), mode=ImageReadMode.RGB)


def stock_transform(resolution: int, photometric: bool, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    """transforms.v2 per view on a uint8 tensor: the SimCLR recipe with ``AugmentConfig``'s parameters."""
    from torchvision.transforms import v2

    aug = AugmentConfig()
    ops: list[Any] = [v2.RandomResizedCrop(resolution, scale=(aug.crop_scale_min, aug.crop_scale_max),
                                           antialias=True),
                      v2.RandomHorizontalFlip(aug.flip_p)]
    if photometric:
        ops.append(v2.RandomApply([v2.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue)],
                                  p=aug.jitter_p))
        ops.append(v2.RandomGrayscale(aug.grayscale_p))
        if resolution >= 96:  # AugmentConfig.blur_p = None: blur at >= 96 px, SimCLR's 10% kernel
            kernel = max(3, int(0.1 * resolution) // 2 * 2 + 1)
            ops.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
        ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


class TwoViews:
    """The usual two-crop wrapper: the same transform applied twice, views stacked."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(image), self.transform(image)])


class ArrayImages(torch.utils.data.Dataset):
    """The in-memory 32 px set as a plain Dataset of uint8 ``3 x H x W`` tensors (CIFAR-style)."""

    def __init__(self, source: ImageSource, transform: Any) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.ascontiguousarray(self.source.image(index))).permute(2, 0, 1)
        return self.transform(image), int(self.source.labels[index])


class StockLoader:
    """A standard DataLoader (shuffle, drop_last) with a no-op ``set_epoch`` for the timing loop."""

    def __init__(self, dataset: Any, batch: int, workers: int) -> None:
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                                  drop_last=True)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self) -> Any:
        return iter(self.loader)


def stock_loader(case: Case, batch: int, workers: int, photometric: bool) -> StockLoader:
    transform = TwoViews(stock_transform(case.resolution, photometric, case.source.mean, case.source.std))
    if case.folder is not None:
        from torchvision.datasets import ImageFolder

        dataset = ImageFolder(str(case.folder), transform=transform, loader=decode_file)
    else:
        dataset = ArrayImages(case.source, transform)
    return StockLoader(dataset, batch, workers)


def stock_photometric_only(case: Case, batch: int, max_seconds: float) -> float:
    """Images per second of the v2 photometric ops alone, image by image, two views (one thread)."""
    transform = stock_transform(case.resolution, True, case.source.mean, case.source.std)
    photometric = transform.transforms[2:]  # drop crop and flip: the same ops as BatchPhotometricAugment
    from torchvision.transforms import v2

    ops = v2.Compose(photometric)
    views = torch.randint(0, 256, (batch, 3, case.resolution, case.resolution), dtype=torch.uint8)
    ops(views[0])
    images = 0
    started = time.perf_counter()
    while time.perf_counter() - started < max_seconds:
        for image in views:
            ops(image)
            ops(image)
            images += 1
    return images / (time.perf_counter() - started)


# ----------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------


def time_batches(loader, epoch: int, photometric: BatchPhotometricAugment | None = None,
                 max_seconds: float | None = None) -> tuple[float, int]:
    """Images per second over an epoch (or until ``max_seconds`` have passed) after ``WARMUP_BATCHES``
    untimed batches (worker start-up, numba compilation)."""
    loader.set_epoch(epoch)
    iterator = iter(loader)
    for _ in range(WARMUP_BATCHES):
        next(iterator)
    images = 0
    started = time.perf_counter()
    for batch in iterator:
        views = batch[0]
        if photometric is not None:
            for v in range(views.shape[1]):
                photometric(views[:, v])
        images += views.shape[0]
        if max_seconds is not None and time.perf_counter() - started >= max_seconds:
            break
    elapsed = time.perf_counter() - started
    del iterator  # stops the loader's workers / threads
    return images / max(elapsed, 1e-9), images


def photometric_only(photometric: BatchPhotometricAugment, batch: int, resolution: int,
                     max_seconds: float) -> float:
    """Images per second of the batch photometric augmentation alone (two views per image)."""
    views = torch.randint(0, 256, (batch, 2, 3, resolution, resolution), dtype=torch.uint8)
    photometric(views[:, 0])  # first-call overhead
    images = 0
    started = time.perf_counter()
    while time.perf_counter() - started < max_seconds:
        for v in range(2):
            photometric(views[:, v])
        images += batch
    return images / (time.perf_counter() - started)


@dataclass
class Case:
    """One data set: its source, .beton, resolution, and the photometric augmentation for it."""

    label: str
    source: ImageSource
    beton: Path
    resolution: int
    prepare_s: float | None
    folder: Path | None = None  # the image folder behind ``source`` (None: in-memory arrays)
    photometric: BatchPhotometricAugment | None = None
    photometric_alone: float = 0.0
    stock_photometric_alone: float = 0.0


def measure(case: Case, name: str, make_loader, seconds: float, make_aug_loader=None) -> dict[str, Any]:
    """Loader alone for an epoch, then with the photometric part: ours applies ``case.photometric`` to the
    batches; the stock path (``make_aug_loader``) has the photometric ops inside its workers instead."""
    started = time.perf_counter()
    loader = make_loader()
    loader_only, counted = time_batches(loader, epoch=0)
    if make_aug_loader is None:
        with_aug, counted_aug = time_batches(loader, epoch=1, photometric=case.photometric, max_seconds=seconds)
        alone = case.photometric_alone
    else:
        del loader
        with_aug, counted_aug = time_batches(make_aug_loader(), epoch=1, max_seconds=seconds)
        alone = case.stock_photometric_alone
    print(f"  {case.label}, {name}: {loader_only:.0f} img/s loader ({counted} images), {with_aug:.1f} img/s "
          f"with photometric ({counted_aug} images); {time.perf_counter() - started:.0f} s", flush=True)
    return {"set": case.label, "loader": name, "loader img/s": loader_only, "with photometric img/s": with_aug,
            "photometric alone img/s": alone, "images": counted,
            "images with photometric": counted_aug, "prepare s": case.prepare_s}


def run_all(cases: list[Case], batch: int, workers: int, torch_threads: int, per_view: bool,
            seconds: float) -> list[dict[str, Any]]:
    """torchvision first for every set (its DataLoader forks worker processes, which should not happen
    after FFCV's numba threads exist), then FFCV."""
    from nrcc_scale.data.ffcv_loader import FFCVTrainLoader

    device = torch.device("cpu")
    torch.set_num_threads(torch_threads)
    for case in cases:
        case.photometric = BatchPhotometricAugment(AugmentConfig(), case.source.mean, case.source.std,
                                                   case.resolution)
        case.photometric_alone = photometric_only(case.photometric, batch, case.resolution, seconds / 2)
        case.stock_photometric_alone = stock_photometric_only(case, batch, seconds / 2)
        print(f"{case.label}: {len(case.source)} images, batch {batch}, {workers} core(s); photometric alone "
              f"(two views, one thread): ours {case.photometric_alone:.1f} img/s, torchvision v2 per image "
              f"{case.stock_photometric_alone:.1f} img/s", flush=True)
    tv_cfg = DataConfig(dataset="image_folder", loader="torchvision", loader_workers=workers)
    rows = []
    for case in cases:
        rows.append(measure(case, STOCK, lambda c=case: stock_loader(c, batch, workers, False), seconds,
                            make_aug_loader=lambda c=case: stock_loader(c, batch, workers, True)))
        rows.append(measure(case, "ours (torchvision-style)", lambda c=case: build_train_loader(
            tv_cfg, c.source, c.resolution, 2, batch, 0, 1, 0, device), seconds))
    modes = [("ffcv", "once")] + ([("ffcv per-view", "per_view")] if per_view else [])
    for name, mode in modes:
        for case in cases:
            cfg = DataConfig(dataset="image_folder", loader="ffcv", beton=str(case.beton), loader_workers=workers)
            rows.append(measure(case, name, lambda c=case, f=cfg, m=mode: FFCVTrainLoader(
                f, c.resolution, 2, batch, 0, 1, 0, device, decode=m), seconds))
    for row in rows:
        base = next(r for r in rows if r["set"] == row["set"] and r["loader"] == STOCK)
        row["loader x"] = row["loader img/s"] / base["loader img/s"]
        row["with photometric x"] = row["with photometric img/s"] / base["with photometric img/s"]
        row["photometric alone x"] = row["photometric alone img/s"] / base["photometric alone img/s"]
    return sorted(rows, key=lambda r: [c.label for c in cases].index(r["set"]))


def _quiet_numba_finalizer(unraisable, _default=sys.unraisablehook) -> None:
    """numba's dispatcher finalizer raises a harmless KeyError when FFCV's compiled code is collected."""
    frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
    if isinstance(unraisable.exc_value, KeyError) and any("numba" in f.filename for f in frames):
        return
    _default(unraisable)


def main() -> None:
    def add(parser) -> None:
        parser.add_argument("--data-dir", type=Path,
                            default=Path(tempfile.gettempdir()) / "nrcc_loader_bench",
                            help="where the generated images and .beton files are cached")
        parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                            help="CPU cores for each loader (DataLoader processes / FFCV threads)")
        parser.add_argument("--batch-size", type=int, default=None, help="per batch (default 256; 16 with --quick)")
        parser.add_argument("--images-224", type=int, default=None,
                            help="JPEGs in the 224 px folder (default 10,000; 256 with --quick)")
        parser.add_argument("--images-32", type=int, default=None,
                            help="in-memory 32 px images (default 50,000; 1,600 with --quick)")
        parser.add_argument("--torch-threads", type=int, default=1,
                            help="PyTorch threads of the training process, which runs the photometric part "
                                 "(default 1, as a Ray CPU worker with train.cpus_per_worker=1)")

    args = parse_args(__doc__.split("\n")[0], add)
    sys.unraisablehook = _quiet_numba_finalizer
    if not ffcv_available():
        raise SystemExit("ffcv is not importable; this benchmark compares it with the torchvision loader")
    quick = args.quick
    batch = args.batch_size or (16 if quick else 256)
    n224, n32 = (256, 1600) if quick else (10_000, 50_000)
    n224, n32 = args.images_224 or n224, args.images_32 or n32
    seconds = 4.0 if quick else 30.0  # time spent measuring each loader with the photometric part
    args.data_dir.mkdir(parents=True, exist_ok=True)

    folder = jpeg_folder(args.data_dir, n224)
    src224 = folder_source(folder)
    beton224, prep224 = beton_for(src224, args.data_dir / f"jpeg224_n{n224}.beton", "jpg", args.workers)
    src32 = array_source(n32)
    beton32, prep32 = beton_for(src32, args.data_dir / f"array32_n{n32}.beton", "raw", args.workers)
    cases = [Case("224 px JPEG", src224, beton224, 224, prep224, folder=folder),
             Case("32 px arrays", src32, beton32, 32, prep32)]
    rows = run_all(cases, batch, args.workers, args.torch_threads, per_view=not quick, seconds=seconds)

    columns = ["set", "loader", "loader img/s", "loader x", "with photometric img/s", "with photometric x",
               "photometric alone img/s", "photometric alone x", "prepare s"]
    title = (f"Loader throughput, two views, batch {batch}, {args.workers} CPU core(s) "
             "(x = ratio to stock torchvision v2)")
    print_table(rows, columns, title=title, floatfmt="{:.3g}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None:
        print(f"load average during the run: {load:.1f} on {os.cpu_count()} cores")
    if args.json:
        write_json(args.json, {"benchmark": "loader_throughput", "quick": quick, "batch_size": batch,
                               "photometric_seconds": seconds, "torch_threads": args.torch_threads,
                               "workers": args.workers, "images_224": n224, "images_32": n32,
                               "load_average": load, "rows": rows,
                               "report": _report(rows, columns, batch, args.workers, load)})


def _report(rows: list[dict[str, Any]], columns: list[str], batch: int, workers: int,
            load: float | None) -> dict[str, Any]:
    notes = [f"Batch {batch}, two views, {workers} worker(s) for every loader; x = ratio to stock torchvision "
             "v2 (DataLoader over ImageFolder, decode_image + v2 ops on uint8 tensors).",
             "stock v2 runs its photometric ops per image in its worker processes; ours and FFCV run "
             "BatchPhotometricAugment on whole batches in the one training thread.",
             f"The 2-core machine was shared with other work (load average {load:.1f})" if load is not None
             else "The machine was shared with other work."]
    for r in rows:
        if r["loader"] == STOCK:
            continue
        for col in ("loader", "with photometric"):
            if r[f"{col} x"] < 1.0:
                notes.append(f"stock v2 wins on {r['set']} ({col}): {r['loader']} runs at {r[f'{col} x']:.2f}x")
    return {"title": "Training loader throughput vs stock torchvision v2", "columns": columns,
            "rows": [{c: r.get(c) for c in columns} for r in rows], "notes": notes, "plots": []}


if __name__ == "__main__":
    main()
