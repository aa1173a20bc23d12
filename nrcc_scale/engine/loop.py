"""The one training loop. Ray Train runs it on every worker; ``--no-ray`` runs it in this process.

Per step: uint8 views from the loader -> photometric augmentation on the device -> method forward (under
autocast on GPU) -> backward (DDP averages gradients) -> optimizer step -> the method's post-step hook
(EMA target, CueCo's momentum clustering). Per epoch: metrics averaged over workers, an optional monitor
(kNN accuracy, collapse check, clustering), and every ``checkpoint_every`` epochs a checkpoint that holds
everything needed to continue exactly (a :class:`~nrcc_scale.engine.checkpoint.TrainingState`: weights,
EMA target, method buffers, optimizer, scaler, epoch and step, metric history; and every worker's RNG states).

The caller hands the loop what is not training (:class:`LoopHooks`): the monitor (``nrcc_scale.train``
passes the evaluation package's), and the testing aids' hooks (:mod:`nrcc_scale.testing`), so the engine
imports neither evaluation nor test code.

Why a resume is bit-identical to an uninterrupted run (checked by tests/test_resume.py): checkpoints are
taken at epoch boundaries, after the epoch-end hook and the monitor; the data order and the crops are pure
functions of (seed, epoch, index) and the learning rate and EMA momentum pure functions of the step; every
other random draw (photometric augmentation, SGHMC noise, the DataLoader's base seed) comes from the global
torch/numpy/python generators, whose states each worker saves and restores.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from nrcc_scale.config import Config, ConfigError
from nrcc_scale.config_load import config_from_dict
from nrcc_scale.data.augment import BatchPhotometricAugment
from nrcc_scale.data.base import DataBundle
from nrcc_scale.data.loaders import TrainLoader, build_train_loader
from nrcc_scale.data.registry import build_data, training_resolution
from nrcc_scale.engine.checkpoint import TrainingState, read_rng, read_state, write_checkpoint
from nrcc_scale.engine.context import RunContext
from nrcc_scale.engine.gpu_defaults import (
    amp_dtype,
    configure_cuda,
    convert_sync_bn,
    describe,
    use_channels_last,
    use_sync_bn,
)
from nrcc_scale.engine.optim import build_optimizer, count_parameters
from nrcc_scale.engine.schedule import cosine_with_warmup, peak_lr, set_learning_rate
from nrcc_scale.methods import SSLMethod, StepOutput, build_method
from nrcc_scale.methods.distributed import all_reduce_mean, is_distributed
from nrcc_scale.utils.seeding import rng_state, seed_everything, set_rng_state
from nrcc_scale.utils.threads import keep_torch_threads

MAX_BAD_STEPS = 3  # consecutive non-finite losses before the run stops (and Ray restarts it)

#: Config keys that may change between a run and its resumption without breaking exactness.
RESUME_FREE_KEYS = ("name", "storage_path", "eval.", "ray.", "train.max_failures", "train.keep_checkpoints",
                    "train.log_every", "train.checkpoint_every", "data.root", "data.beton", "data.loader_workers",
                    "data.cache_dir", "data.cache_max_gb")


__all__ = ["LoopHooks", "TrainingRun", "amp_dtype", "build_training", "train_step", "train_worker"]

#: ``monitor(method, cfg, data, resolution, device) -> {metric: value}``, run by rank 0 at monitor epochs
MonitorFn = Callable[[SSLMethod, Config, DataBundle, int, torch.device], dict[str, float]]


@dataclass
class LoopHooks:
    """What the caller plugs into :func:`train_worker`; each hook is optional.

    ``monitor``: the per-epoch training monitor (``train.monitor_every``); without one no monitor runs.
    ``before_batch(rank, epoch, batch)``: called before every batch (epoch 1-based, batch 0-based).
    ``before_state_file(epoch, folder)``: called while rank 0 writes a checkpoint, between its RNG file and
    state.pt. The last two exist for the testing aids of :mod:`nrcc_scale.testing`."""

    monitor: MonitorFn | None = None
    before_batch: Callable[[int, int, int], None] | None = None
    before_state_file: Callable[[int, Path], None] | None = None


def _emit(message: str, stream=None) -> None:
    """One line to stdout (or ``stream``), written directly: Ray Train V2 patches ``print`` in its workers
    to also go through its logger, which shows every printed line twice in the driver and ``ray job logs``;
    a direct write reaches them once (Ray forwards worker output to the driver, ``log_to_driver``)."""
    stream = stream or sys.stdout
    stream.write(message + "\n")
    stream.flush()


def _print(rank: int, message: str) -> None:
    if rank == 0:
        _emit(message)


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class TrainingRun:
    """What one worker builds before its first step. :func:`train_step` advances it by one batch; the
    loop below and ``benchmarks/ray_scaling.py`` both drive it, so the benchmark times the real step."""

    cfg: Config
    data: DataBundle
    resolution: int
    method: SSLMethod
    model: torch.nn.Module  # the method, wrapped in DDP when distributed
    loader: TrainLoader
    photometric: BatchPhotometricAugment
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None
    num_views: int
    device: torch.device
    lr_peak: float
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    channels_last: bool = False
    sync_bn: bool = False
    compiled: bool = False

    def lr_at(self, step: int) -> float:
        return cosine_with_warmup(step, self.total_steps, self.warmup_steps, self.lr_peak,
                                  self.cfg.optim.min_lr_ratio)

    def schedule(self) -> dict[str, Any]:
        """Everything the learning-rate and EMA schedules depend on besides the step."""
        return {"total_steps": self.total_steps, "warmup_steps": self.warmup_steps, "lr_peak": self.lr_peak,
                "steps_per_epoch": self.steps_per_epoch}


def build_training(cfg: Config, ctx: RunContext) -> TrainingRun:
    """Data, model (DDP-wrapped when distributed), loader, augmentation, optimizer and scaler."""
    t = cfg.train
    device = ctx.device
    configure_cuda(device, t.deterministic)
    sync_bn = use_sync_bn(cfg, device, ctx.world_size)  # a config error surfaces before the data is read
    data = build_data(cfg.data, seed=t.seed)
    resolution = training_resolution(cfg.data, data.train)
    if len(data.train) < t.batch_size:
        raise ConfigError(f"train.batch_size = {t.batch_size} is larger than the training set "
                          f"({data.train.describe()}); lower train.batch_size")
    method = build_method(cfg, resolution)
    if sync_bn:
        # before DDP and the optimizer: the converted layers are new modules with the same parameters
        method = convert_sync_bn(method)
    method = method.to(device)
    channels_last = use_channels_last(cfg, device)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    if t.compile:
        for name in ("online", "target", "predictor"):
            net = getattr(method, name, None)
            if isinstance(net, torch.nn.Module):
                net.compile()  # in place: parameter names (and checkpoints) stay those of the eager module
    num_views = 3 if method.needs_third_view else 2
    loader = build_train_loader(cfg.data, data.train, resolution, num_views, t.batch_size // ctx.world_size,
                                ctx.rank, ctx.world_size, seed=t.seed, device=device)
    photometric = BatchPhotometricAugment(cfg.data.augment, data.train.mean, data.train.std, resolution).to(device)
    model: torch.nn.Module = method
    if is_distributed():
        # DDP copies rank 0's parameters and buffers to every worker once, here (the EMA target included);
        # afterwards the buffers (CueCo's queue and centroids) stay identical by construction and the target's
        # BatchNorm statistics matter only to rank 0's evaluation, so syncing them every step would only cost time
        model = DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None,
                                        forward_sync_buffers=False)
    lr_peak = peak_lr(cfg.optim.base_lr, t.batch_size)
    optimizer = build_optimizer(method.parameter_groups(), cfg.optim, lr_peak)
    steps_per_epoch = len(loader)
    dtype = amp_dtype(t.amp, device)
    return TrainingRun(cfg=cfg, data=data, resolution=resolution, method=method, model=model, loader=loader,
                       photometric=photometric, optimizer=optimizer,
                       scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16), dtype=dtype,
                       num_views=num_views, device=device, lr_peak=lr_peak, steps_per_epoch=steps_per_epoch,
                       total_steps=t.epochs * steps_per_epoch,
                       warmup_steps=round(cfg.optim.warmup_epochs * steps_per_epoch),
                       channels_last=channels_last, sync_bn=sync_bn, compiled=t.compile)


def train_step(run: TrainingRun, views: torch.Tensor, step: int) -> StepOutput | None:
    """One optimizer step on a batch of uint8 views at global step ``step`` (0-based). Returns None, with
    no update, when the loss was not finite on some worker."""
    views = views.to(run.device, non_blocking=True)
    xs = [run.photometric(views[:, v]) for v in range(run.num_views)]
    if run.channels_last:
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    set_learning_rate(run.optimizer, run.lr_at(step))
    with torch.autocast(run.device.type, dtype=run.dtype or torch.float32, enabled=run.dtype is not None):
        out = run.model(*xs)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(out.loss).backward()
    # the step's one host synchronisation, placed after the backward is queued so the GPU stays busy while
    # the host waits; every worker ran the backward (DDP needs that), and all skip the step together
    if not _finite_everywhere(out.loss):
        run.optimizer.zero_grad(set_to_none=True)
        return None
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.method.after_optimizer_step((step + 1) / run.total_steps)
    return out


def train_worker(config: dict[str, Any], ctx: RunContext, hooks: LoopHooks) -> dict[str, Any]:
    """Train as configured; returns the last epoch's metrics (rank 0's view). ``hooks``: see
    :class:`LoopHooks` (``nrcc_scale.train.loop_hooks()`` gives the ones a normal run uses)."""
    cfg = config_from_dict(config)
    t = cfg.train
    seed_everything(t.seed + 1000 * ctx.rank)
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    run = build_training(cfg, ctx)
    method, device = run.method, run.device
    start_epoch, step, history = _resume(run, ctx)

    _print(ctx.rank, f"training {cfg.method.name}{'+NRCC' if cfg.uses_nrcc else ''} on {run.data.train.describe()} "
                     f"at {run.resolution} px | {cfg.model.backbone} ({count_parameters(method.online) / 1e6:.2f} M "
                     f"params) | {ctx.world_size} worker(s) on {device} | global batch {t.batch_size}, "
                     f"{run.steps_per_epoch} steps/epoch, epochs {start_epoch + 1}..{t.epochs} | amp {run.dtype}")
    _print(ctx.rank, describe(device, run.dtype, run.channels_last, run.sync_bn, run.compiled)
           + (" (model.sync_bn: default for multi-GPU runs)" if run.sync_bn and cfg.model.sync_bn is None else ""))
    if start_epoch >= t.epochs:
        _print(ctx.rank, f"nothing to train: the checkpoint is already at the last epoch ({t.epochs})")

    last: dict[str, Any] = history[-1] if history else {}
    bad_steps = 0
    lr = 0.0
    try:
        for epoch in range(start_epoch, t.epochs):
            run.loader.set_epoch(epoch)
            method.train()
            # metrics stay on the device (no host synchronisation per step); read at log intervals and epoch end
            sums: dict[str, torch.Tensor] = {}
            counted = 0
            started = time.perf_counter()
            for batch_index, (views, _labels, _index) in enumerate(run.loader):
                if hooks.before_batch is not None:
                    hooks.before_batch(ctx.rank, epoch + 1, batch_index)
                lr = run.lr_at(step)
                out = train_step(run, views, step)
                if out is None:
                    bad_steps += 1
                    _print(ctx.rank, f"warning: non-finite loss at epoch {epoch + 1} step {step}; step skipped")
                    if bad_steps >= MAX_BAD_STEPS:
                        raise NonFiniteLossError(
                            f"the loss was not finite for {bad_steps} consecutive steps (epoch {epoch + 1}, step "
                            f"{step}); the last checkpoint is intact. Lower optim.base_lr or check the data.")
                    continue
                bad_steps = 0
                step += 1
                for key, value in out.metrics.items():
                    value = value.detach().to(device=device, dtype=torch.float64)
                    sums[key] = sums[key] + value if key in sums else value
                counted += 1
                if ctx.rank == 0 and t.log_every and step % t.log_every == 0:
                    _emit(f"  epoch {epoch + 1}/{t.epochs} step {step}/{run.total_steps} "
                          f"loss {float(out.metrics['loss']):.4f} lr {lr:.4g}")
            method.on_epoch_end(epoch)
            seconds = time.perf_counter() - started
            metrics = _epoch_metrics(sums, counted, device)
            metrics.update(epoch=epoch + 1, step=step, lr=lr if counted else 0.0, epoch_seconds=seconds,
                           images_per_second=counted * t.batch_size / max(seconds, 1e-9))
            if hooks.monitor is not None and _monitor_due(t.monitor_every, epoch, t.epochs) and ctx.rank == 0:
                # faiss's omp_set_num_threads (the monitor's kNN) resizes the OpenMP pool torch shares;
                # training on with another thread count changes the order of floating-point reductions,
                # so a resumed run (which has not run that monitor yet) would drift in the last bits
                with keep_torch_threads():
                    metrics.update(hooks.monitor(method, cfg, run.data, run.resolution, device))
            history.append(metrics)
            last = metrics
            _print(ctx.rank, _format_epoch(metrics, t.epochs))
            if (epoch + 1) % t.checkpoint_every == 0 or epoch + 1 == t.epochs:
                with ctx.checkpoint_to_report(epoch + 1) as folder:
                    state = _training_state(run, epoch + 1, step, history, ctx.world_size) if ctx.rank == 0 else None
                    # after the monitor: whatever it drew from the generators is part of the saved state
                    write_checkpoint(folder, ctx.rank, rng_state(), state, hooks.before_state_file)
                    ctx.report(metrics, epoch + 1, folder)
            else:
                ctx.report(metrics, epoch + 1, None)
    finally:
        ctx.close()
    return last


def _training_state(run: TrainingRun, epoch: int, step: int, history: list[dict[str, Any]],
                    world_size: int) -> TrainingState:
    """What rank 0 saves at the end of ``epoch`` (1-based), after ``step`` optimizer steps."""
    return TrainingState(model=run.method.state_dict(), optimizer=run.optimizer.state_dict(),
                         scaler=run.scaler.state_dict() if run.scaler.is_enabled() else None,
                         epoch=epoch, step=step, sampler_epoch=epoch, schedule=run.schedule(), history=history,
                         config=run.cfg.to_dict(), world_size=world_size, resolution=run.resolution)


def _resume(run: TrainingRun, ctx: RunContext) -> tuple[int, int, list[dict[str, Any]]]:
    """Load the context's latest checkpoint into ``run``; returns (epochs done, steps done, history)."""
    checkpoint = ctx.latest_checkpoint()
    if checkpoint is None:
        return 0, 0, []
    state = read_state(checkpoint)
    run.method.load_state_dict(state.model)
    run.optimizer.load_state_dict(state.optimizer)
    if state.scaler:
        run.scaler.load_state_dict(state.scaler)
    epoch, step = state.epoch, state.step
    rng = read_rng(checkpoint, ctx.rank)
    ctx.release(checkpoint)
    if rng is not None:
        set_rng_state(rng)
    else:  # resumed with more workers than the checkpoint had: a fresh, deterministic stream
        seed_everything(run.cfg.train.seed + 1000 * ctx.rank + epoch)
    for warning in _resume_warnings(state, run, ctx.world_size):
        _print(ctx.rank, f"warning: {warning}")
    _print(ctx.rank, f"resumed from {ctx.resumed_from or checkpoint} at epoch {epoch} (step {step})")
    return epoch, step, list(state.history)


