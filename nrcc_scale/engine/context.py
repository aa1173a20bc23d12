"""Where the training loop runs: in this process, or inside a Ray Train worker.

The loop only asks its context for rank, world size and device, for the checkpoint to resume from, for a
folder to write this worker's part of a checkpoint into, and to report metrics (with that folder); nothing
in the loop imports Ray. Reporting also feeds the experiment trackers (:class:`EpochLogger`: TensorBoard,
MLflow when installed) from rank 0.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from nrcc_scale.engine.checkpoint import checkpoint_name, find_latest_checkpoint, list_checkpoints
from nrcc_scale.utils.files import atomic_directory

TENSORBOARD_DIR = "tensorboard"
RUN_DIR_TAG = "nrcc_scale.run_dir"  # MLflow tag: the run folder a training run writes (finds it on resume)


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics dict (trackers take scalars; reports also carry strings, lists)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


class EpochLogger:
    """Per-epoch scalars to TensorBoard (``<run_dir>/tensorboard``, tensorboardX) and, when the ``mlflow``
    package is importable and ``MLFLOW_TRACKING_URI`` is set, to MLflow.

    Ray Train V2 takes no logger callbacks (Ray Tune's ``TBXLoggerCallback`` and ``MLflowLoggerCallback``
    only see Tune trials), so training runs log from rank 0 here; :mod:`nrcc_scale.tune` adds Tune's
    callbacks for sweeps. MLflow is opt-in through the environment so that no run writes an ``mlruns``
    folder into whatever directory it was started from, and credentials stay in MLflow's own variables
    (``MLFLOW_TRACKING_TOKEN``...), never in a config file. Each writer is flushed every epoch: a Ray worker
    can be killed without running any exit handler.
    """

    def __init__(self, run_dir: Path | None, run_name: str = "") -> None:
        self._tb: Any = None
        self._mlflow: Any = None
        if run_dir is not None:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                pass
            else:
                # a unique suffix: tensorboardX names files by the second, and a resumed attempt that starts
                # within the same second would otherwise truncate the previous attempt's events
                self._tb = SummaryWriter(str(run_dir / TENSORBOARD_DIR), flush_secs=30,
                                         filename_suffix=f".{uuid.uuid4().hex[:8]}")
        if os.environ.get("MLFLOW_TRACKING_URI"):
            try:
                import mlflow
            except ImportError:
                mlflow = None
            if mlflow is not None:
                self._mlflow = mlflow
                self._start_mlflow_run(run_dir, run_name)

    def _start_mlflow_run(self, run_dir: Path | None, run_name: str) -> None:
        """A new MLflow run (in ``MLFLOW_EXPERIMENT_NAME``'s experiment, else MLflow's default), or, when a
        run for the same run folder exists (a resumed training), that run continued: its metric history
        stays one series over epochs instead of one MLflow run per attempt."""
        mlflow = self._mlflow
        tags = {RUN_DIR_TAG: str(run_dir)} if run_dir is not None else {}
        if run_dir is not None:
            # MLflow's filter strings have no escapes: quote with whichever quote the path lacks
            quote = "'" if "'" not in str(run_dir) else '"'
            previous = [] if quote in str(run_dir) else mlflow.search_runs(
                filter_string=f"tags.`{RUN_DIR_TAG}` = {quote}{run_dir}{quote}",
                order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
            if previous:
                mlflow.start_run(run_id=previous[0].info.run_id)
                return
        mlflow.start_run(run_name=run_name or None, tags=tags)

    def log(self, metrics: dict[str, Any], epoch: int) -> None:
        values = numeric_metrics(metrics)
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"train/{key}", value, global_step=epoch)
            self._tb.flush()
        if self._mlflow is not None:
            self._mlflow.log_metrics(values, step=epoch)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._mlflow is not None:
            self._mlflow.end_run()
            self._mlflow = None


class RunContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    run_dir: Path | None = None  # local run folder (for logs) when storage is a local path
    resumed_from: str | None = None  # where latest_checkpoint() found the checkpoint (storage path or URI)
    _logger: EpochLogger | None = None

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

    def release(self, checkpoint: Path) -> None:
        """The loop has read ``checkpoint`` (from :meth:`latest_checkpoint`) and no longer needs it."""

    def log_epoch(self, metrics: dict[str, Any], epoch: int) -> None:
        """Rank 0 sends the epoch's metrics to the trackers (created on first use)."""
        if self.rank != 0:
            return
        if self._logger is None:
            self._logger = EpochLogger(self.run_dir, self.run_dir.name if self.run_dir else "")
        self._logger.log(metrics, epoch)

    def close(self) -> None:
        if self._logger is not None:
            self._logger.close()
            self._logger = None


class LocalContext(RunContext):
    """One process (``--no-ray``): checkpoints go to ``<run_dir>/checkpoints/checkpoint_<epoch>``.

    The loop writes straight into a temporary folder beside the final one, renamed into place only when
    every file is complete: a kill during the save leaves a ``.checkpoint_<epoch>.*.tmp`` folder that no
    reader takes for a checkpoint, and the previous checkpoint is still the latest.
    """

    def __init__(self, run_dir: Path, device: torch.device, keep: int = 2) -> None:
        self.run_dir = run_dir
        self.device = device
        self.keep = keep
        self.history: list[dict[str, Any]] = []

    def latest_checkpoint(self) -> Path | None:
        found = find_latest_checkpoint(self.run_dir)
        self.resumed_from = str(found) if found else None
        return found

    @contextmanager
    def checkpoint_to_report(self, epoch: int) -> Iterator[Path]:
        folder = self.run_dir / "checkpoints"
        with atomic_directory(folder / checkpoint_name(epoch)) as tmp:
            yield tmp
        for old in list_checkpoints(folder)[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def report(self, metrics: dict[str, Any], epoch: int, checkpoint_dir: Path | None) -> None:
        self.history.append(metrics)
        self.log_epoch(metrics, epoch)


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
        """The checkpoint Ray Train hands this attempt: after a worker failure (``FailureConfig``) or a
        re-run of the same ``name`` in the same ``storage_path``, the latest one it registered."""
        checkpoint = self._ray_train.get_checkpoint()
        if checkpoint is None:
            return None
        # Copy to a local folder we own (as_directory() may hand out a path that is removed afterwards),
        # under the checkpoint's own name so that messages show which epoch it is.
        local = Path(tempfile.mkdtemp(prefix="nrcc-resume-")) / Path(checkpoint.path).name
        checkpoint.to_directory(str(local))
        self.resumed_from = checkpoint.path
        return local

    def release(self, checkpoint: Path) -> None:
        if checkpoint.parent.name.startswith("nrcc-resume-"):  # only the private copy made above
            shutil.rmtree(checkpoint.parent, ignore_errors=True)

    def report(self, metrics: dict[str, Any], epoch: int, checkpoint_dir: Path | None) -> None:
        checkpoint = None
        if checkpoint_dir is not None:
            checkpoint = self._ray_train.Checkpoint.from_directory(str(checkpoint_dir))
        self.log_epoch(metrics, epoch)
        self._ray_train.report(metrics, checkpoint=checkpoint,
                               checkpoint_dir_name=checkpoint_name(epoch) if checkpoint else None)
