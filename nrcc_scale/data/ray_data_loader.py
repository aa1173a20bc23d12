"""``data.format: ray_data``: training batches streamed from Parquet shards by Ray Data.

Where each step runs:

* **driver** (:func:`build_train_dataset`): ``ray.data.read_parquet`` over the shard files listed in the
  manifest, through the project's ``pyarrow.fs`` handling (:mod:`nrcc_scale.utils.remote_fs`, so ``s3://``,
  ``gs://``, ``abfs://`` and local paths all work) with a seeded per-epoch file shuffle, then a
  ``map_batches`` that decodes and crops. The dataset goes to the TorchTrainer as ``datasets={"train": ds}`` with
  :func:`train_data_config`; Ray Train splits it between the workers with ``streaming_split(equal=True)``.
* **Ray Data tasks** (:func:`decode_views`, on any CPU of the cluster, not the training workers'): each JPEG
  is decoded once and its V crops are cut from it by the same :class:`~nrcc_scale.data.augment.SpatialAugment`
  with the same random draws as the folder and ``parquet`` loaders (a generator seeded by
  (seed, epoch, sample id)), so a sample's crops in an epoch are identical to theirs. ``data.on_bad_file``
  applies as for the other formats (``skip`` hands out a neighbouring image of the same batch).
* **training worker** (:class:`RayDataTrainLoader`): ``ray.train.get_dataset_shard("train")`` ->
  ``iter_torch_batches`` with a local shuffle buffer seeded by (seed, epoch, rank); the photometric half of
  the augmentation then runs on the device as for every loader.

Epochs and seeds. Every ``iter_torch_batches`` call is one execution of the dataset, and Ray Data counts
executions in ``DataContext._execution_idx``; the driver starts that counter at the run's first epoch
(0, or the epoch a resumed run continues with), so execution k of a run is epoch ``start + k``. That
counter reaches the Ray Data tasks, which therefore know the epoch: the read's
``FileShuffleConfig(seed, reseed_after_execution=True)`` draws epoch e's file order from (seed, e), and the
crops use (seed, e, sample). (Not ``randomize_block_order``: it is an all-to-all step that waits until
every file has been read, which holds the whole set in the object store and delays the first batch; the
data_paths benchmark showed 7.6 s of an 8 s epoch before the first batch with it.) Rows of one file stay
together apart from the local shuffle buffer, so shards should hold no more rows than
``data.shuffle_buffer`` times a few (``nrcc_scale.data shard --rows-per-file``, default 1000).
``_execution_idx`` is a private attribute of Ray 2.60 (used with a guard); a
batch carries the epoch its crops were cut for, and a worker whose epoch disagrees (Ray Train restarted the
worker group inside a run, which starts a new split from the driver's counter) prints one warning.

Exactly once, and what is not deterministic. ``streaming_split(equal=True)`` gives every worker the same
number of rows and every row to at most one worker; it drops ``N mod world_size`` rows per epoch (the same
count that ``DistributedSampler(drop_last=True)`` and ``data.format: parquet`` drop), and each worker then
drops its last partial batch, as every loader here does. Which rows go to which worker is decided at run time
by which worker asks for the next block first, and Ray Data tasks finish in any order, so the order a worker
sees is *not* a function of (seed, epoch): two runs with the same seed see different row->worker
assignments and orders. The crops of a sample in an epoch, the epoch's file order and the shuffle buffer's
seeds are. Users who need a bitwise-reproducible order (an exact resume) use ``data.format: parquet``.

CPUs. Ray Data's read and map tasks need CPUs that the training workers do not hold; with none free they
wait forever (the hang seen on Ray 2.60 with 2 workers on a 2-CPU local Ray). A local Ray started by
``python -m nrcc_scale.train`` therefore gets ``ray.data_cpus`` extra logical CPUs for them, and
:func:`check_data_cpus` refuses, before any worker starts, a local Ray whose CPUs are all taken by the
training workers (``train.num_workers * train.cpus_per_worker``). On a joined cluster the nodes must
leave CPUs free (docs/scaling.md, "CPUs for Ray Data").
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nrcc_scale.config import Config, ConfigError, DataConfig
from nrcc_scale.data.augment import SpatialAugment
from nrcc_scale.data.base import DataError
from nrcc_scale.data.parquet_shards import BadImagePolicy, Manifest, read_manifest
from nrcc_scale.utils import remote_fs

#: rows per ``map_batches`` call (one Ray Data task decodes and crops this many images)
DECODE_BATCH = 64


def shuffle_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of worker ``rank``'s local shuffle buffer in ``epoch`` (a 32-bit int, as Ray Data wants)."""
    return int(np.random.default_rng([seed, epoch, rank, 0x5A11]).integers(2**31 - 1))


def current_execution() -> int:
    """Ray Data's execution counter of the running dataset (= the epoch, see the module docstring)."""
    import ray.data

    return int(getattr(ray.data.DataContext.get_current(), "_execution_idx", 0))


