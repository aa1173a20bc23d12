"""The one training loop. Ray Train runs it on every worker; ``--no-ray`` runs it in this process.

Per step: uint8 views from the loader -> photometric augmentation on the device -> method forward (under
autocast on GPU) -> backward (DDP averages gradients) -> optimizer step -> the method's post-step hook
(EMA target, CueCo's momentum clustering). Per epoch: metrics averaged over workers, an optional monitor
(kNN accuracy, collapse check, clustering), and every ``checkpoint_every`` epochs a checkpoint that holds
everything needed to continue exactly (weights, EMA target, optimizer, scaler, every worker's RNG
states, epoch and step, metric history).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import defaultdict
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from nrcc_scale.config import Config, ConfigError, config_from_dict
from nrcc_scale.data.augment import BatchPhotometricAugment
from nrcc_scale.data.loaders import build_train_loader
from nrcc_scale.data.registry import build_data, training_resolution
from nrcc_scale.engine.checkpoint import read_rng, read_state, write_checkpoint
from nrcc_scale.engine.context import RunContext
from nrcc_scale.engine.optim import build_optimizer, count_parameters
from nrcc_scale.engine.schedule import cosine_with_warmup, peak_lr, set_learning_rate
from nrcc_scale.methods import SSLMethod, build_method
from nrcc_scale.methods.distributed import all_reduce_mean, is_distributed
from nrcc_scale.utils.seeding import rng_state, seed_everything, set_rng_state

log = logging.getLogger("nrcc_scale.train")

MAX_BAD_STEPS = 3  # consecutive non-finite losses before the run stops (and Ray restarts it)


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    if setting == "fp16":
        return torch.float16
    return torch.bfloat16


def _print(rank: int, message: str) -> None:
    if rank == 0:
        print(message, flush=True)


class NonFiniteLossError(RuntimeError):
    pass


def train_worker(config: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Train as configured; returns the last epoch's metrics (rank 0's view)."""
    cfg = config_from_dict(config)
    t = cfg.train
    device = ctx.device
    seed_everything(t.seed + 1000 * ctx.rank)
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    data = build_data(cfg.data, seed=t.seed)
    resolution = training_resolution(cfg.data, data.train)
    if len(data.train) < t.batch_size:
        raise ConfigError(f"train.batch_size = {t.batch_size} is larger than the training set "
                          f"({data.train.describe()}); lower train.batch_size")
    method = build_method(cfg, resolution).to(device)
    if cfg.model.channels_last:
        method = method.to(memory_format=torch.channels_last)
    num_views = 3 if method.needs_third_view else 2
    aug = cfg.data.augment
    loader = build_train_loader(cfg.data, data.train, resolution, num_views, t.batch_size // ctx.world_size,
                                ctx.rank, ctx.world_size, seed=t.seed, device=device)
    photometric = BatchPhotometricAugment(aug, data.train.mean, data.train.std, resolution).to(device)
    model: torch.nn.Module = method
    if is_distributed():
        # buffers (target BN statistics, CueCo queue and centroids) are kept identical by construction;
        # broadcasting them every step would only cost time
        model = DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None,
                                        broadcast_buffers=False)

    lr_peak = peak_lr(cfg.optim.base_lr, t.batch_size)
    optimizer = build_optimizer(method.parameter_groups(), cfg.optim, lr_peak)
    steps_per_epoch = len(loader)
    total_steps = t.epochs * steps_per_epoch
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
    dtype = amp_dtype(t.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    start_epoch, step, history = 0, 0, []
    checkpoint = ctx.latest_checkpoint()
    if checkpoint is not None:
        state = read_state(checkpoint)
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, step, history = int(state["epoch"]), int(state["step"]), list(state["history"])
        rng = read_rng(checkpoint, ctx.rank)
        if rng is not None:
            set_rng_state(rng)
        else:  # resumed with more workers than the checkpoint had: a fresh, deterministic stream
            seed_everything(t.seed + 1000 * ctx.rank + start_epoch)
        _print(ctx.rank, f"resumed from {checkpoint} at epoch {start_epoch} (step {step})")

    _print(ctx.rank, f"training {cfg.method.name}{'+NRCC' if cfg.uses_nrcc else ''} on {data.train.describe()} "
                     f"at {resolution} px | {cfg.model.backbone} ({count_parameters(method.online) / 1e6:.2f} M "
                     f"params) | {ctx.world_size} worker(s) on {device} | global batch {t.batch_size}, "
                     f"{steps_per_epoch} steps/epoch, epochs {start_epoch + 1}..{t.epochs} | amp {dtype}")

    last: dict[str, Any] = history[-1] if history else {}
    bad_steps = 0
    for epoch in range(start_epoch, t.epochs):
        loader.set_epoch(epoch)
        method.train()
        sums: dict[str, float] = defaultdict(float)
        counted = 0
        started = time.perf_counter()
        for views, _labels, _index in loader:
            views = views.to(device, non_blocking=True)
            xs = [photometric(views[:, v]) for v in range(num_views)]
            if cfg.model.channels_last:
                xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
            lr = cosine_with_warmup(step, total_steps, warmup_steps, lr_peak, cfg.optim.min_lr_ratio)
            set_learning_rate(optimizer, lr)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                out = model(*xs)
            if not _finite_everywhere(out.loss):
                bad_steps += 1
                _print(ctx.rank, f"warning: non-finite loss at epoch {epoch + 1} step {step}; step skipped")
                if bad_steps >= MAX_BAD_STEPS:
                    raise NonFiniteLossError(
                        f"the loss was not finite for {bad_steps} consecutive steps (epoch {epoch + 1}, step "
                        f"{step}); the last checkpoint is intact. Lower optim.base_lr or check the data.")
                optimizer.zero_grad(set_to_none=True)
                continue
            bad_steps = 0
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(out.loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            method.after_optimizer_step(step / total_steps)
            for key, value in out.metrics.items():
                sums[key] += float(value)
            counted += 1
            if ctx.rank == 0 and t.log_every and step % t.log_every == 0:
                print(f"  epoch {epoch + 1}/{t.epochs} step {step}/{total_steps} loss {float(out.metrics['loss']):.4f} "
                      f"lr {lr:.4g}", flush=True)
        method.on_epoch_end(epoch)
        seconds = time.perf_counter() - started
        metrics = _epoch_metrics(sums, counted, device)
        metrics.update(epoch=epoch + 1, step=step, lr=lr if counted else 0.0, epoch_seconds=seconds,
                       images_per_second=counted * t.batch_size / max(seconds, 1e-9))
        if _monitor_due(t.monitor_every, epoch, t.epochs) and ctx.rank == 0:
            metrics.update(_monitor(method, cfg, data, resolution, device))
        history.append(metrics)
        last = metrics
        _print(ctx.rank, _format_epoch(metrics, t.epochs))
        if (epoch + 1) % t.checkpoint_every == 0 or epoch + 1 == t.epochs:
            with ctx.checkpoint_to_report(epoch + 1) as folder:
                state = None
                if ctx.rank == 0:
                    state = {"model": method.state_dict(), "optimizer": optimizer.state_dict(),
                             "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                             "epoch": epoch + 1, "step": step, "history": history, "config": cfg.to_dict(),
                             "world_size": ctx.world_size, "resolution": resolution}
                write_checkpoint(folder, ctx.rank, rng_state(), state)
                ctx.report(metrics, epoch + 1, folder)
        else:
            ctx.report(metrics, epoch + 1, None)
    return last


def _finite_everywhere(loss: torch.Tensor) -> bool:
    """Every worker must take the same decision, or DDP would wait forever for the skipping worker."""
    flag = torch.isfinite(loss.detach()).float().reshape(1)
    if is_distributed():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item() > 0)


def _epoch_metrics(sums: dict[str, float], counted: int, device: torch.device) -> dict[str, Any]:
    keys = sorted(sums)
    values = torch.tensor([sums[k] / max(counted, 1) for k in keys], dtype=torch.float64, device=device)
    values = all_reduce_mean(values) if keys else values
    return {k: float(v) for k, v in zip(keys, values.tolist(), strict=True)}


def _monitor_due(every: int, epoch: int, epochs: int) -> bool:
    return (every > 0 and (epoch + 1) % every == 0) or epoch + 1 == epochs


def _monitor(method: SSLMethod, cfg: Config, data, resolution: int, device: torch.device) -> dict[str, float]:
    from nrcc_scale.evaluation.monitor import training_monitor

    return training_monitor(method, cfg, data, resolution, device)


def _format_epoch(metrics: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {metrics['epoch']}/{epochs}"]
    for key in ("loss", "loss_base", "loss_nrcc", "knn_acc", "global_std", "monitor_nmi", "monitor_acc"):
        if key in metrics and isinstance(metrics[key], float) and math.isfinite(metrics[key]):
            parts.append(f"{key} {metrics[key]:.4f}")
    parts.append(f"{metrics['images_per_second']:.0f} img/s")
    return " | ".join(parts)


def main_in_process(config: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Entry for ``--no-ray``: one process, the same loop."""
    logging.basicConfig(stream=sys.stdout, level=logging.INFO)
    return train_worker(config, ctx)
