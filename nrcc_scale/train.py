"""``python -m nrcc_scale.train`` — train on Ray Train, then evaluate and report, in one command.

    python -m nrcc_scale.train                                    # the bundled default (digits, BYOL+NRCC)
    python -m nrcc_scale.train --config configs/cifar10.yaml train.num_workers=8 train.use_gpu=true
    ray job submit --working-dir . -- python -m nrcc_scale.train  # on a running cluster
    python -m nrcc_scale.train --no-ray                           # same loop in this process (debugger, 1 GPU)

With no ``ray.address`` and no ``RAY_ADDRESS`` a local Ray is started on 127.0.0.1. Checkpoints go through
Ray Train to ``storage_path/name``; the report (config.yaml, metrics.json, plots, TensorBoard events) is
written to the same folder when it is local. The last line printed is ``run directory: <path>``.

Resuming: run the same command with the same ``name=`` (and ``storage_path``) again, after a crash, a
killed driver or a lost head node. Ray Train V2 finds the run's ``checkpoint_manager_snapshot.json`` in
``storage_path/name`` and hands the latest registered checkpoint to the workers, which continue from the
epoch after it (printing ``resumed from ... at epoch N``); ``--no-ray`` does the same from
``<run dir>/checkpoints``. The default name has a timestamp, so give ``name=`` for runs you may resume.
Worker failures inside one run are retried ``train.max_failures`` times from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nrcc_scale.cli import add_config_arguments, config_from_args, run_main
from nrcc_scale.config import Config, ConfigError, save_config
from nrcc_scale.engine.checkpoint import find_latest_checkpoint
from nrcc_scale.engine.context import LocalContext, RayContext
from nrcc_scale.engine.loop import LoopHooks, train_worker
from nrcc_scale.testing import FaultInjector, checkpoint_pause_from_env
from nrcc_scale.utils.files import atomic_write_json

#: The file in ``storage_path/name`` from which Ray Train V2 (2.60) restores a run's checkpoint list when a
#: run of the same name is started again (``CHECKPOINT_MANAGER_SNAPSHOT_FILENAME`` in its internals).
RAY_RUN_SNAPSHOT = "checkpoint_manager_snapshot.json"


def is_uri(path: str) -> bool:
    return "://" in path


def resolve_run_dir(cfg: Config) -> tuple[str, Path]:
    """(storage path as Ray gets it, local folder for the report). For a cloud URI the report is written
    to ~/nrcc_scale_runs/<name> (and the checkpoints stay in the cloud)."""
    if is_uri(cfg.storage_path):
        return cfg.storage_path, Path("~/nrcc_scale_runs").expanduser() / cfg.name
    storage = Path(cfg.storage_path).expanduser().resolve()
    return str(storage), storage / cfg.name


def quiet_ray_train_worker_logs() -> None:
    """Ray Train V2 logs every report (with all its metrics) and every checkpoint at INFO from every worker;
    the loop prints its own one-line epoch summary, so keep Ray Train's worker loggers to warnings. Some are
    named by module, some by file path (``logging.getLogger(__file__)``): match both."""
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("ray.train") or "/ray/train/" in name:
            logging.getLogger(name).setLevel(logging.WARNING)


def training_monitor(method: Any, cfg: Config, data: Any, resolution: int, device: torch.device) -> dict[str, float]:
    """The loop's monitor (:mod:`nrcc_scale.evaluation.monitor`), imported when it first runs: faiss and
    UMAP are loaded only by runs that reach a monitor epoch, after training started (as always)."""
    from nrcc_scale.evaluation.monitor import training_monitor as monitor

    return monitor(method, cfg, data, resolution, device)


def loop_hooks() -> LoopHooks:
    """The hooks every training run hands the loop: the training monitor, and the testing aids of
    :mod:`nrcc_scale.testing` when their environment variables are set (read here, in the worker)."""
    fault = FaultInjector.from_env()
    return LoopHooks(monitor=training_monitor, before_batch=fault.check if fault is not None else None,
                     before_state_file=checkpoint_pause_from_env())


def ray_train_loop(config: dict[str, Any]) -> None:
    """What every Ray Train worker runs."""
    quiet_ray_train_worker_logs()
    run_dir = Path(config["run_dir"]) if config.get("run_dir") else None
    train_worker(config["config"], RayContext(run_dir), loop_hooks())


def build_trainer(cfg: Config, storage: str, run_dir: Path, callbacks: Sequence[Any] = ()) -> Any:
    """The TorchTrainer of one run (``python -m nrcc_scale.train`` and every trial of ``nrcc_scale.tune``).
    ``callbacks`` are Ray Train ``UserCallback``s, e.g. Tune's report callback in a sweep."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from nrcc_scale.data.ray_data_loader import train_data_config
    from nrcc_scale.ray_setup import cluster_has_gpus

    use_gpu = cfg.train.use_gpu if cfg.train.use_gpu is not None else cluster_has_gpus()
    datasets: dict[str, Any] = {}
    if cfg.data.format == "ray_data":  # Ray Data streams the shards to the workers (data/ray_data_loader.py)
        from nrcc_scale.data.ray_data_loader import build_train_dataset, check_data_cpus, resume_epoch

        check_data_cpus(cfg)
        datasets = {"train": build_train_dataset(cfg, start_epoch=resume_epoch(storage, cfg.name))}
    if cfg.model.sync_bn and cfg.train.num_workers > 1 and not use_gpu:  # before any worker starts
        raise ConfigError("model.sync_bn = true needs GPU workers (SyncBatchNorm runs on CUDA only), but this "
                          "run trains on CPUs; set model.sync_bn=false or train.use_gpu=true on a GPU cluster")
    return TorchTrainer(
        ray_train_loop,
        train_loop_config={"config": cfg.to_dict(), "run_dir": None if is_uri(storage) else str(run_dir)},
        **({"datasets": datasets, "dataset_config": train_data_config()} if datasets else {}),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=cfg.name, storage_path=storage, callbacks=list(callbacks),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures)),
    )