def decode_views(batch: dict[str, np.ndarray], *, seed: int, resolution: int, scale: tuple[float, float],
                 flip_p: float, num_views: int, on_bad_file: str, uris: dict[str, str]) -> dict[str, np.ndarray]:
    """A Ray Data ``map_batches`` function: JPEG bytes -> ``B x V x 3 x R x R`` uint8 crops, each image decoded
    once; the crops of sample i in epoch e are drawn from ``default_rng([seed, e, i])`` as in every loader.
    ``uris`` maps Ray Data's ``path`` column (the filesystem path) to the shard's URI, for error messages."""
    epoch = current_execution()
    spatial = SpatialAugment(resolution, scale, flip_p)
    policy = BadImagePolicy(on_bad_file)
    blobs = list(batch["image"])
    ids = batch["index"].astype(np.int64)
    paths = [uris.get(str(p), str(p)) for p in batch["path"]] if "path" in batch else [""] * len(ids)
    views = np.empty((len(ids), num_views, 3, resolution, resolution), np.uint8)
    with warnings.catch_warnings():  # `skip` warns once per batch here: forward it as a plain print
        warnings.simplefilter("ignore")
        for j, sample in enumerate(ids):
            image = policy.decode(blobs, j, paths[j], int(sample))
            rng = np.random.default_rng([seed, epoch, int(sample)])
            views[j] = torch.stack([spatial(image, rng) for _ in range(num_views)]).numpy()
    if policy.warned:
        print(f"warning: corrupt image bytes in {', '.join(sorted(policy.warned))}; replaced by neighbouring "
              f"images (data.on_bad_file=skip)", flush=True)
    return {"views": views, "label": batch["label"].astype(np.int64), "index": ids,
            "epoch": np.full(len(ids), epoch, np.int64)}


def views_per_sample(cfg: Config) -> int:
    """How many crops the training loop asks for (engine/loop.py: ``method.needs_third_view``); the workers
    check that the stream's count agrees."""
    return 3 if cfg.uses_nrcc and cfg.method.nrcc.negatives == "augment" else 2


def build_train_dataset(cfg: Config, manifest: Manifest | None = None, start_epoch: int = 0) -> Any:
    """The training ``ray.data.Dataset`` (driver side; see the module docstring). ``start_epoch`` is the
    epoch the run begins with (a resumed run's next epoch)."""
    import ray.data

    d, seed = cfg.data, cfg.train.seed
    manifest = manifest or read_manifest(d.root)
    fs, _ = remote_fs.filesystem(manifest.uri)
    uris = {remote_fs.filesystem(manifest.file_uri(k))[1]: manifest.file_uri(k) for k in range(len(manifest.files))}
    paths = list(uris)
    resolution = d.resolution or manifest.native_resolution  # the rule of registry.training_resolution
    # the shard files in a new order every epoch, drawn from (seed, epoch); a file-level shuffle keeps the
    # read streaming (randomize_block_order is an all-to-all step: it waits until every file has been read,
    # so the whole set would sit in the object store before the first batch)
    shuffle = ray.data.FileShuffleConfig(seed=seed, reseed_after_execution=True)
    ds = ray.data.read_parquet(paths, filesystem=fs, include_paths=True, file_extensions=["parquet"],
                               shuffle=shuffle)
    ds = ds.map_batches(decode_views, batch_size=DECODE_BATCH, batch_format="numpy", zero_copy_batch=True,
                        fn_kwargs={"seed": seed, "resolution": resolution,
                                   "scale": (d.augment.crop_scale_min, d.augment.crop_scale_max),
                                   "flip_p": d.augment.flip_p, "num_views": views_per_sample(cfg),
                                   "on_bad_file": d.on_bad_file, "uris": uris})
    context = ds.context
    context.enable_progress_bars = False  # one bar per operator per epoch would flood the run's log
    # blocks of about one decode batch of crops: with Ray Data's default (128 MiB) a decode task hands over
    # its crops only when it has finished its whole input file, and the first batch of an epoch waited for
    # nearly the whole epoch (3000 images at 128 px on 2 CPUs: 7.7 s of 7.8 s; with this, 2.4 s of 5.9 s)
    context.target_max_block_size = max(1 << 20, DECODE_BATCH * views_per_sample(cfg) * 3 * resolution ** 2)
    if hasattr(context, "_execution_idx"):
        context._execution_idx = int(start_epoch)
    return ds


def train_data_config() -> Any:
    """Ray Train's DataConfig for the run: split only the training set between the workers (its default
    ingest options keep Ray Data off the CPUs reserved for the training workers)."""
    import ray.train

    return ray.train.DataConfig(datasets_to_split=["train"])


