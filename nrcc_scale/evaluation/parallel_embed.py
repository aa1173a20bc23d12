"""Embed a whole data set from a checkpoint with Ray tasks, shard by shard, every sample exactly once.

The rows of the evaluation set are cut into contiguous shards; each Ray task loads the checkpoint, embeds
its rows and writes ``shards/shard_<k>.npz`` (sample index, label, embedding) atomically. The driver
then reads the shards and checks that the indices are exactly 0..N-1, each once: the reference code's
padded distributed sampler duplicated samples and averaged them; here a lost or duplicated sample is an
error, not an average. A shard already on disk (from an interrupted run) is reused.

On a cluster with GPUs each task asks Ray for a share of one GPU (at most ``MAX_TASKS_PER_GPU`` tasks per
GPU) and embeds on the device Ray assigned to it (Ray sets ``CUDA_VISIBLE_DEVICES`` for such a task, so it
is ``cuda:0`` inside the task). Without GPUs the tasks ask for none and run on the CPU: Ray does not hide
the GPUs from a task that asked for none, and every such task would otherwise pile onto ``cuda:0``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nrcc_scale.evaluation.embed import Embeddings

log = logging.getLogger("nrcc_scale.evaluate")

#: Embedding tasks sharing one GPU at a time (each holds a model and a batch in GPU memory).
MAX_TASKS_PER_GPU = 4


def gpu_share(num_shards: int, num_gpus: float) -> float:
    """The GPU fraction each task asks for: 0 without GPUs; else enough tasks per GPU to use every GPU
    (up to :data:`MAX_TASKS_PER_GPU`), as a fraction Ray accepts (1/m for an integer m)."""
    if num_gpus <= 0:
        return 0.0
    per_gpu = max(1, min(MAX_TASKS_PER_GPU, math.ceil(num_shards / num_gpus)))
    return 1.0 / per_gpu


def task_device(use_gpu: bool | None) -> torch.device:
    """The device of one embedding task: the GPU Ray assigned (``use_gpu=True``), the CPU (``False``), or,
    outside Ray (``None``), CUDA when available."""
    if use_gpu is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not use_gpu:
        return torch.device("cpu")
    import ray

    if not ray.get_gpu_ids():
        raise RuntimeError("embedding task asked for a GPU but Ray assigned none to it")
    return torch.device("cuda", 0)  # Ray restricted CUDA_VISIBLE_DEVICES to the assigned GPU


def shard_bounds(n: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges covering 0..n-1, sizes differing by at most one."""
    num_shards = max(1, min(num_shards, n))
    edges = np.linspace(0, n, num_shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def embed_shard(checkpoint: str, start: int, stop: int, out_path: str, batch_size: int,
                use_gpu: bool | None = None) -> str:
    """One task: embed rows [start, stop) of the checkpoint's evaluation set into ``out_path``."""
    from nrcc_scale.data.registry import build_data
    from nrcc_scale.evaluation.checkpoint_eval import load_trained
    from nrcc_scale.evaluation.embed import embed_source
    from nrcc_scale.utils.files import atomic_path

    device = task_device(use_gpu)
    trained = load_trained(Path(checkpoint), device)
    data = build_data(trained.cfg.data, seed=trained.cfg.train.seed)
    emb = embed_source(trained.method.embedding_model(), data.evaluate, trained.resolution, device, batch_size,
                       indices=np.arange(start, stop))
    with atomic_path(out_path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, indices=emb.indices, labels=emb.labels, features=emb.features)
    return out_path


def merge_shards(paths: list[Path], n: int) -> Embeddings:
    parts = [np.load(p) for p in paths]
    indices = np.concatenate([p["indices"] for p in parts])
    order = np.argsort(indices, kind="stable")
    indices = indices[order]
    if len(indices) != n or not np.array_equal(indices, np.arange(n)):
        counts = np.bincount(indices, minlength=n)
        raise RuntimeError(f"embedding shards cover {len(indices)} rows for {n} samples: "
                           f"{int((counts == 0).sum())} missing, {int((counts > 1).sum())} duplicated")
    features = np.concatenate([p["features"] for p in parts])[order]
    labels = np.concatenate([p["labels"] for p in parts])[order]
    return Embeddings(features, labels, indices)


def embed_with_ray(checkpoint: Path, num_samples: int, out_dir: Path, num_shards: int, batch_size: int = 512,
                   gpus_per_task: float | None = None, task: Any = embed_shard,
                   task_kwargs: dict[str, Any] | None = None) -> Embeddings:
    """Run :func:`embed_shard` (or ``task``, same positional arguments plus ``use_gpu`` and ``task_kwargs``:
    e.g. the images of ``python -m nrcc_scale.assign``) as Ray tasks (Ray must be initialised) and merge the
    shards. ``gpus_per_task``: None = :func:`gpu_share` of the cluster's GPUs (0 on a CPU cluster)."""
    import ray
    from tqdm.auto import tqdm

    shard_dir = out_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    if gpus_per_task is None:
        gpus_per_task = gpu_share(num_shards, float(ray.cluster_resources().get("GPU", 0)))
    use_gpu = gpus_per_task > 0
    log.info("stage embed: backend %s (Ray tasks with %s GPU each)", "torch-cuda" if use_gpu else "torch-cpu",
             f"{gpus_per_task:g}")
    remote = ray.remote(num_cpus=1, num_gpus=gpus_per_task)(task)
    bounds = shard_bounds(num_samples, num_shards)
    paths = [shard_dir / f"shard_{k:05d}_{a}_{b}.npz" for k, (a, b) in enumerate(bounds)]
    pending = [remote.remote(str(checkpoint), a, b, str(p), batch_size, use_gpu=use_gpu, **(task_kwargs or {}))
               for (a, b), p in zip(bounds, paths, strict=True) if not p.is_file()]
    with tqdm(total=len(bounds), desc="embed (Ray)", initial=len(bounds) - len(pending)) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
            bar.update(len(done))
    log.info("embedded %d samples in %d Ray tasks", num_samples, len(bounds))
    return merge_shards(paths, num_samples)