def earlier_run_note(storage: str, name: str) -> str | None:
    """A line saying that Ray Train will resume an earlier run of this name, when storage is local."""
    if is_uri(storage):
        return None  # Ray logs "A run snapshot was found in storage folder" itself
    if not (Path(storage) / name / RAY_RUN_SNAPSHOT).is_file():
        return None
    latest = find_latest_checkpoint(Path(storage) / name)
    where = f"its latest checkpoint ({latest.name})" if latest else "its latest checkpoint"
    return f"found an earlier run '{name}' in {storage}: Ray Train resumes it from {where}"


def fit_trainer(trainer: Any, storage: str, name: str) -> Path:
    """Run ``trainer.fit()``; return a local folder holding the final checkpoint."""
    from nrcc_scale.data.preflight import find_data_error

    try:
        result = trainer.fit()
    except Exception as err:  # Ray Train V2 raises the workers' errors from fit(): a DataError -> one line
        data_error = find_data_error(err)
        if data_error is not None:
            raise data_error from None
        raise
    if result.error is not None:
        data_error = find_data_error(result.error)
        raise data_error if data_error is not None else result.error
    if result.checkpoint is None and not is_uri(storage):
        # a re-run of a run that had already finished reports nothing new; its last checkpoint is the result
        return _existing_checkpoint(Path(storage) / name)
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint in {storage}/{name}")
    if is_uri(storage):
        local = Path(tempfile.mkdtemp(prefix="nrcc-final-"))
        result.checkpoint.to_directory(str(local))
        return local
    return Path(result.checkpoint.path)


def train_with_ray(cfg: Config, storage: str, run_dir: Path) -> Path:
    """Fit a TorchTrainer; return a local folder holding the final checkpoint."""
    from nrcc_scale.ray_setup import init_ray

    print(init_ray(cfg.ray, data_cpus=cfg.ray.data_cpus if cfg.data.format == "ray_data" else 0), flush=True)
    note = earlier_run_note(storage, cfg.name)
    if note:
        print(note, flush=True)
    try:
        return fit_trainer(build_trainer(cfg, storage, run_dir), storage, cfg.name)
    finally:
        import ray

        # the evaluation runs in this process; disconnecting (or stopping the local Ray we started) also
        # ends the forwarding of worker output, so no late worker line lands inside the report
        ray.shutdown()


def _existing_checkpoint(run_dir: Path) -> Path:
    checkpoint = find_latest_checkpoint(run_dir)
    if checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint in {run_dir}")
    return checkpoint


def train_in_process(cfg: Config, run_dir: Path) -> Path:
    """The same loop in this process; a re-run with the same name resumes from ``run_dir/checkpoints``."""
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.train.use_gpu is not False else "cpu")
    train_worker(cfg.to_dict(), LocalContext(run_dir, device, keep=cfg.train.keep_checkpoints), loop_hooks())
    return _existing_checkpoint(run_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nrcc_scale.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--no-ray", action="store_true", help="run the training loop in this process")
    parser.add_argument("--no-eval", action="store_true", help="train only; skip the clustering evaluation")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if args.no_ray and cfg.data.format == "ray_data":
        raise ConfigError("data.format = 'ray_data' streams through Ray Data into Ray Train workers; drop "
                          "--no-ray, or use data.format=parquet (the same shards read in this process)")
    cfg.name = cfg.name or cfg.default_name()
    storage, run_dir = resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    print(f"run {cfg.name}: config saved to {run_dir / 'config.yaml'}", flush=True)
    from nrcc_scale.data.preflight import check_data_source

    check_data_source(cfg)  # a missing or corrupt data source: one line, exit 2, before any worker starts

    started = time.perf_counter()
    checkpoint = train_in_process(cfg, run_dir) if args.no_ray else train_with_ray(cfg, storage, run_dir)
    train_seconds = time.perf_counter() - started
    print(f"training done in {train_seconds:.1f} s; final checkpoint {checkpoint}", flush=True)

    if cfg.eval.enabled and not args.no_eval:
        from nrcc_scale.evaluation.checkpoint_eval import evaluate_checkpoint

        metrics, table = evaluate_checkpoint(checkpoint, run_dir)
        metrics["train_seconds"] = round(train_seconds, 2)
        metrics["total_seconds"] = round(time.perf_counter() - started, 2)
        atomic_write_json(run_dir / "metrics.json", metrics)
        from nrcc_scale.evaluation.html_report import write_html_report

        write_html_report(run_dir, metrics, table)  # again, with the wall times
        print()
        print(table)
        print(f"wall time: training {train_seconds:.1f} s, total {metrics['total_seconds']:.1f} s")
    print(f"run directory: {run_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
