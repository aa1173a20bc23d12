"""Where the training loop runs: in this process, or inside a Ray Train worker.

The loop only asks its context for rank, world size and device, for the checkpoint to resume from, and
to report metrics (with this worker's checkpoint folder); nothing in the loop imports Ray.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from nrcc_scale.engine.checkpoint import checkpoint_name, find_latest_checkpoint, list_checkpoints
from nrcc_scale.utils.files import atomic_directory


class RunContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    run_dir: Path | None = None  # local run folder (for logs) when storage is a local path

    def latest_checkpoint(self) -> Path | None:
        raise NotImplementedError

    @contextmanager
    def checkpoint_to_report(self, epoch: int) -> Iterator[Path]:
        """A scratch folder for this worker's part of the checkpoint at ``epoch``."""
        tmp = Path(tempfile.mkdtemp(prefix=f"nrcc-ckpt-{epoch}-"))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def report(self, metrics: dict[str, Any], epoch: int, checkpoint_dir: Path | None) -> None:
        raise NotImplementedError


class LocalContext(RunContext):
    """One process (``--no-ray``): checkpoints go to ``<run_dir>/checkpoints/checkpoint_<epoch>``."""

    def __init__(self, run_dir: Path, device: torch.device, keep: int = 2) -> None:
        self.run_dir = run_dir
        self.device = device
        self.keep = keep
        self.history: list[dict[str, Any]] = []

    def latest_checkpoint(self) -> Path | None:
        return find_latest_checkpoint(self.run_dir)

    def report(self, metrics: dict[str, Any], epoch: int, checkpoint_dir: Path | None) -> None:
        self.history.append(metrics)
        if checkpoint_dir is None:
            return
        folder = self.run_dir / "checkpoints"
        with atomic_directory(folder / checkpoint_name(epoch)) as tmp:
            for item in checkpoint_dir.iterdir():
                shutil.copy2(item, tmp / item.name)
        for old in list_checkpoints(folder)[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)


class RayContext(RunContext):
    """Inside a Ray Train worker: rank and device from Ray, checkpoints persisted by Ray to
    ``storage_path/name/checkpoint_<epoch>`` (every worker's files merged into one folder)."""

    def __init__(self, run_dir: Path | None) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.run_dir = run_dir
        self._ray_train = ray.train

    def latest_checkpoint(self) -> Path | None:
        checkpoint = self._ray_train.get_checkpoint()
        if checkpoint is None:
            return None
        # Copy to a local folder we own: as_directory() may hand out a path that is removed afterwards.
        local = Path(tempfile.mkdtemp(prefix="nrcc-resume-"))
        checkpoint.to_directory(str(local))
        return local

    def report(self, metrics: dict[str, Any], epoch: int, checkpoint_dir: Path | None) -> None:
        checkpoint = None
        if checkpoint_dir is not None:
            checkpoint = self._ray_train.Checkpoint.from_directory(str(checkpoint_dir))
        self._ray_train.report(metrics, checkpoint=checkpoint,
                               checkpoint_dir_name=checkpoint_name(epoch) if checkpoint else None)