def _resume_warnings(state: TrainingState, run: TrainingRun, world_size: int) -> list[str]:
    """Why this resume will not continue the saved run exactly (empty when it will)."""
    out = []
    saved_world = state.world_size if state.world_size is not None else world_size
    if saved_world != world_size:
        out.append(f"the checkpoint was written by {saved_world} worker(s), this run has {world_size}: data "
                   f"shards and random streams differ from the saved run's")
    if state.schedule is not None and state.schedule != run.schedule():
        out.append(f"the learning-rate schedule changed ({state.schedule} -> {run.schedule()}), e.g. through "
                   f"train.epochs or train.batch_size")
    changed = _config_differences(state.config, run.cfg.to_dict())
    if changed:
        out.append(f"the config differs from the checkpoint's in {', '.join(changed)}")
    return out


def _config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(saved) | set(current)):
        path = f"{prefix}{key}"
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _config_differences(a, b, f"{path}.")
        elif a != b and not path.startswith(RESUME_FREE_KEYS):
            keys.append(path)
    return keys


def _finite_everywhere(loss: torch.Tensor) -> bool:
    """Every worker must take the same decision, or DDP would wait forever for the skipping worker."""
    flag = torch.isfinite(loss.detach()).float().reshape(1)
    if is_distributed():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item() > 0)


def _epoch_metrics(sums: dict[str, torch.Tensor], counted: int, device: torch.device) -> dict[str, Any]:
    keys = sorted(sums)
    if not keys:
        return {}
    values = torch.stack([sums[k].to(device=device, dtype=torch.float64) for k in keys]) / max(counted, 1)
    values = all_reduce_mean(values) if keys else values
    return {k: float(v) for k, v in zip(keys, values.tolist(), strict=True)}


def _monitor_due(every: int, epoch: int, epochs: int) -> bool:
    """``train.monitor_every``: every N epochs and at the last; 0: only at the last; -1: never."""
    if every < 0:
        return False
    return (every > 0 and (epoch + 1) % every == 0) or epoch + 1 == epochs


def _format_epoch(metrics: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {metrics['epoch']}/{epochs}"]
    for key in ("loss", "loss_base", "loss_nrcc", "knn_acc", "global_std", "monitor_nmi", "monitor_acc",
                "monitor_rankme", "monitor_stability"):
        if key in metrics and isinstance(metrics[key], float) and math.isfinite(metrics[key]):
            parts.append(f"{key} {metrics[key]:.4f}")
    parts.append(f"{metrics['images_per_second']:.0f} img/s")
    return " | ".join(parts)

