"""Data-parallel scaling of the real training step on Ray Train: images/s with 1, 2, ... workers.

    python benchmarks/ray_scaling.py [--quick] [--json results/ray_scaling.json] [--workers 1,2]
    python benchmarks/ray_scaling.py --config configs/datasets/cifar10.yaml data.root=/data/cifar10   # on GPUs

Each measurement is one ``TorchTrainer.fit()`` whose workers build exactly what a training run builds
(``nrcc_scale.engine.loop.build_training``: data, loader, on-device augmentation, the method under DDP,
optimizer) and drive ``train_step`` - the loop's own step - for ``--warmup`` untimed and ``--steps`` timed
steps. The clock covers loading, augmentation, forward, backward with the gradient all-reduce, the
optimizer and the EMA / post-step hook. Scaling is weak: every worker keeps ``--batch-per-worker`` images,
so the global batch grows with the workers (as it does when you add GPUs to a run).

Reported per worker count: images/s (global), images/s per worker, and the parallel efficiency
``images/s(w) / (w * images/s(1))`` (1.0 = perfect scaling). ``fit_s`` is the whole ``fit()`` including Ray
Train's fixed start-up cost (about 20 s on a laptop CPU), which the images/s figures exclude.

Devices: CPU workers (1 CPU each by default, so the torch threads per worker are 1 and two workers use two
cores) unless CUDA is visible, in which case every worker gets one GPU and the default worker counts are
1, 2, 4, ... up to the GPUs of the cluster - so the per-GPU throughput of a main config is the
``img/s per worker`` column (pass its config file and ``data.root``). Default config: the bundled BYOL +
NRCC on digits (8 px images, resnet_tiny), where the step is small and the all-reduce and Python overheads
weigh more than they would for ResNet-50 at 224 px.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import parse_args, print_table, write_json

from nrcc_scale.config import Config
from nrcc_scale.config_load import apply_overrides, config_from_dict, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", default="", help="comma-separated worker counts (default: 1,2 on CPU; "
                                                      "1,2,4,... up to the GPUs)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 40, "
                                                                "quick 12)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--batch-per-worker", type=int, default=128)
    parser.add_argument("--cpus-per-worker", type=int, default=1)
    parser.add_argument("--config", action="append", default=[], metavar="FILE", help="training config(s)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="training config overrides")


def bench_worker(loop_config: dict[str, Any]) -> None:
    """What every Ray Train worker runs: build the training objects, time ``steps`` steps, report."""
    import ray.train

    from nrcc_scale.engine.context import RayContext
    from nrcc_scale.engine.loop import build_training, train_step
    from nrcc_scale.utils.seeding import seed_everything

    ctx = RayContext(None)
    cfg = config_from_dict(loop_config["config"])
    seed_everything(cfg.train.seed + 1000 * ctx.rank)
    run = build_training(cfg, ctx)
    sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
    warmup, steps = loop_config["warmup"], loop_config["steps"]
    step, epoch, started = 0, 0, 0.0
    while step < warmup + steps:
        run.loader.set_epoch(epoch)
        for views, _labels, _index in run.loader:
            if step == warmup:
                sync()
                started = time.perf_counter()
            train_step(run, views, step)
            step += 1
            if step == warmup + steps:
                break
        epoch += 1
    sync()
    seconds = time.perf_counter() - started
    metrics = {"images_per_second": steps * cfg.train.batch_size / seconds, "step_seconds": seconds / steps,
               "device": str(run.device), "resolution": run.resolution}
    # Ray Train V2 keeps metrics only from reports that carry a checkpoint: rank 0 attaches a tiny one.
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if ctx.rank == 0:
            (Path(folder) / "metrics.json").write_text(json.dumps(metrics))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


def measure(base: Config, workers: int, use_gpu: bool, args: argparse.Namespace, storage: str) -> dict[str, Any]:
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = apply_overrides(config_from_dict(base.to_dict()), [
        f"train.num_workers={workers}", f"train.batch_size={workers * args.batch_per_worker}",
        f"train.use_gpu={'true' if use_gpu else 'false'}", f"train.cpus_per_worker={args.cpus_per_worker}"])
    trainer = TorchTrainer(
        bench_worker,
        train_loop_config={"config": cfg.to_dict(), "warmup": args.warmup, "steps": args.steps},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": args.cpus_per_worker}),
        run_config=ray.train.RunConfig(name=f"scaling_{workers}", storage_path=storage),
    )
    started = time.perf_counter()
    result = trainer.fit()
    fit_seconds = time.perf_counter() - started
    if result.error is not None:
        raise result.error
    m = result.metrics
    return {"workers": workers, "device": m["device"], "global_batch": cfg.train.batch_size,
            "steps": args.steps, "img_per_s": m["images_per_second"],
            "img_per_s_per_worker": m["images_per_second"] / workers, "step_s": m["step_seconds"],
            "fit_s": fit_seconds}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], add_arguments)
    args.steps = args.steps or (12 if args.quick else 40)
    import ray

    from nrcc_scale.ray_setup import init_ray

    base = load_config(args.config, args.overrides)
    print(init_ray(base.ray), flush=True)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 0))
    use_gpu = gpus > 0
    if args.workers:
        counts = [int(w) for w in args.workers.split(",")]
    elif use_gpu:
        counts = [w for w in (1, 2, 4, 8, 16, 32) if w <= gpus]
    else:
        counts = [w for w in (1, 2) if w * args.cpus_per_worker <= cpus] or [1]
    print(f"BYOL+NRCC step scaling: {base.method.name} on {base.data.dataset}, {base.model.backbone}, "
          f"{args.batch_per_worker} images per worker, {args.warmup} + {args.steps} steps; "
          f"{'GPU' if use_gpu else 'CPU'} workers {counts} (cluster: {cpus} CPUs, {gpus} GPUs)", flush=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="nrcc-ray-scaling-") as storage:
        for workers in counts:
            rows.append(measure(base, workers, use_gpu, args, storage))
            print(f"  {workers} worker(s): {rows[-1]['img_per_s']:.0f} images/s", flush=True)
    single = next((r["img_per_s"] for r in rows if r["workers"] == 1), None)
    for row in rows:
        row["efficiency"] = row["img_per_s"] / (row["workers"] * single) if single else None
    print_table(rows, ["workers", "device", "global_batch", "steps", "img_per_s", "img_per_s_per_worker",
                       "efficiency", "step_s", "fit_s"], title="Ray Train data-parallel scaling (weak)")
    if args.json:
        write_json(args.json, {"benchmark": "ray_scaling", "config": base.to_dict(), "rows": rows,
                               "batch_per_worker": args.batch_per_worker, "warmup": args.warmup,
                               "report": {"title": "Ray Train data-parallel scaling (weak)",
                                          "columns": ["workers", "device", "global_batch", "img_per_s",
                                                      "img_per_s_per_worker", "efficiency", "fit_s"],
                                          "rows": rows,
                                          "notes": ["efficiency = img/s(w) / (w * img/s(1)); 1.0 = perfect; the "
                                                    "baseline is one worker of the same step. fit_s includes Ray "
                                                    "Train start-up, which img/s excludes."],
                                          "plots": []}})


if __name__ == "__main__":
    main()