def check_data_cpus(cfg: Config) -> None:
    """Refuse, before any worker starts, a local Ray whose CPUs the training workers take entirely: Ray
    Data's tasks would wait for a CPU forever. Call after ``ray.init``. A joined cluster (``ray.address`` or
    ``RAY_ADDRESS``) is not checked: an autoscaling one may have no CPUs yet (the templates' head has
    ``CPU: 0`` and the worker nodes come on demand)."""
    import os

    import ray

    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        return
    total = ray.cluster_resources().get("CPU", 0)
    training = cfg.train.num_workers * cfg.train.cpus_per_worker
    if total - training < 1:
        raise ConfigError(f"data.format = 'ray_data' needs at least one CPU beyond the training workers' "
                          f"{training} (train.num_workers * train.cpus_per_worker), but the Ray cluster has "
                          f"{total:.0f}: set ray.data_cpus >= 1 (extra logical CPUs for Ray Data), lower "
                          f"train.cpus_per_worker, or use data.format=parquet")


def resume_epoch(storage: str, name: str) -> int:
    """The epoch a run of this name continues with (0 for a new run). Local storage only: for a cloud
    ``storage_path`` it is 0, and a resumed run's block order and crops restart from epoch 0's seeds."""
    if "://" in storage:
        return 0
    from nrcc_scale.engine.checkpoint import find_latest_checkpoint

    latest = find_latest_checkpoint(Path(storage) / name)
    if latest is None:
        return 0
    try:
        return int(latest.name.rsplit("_", 1)[1])  # checkpoint_<epochs done>
    except (IndexError, ValueError):
        return 0


def data_error_in(err: BaseException) -> DataError | None:
    """The DataError (e.g. corrupt bytes under ``on_bad_file=fail``) that a Ray Data task raised, from the
    error the worker's iterator gets: Ray Data wraps it in ``UserCodeException``/``RayTaskError``, which keep
    only its traceback text, so the one-line message is recovered from ``DataError: <message>`` there."""
    from nrcc_scale.data.preflight import find_data_error

    found = find_data_error(err)
    if found is not None:
        return found
    match = re.search(r"DataError: (.+)", str(err))
    return DataError(match.group(1).strip()) if match else None


class RayDataTrainLoader:
    """This worker's share of the Ray Data stream (``ray.train.get_dataset_shard("train")``), with the
    interface of the other training loaders (see the module docstring)."""

    def __init__(self, cfg: DataConfig, num_rows: int, num_views: int, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shard: Any = None) -> None:
        if shard is None:
            import ray.train

            try:
                shard = ray.train.get_dataset_shard("train")
            except Exception as err:  # noqa: BLE001 - outside Ray Train, or no dataset passed
                raise ConfigError("data.format = 'ray_data' runs inside Ray Train only (python -m "
                                  "nrcc_scale.train without --no-ray); use data.format=parquet in-process") \
                    from err
            if shard is None:
                raise ConfigError("data.format = 'ray_data': the trainer was built without the training "
                                  "dataset (datasets={'train': ...})")
        self.shard = shard
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.batch_size, self.num_views = batch_size, num_views
        self.shuffle_buffer = cfg.shuffle_buffer
        self.per_worker = num_rows // world_size  # streaming_split(equal=True) drops num_rows mod world_size
        self.epoch = 0
        self._warned_epoch = False
        if self.per_worker < batch_size:
            raise DataError(f"{cfg.root}: {num_rows} images give each of {world_size} worker(s) "
                            f"{self.per_worker}, fewer than one batch of {batch_size}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.per_worker // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        try:
            yield from self._batches()
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - a DataError in a Ray Data task arrives wrapped, as text
            data_error = data_error_in(err)
            if data_error is None:
                raise
            raise data_error from None

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        shuffle = {"local_shuffle_buffer_size": self.shuffle_buffer,
                   "local_shuffle_seed": shuffle_seed(self.seed, self.epoch, self.rank)} if self.shuffle_buffer else {}
        batches = len(self)
        # the whole epoch is consumed even past `batches` full batches, so that the next epoch's execution
        # starts from a finished one (Ray Data counts an execution when its stream is exhausted)
        for batch in self.shard.iter_torch_batches(batch_size=self.batch_size, drop_last=True,
                                                   dtypes={"views": torch.uint8, "label": torch.int64,
                                                           "index": torch.int64, "epoch": torch.int64},
                                                   **shuffle):
            if batches == 0:
                continue
            if batch["views"].shape[1] != self.num_views:
                raise RuntimeError(f"Ray Data cut {batch['views'].shape[1]} views per image but the method "
                                   f"needs {self.num_views}: ray_data_loader.views_per_sample disagrees with "
                                   f"the method's needs_third_view")
            data_epoch = int(batch["epoch"][0])
            if data_epoch != self.epoch and not self._warned_epoch:
                self._warned_epoch = True
                print(f"warning: worker {self.rank}: Ray Data cut epoch {self.epoch + 1}'s crops with epoch "
                      f"{data_epoch + 1}'s seeds (the worker group was restarted inside the run); training "
                      f"goes on, with a different but still random order", flush=True)
            batches -= 1
            yield batch["views"], batch["label"], batch["index"]
