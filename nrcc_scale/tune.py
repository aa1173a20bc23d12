"""``python -m nrcc_scale.tune`` — hyper-parameter sweeps with Ray Tune over the normal training run.

    python -m nrcc_scale.tune --config configs/tune/paper_grid.yaml            # the paper's tau x lambda grid
    python -m nrcc_scale.tune --config configs/tune/asha_random.yaml tune.num_samples=32 train.epochs=200
    ray job submit --working-dir . -- python -m nrcc_scale.tune --config configs/tune/asha_random.yaml

A sweep file has three sections::

    base:                        # the training config every trial starts from
      configs: [configs/default.yaml]          # train config files, in order (relative: cwd, then repo root)
      overrides: [train.epochs=100]            # key=value, exactly as on the train command line
    search_space:                # dotted train-config key -> domain (a bare value fixes the key)
      method.nrcc.temperature: {grid: [0.1, 1, 10]}     # grid | choice: lists
      method.nrcc.weight: {loguniform: [0.05, 2.0]}      # uniform | loguniform | quniform [lo, hi(, q)]
      method.nrcc.sghmc.steps: {randint: [1, 4]}         # randint [lo, hi) (hi excluded, as Tune's)
    tune:                        # how to search (TuneSettings below)
      metric: nmi                # what "best" means; nmi/acc/ari/knn_acc/... need evaluate: true and labels;
                                 # label-free: rankme, stability, silhouette, singleton_fraction (mode min), ...
      mode: max
      scheduler: {type: asha, metric: knn_acc, grace_period: 2}   # or {type: none}

Extra ``key=value`` arguments: ``tune.*`` keys change the ``tune`` section, anything else is one more
training override (e.g. ``train.epochs=2``).

How a trial runs (Ray Train V2): the trial function is a small driver that builds the same TorchTrainer
as ``python -m nrcc_scale.train`` (named ``trial_<trial id>``, stored under ``<sweep>/runs``) and calls
``fit()``. Tune's ``TuneReportCallback`` (a Ray Train ``UserCallback``) forwards every epoch's report of
rank 0 to Tune, so ASHA can stop a trial after any epoch; after ``fit()`` the driver evaluates the final
checkpoint (UMAP + GridShift, kNN) and reports those scores as the trial's last result. The trial driver
reserves no CPU (only ``driver_memory_gb`` of Ray's memory resource): the CPUs/GPUs belong to its Ray
Train workers (``tune.resources`` -> ``train.num_workers``/``cpus_per_worker``/``use_gpu``), and
``max_concurrent_trials`` (default: as many as the cluster fits) keeps the trials from over-asking.

Outputs in ``<storage_path>/<name>/``: ``results.csv`` (one row per trial, also printed), ``best_config.yaml``
(the full training config of the best trial, with an empty run name, so
``python -m nrcc_scale.train --config best_config.yaml`` trains it afresh), ``sweep.yaml`` (the resolved
sweep), Tune's own files (per-trial CSV/JSON/TensorBoard logs) and ``runs/trial_*`` (checkpoints, per-trial
config, metrics, TensorBoard events).

The code: ``nrcc_scale.tune_schema`` (the sweep file, Ray-free), ``nrcc_scale.tune_ray`` (the Ray Tune objects
and the trial driver), ``nrcc_scale.tune_results`` (the table and the best config); this module is the command.

Resuming: run the same command again. If ``<storage_path>/<name>`` holds a Tune experiment,
``Tuner.restore`` picks it up: finished trials are kept, unfinished and errored ones run again, and their
Ray Train run (same name, same storage) continues from its latest checkpoint instead of epoch 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import yaml

from nrcc_scale.cli import run_main
from nrcc_scale.tune_ray import build_tuner
from nrcc_scale.tune_results import best_row, format_table, result_rows, write_best_config, write_results
from nrcc_scale.tune_schema import BEST_CONFIG, RESULTS_CSV, SWEEP_FILE, Sweep, load_sweep
from nrcc_scale.utils.files import atomic_write_text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nrcc_scale.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, metavar="FILE", help="sweep file (configs/tune/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="tune.* keys change the sweep settings; other keys are training overrides")
    return parser


def _note_changed_sweep(sweep: Sweep) -> None:
    stored = sweep.path / SWEEP_FILE
    if stored.is_file() and yaml.safe_load(stored.read_text()) != yaml.safe_load(yaml.safe_dump(sweep.to_dict())):
        print(f"warning: the sweep in {sweep.path} was started with other settings ({stored}); a restored "
              f"sweep keeps its original search space and trials", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sweep = load_sweep(args.config, args.overrides)
    # Per-epoch reports carry the scheduler's metric only on monitor epochs and the final scores only at
    # the end; ASHA skips a result without its metric, so Tune's strict check would only get in the way.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    if os.environ.get("MLFLOW_TRACKING_URI"):
        # the trials' training runs (logged by their workers, which inherit this environment on a local
        # Ray) land in the same MLflow experiment as Tune's per-trial results
        os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", sweep.settings.name)

    from ray import tune

    from nrcc_scale.ray_setup import init_ray

    data_cpus = sweep.base.ray.data_cpus if sweep.base.data.format == "ray_data" else 0
    print(init_ray(sweep.base.ray, data_cpus=data_cpus), flush=True)
    restore = tune.Tuner.can_restore(str(sweep.path))
    if restore:
        _note_changed_sweep(sweep)
        print(f"resuming the sweep in {sweep.path}: finished trials are kept, the others continue from their "
              f"latest checkpoints", flush=True)
    else:
        sweep.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(sweep.path / SWEEP_FILE, yaml.safe_dump(sweep.to_dict(), sort_keys=False))
        print(f"sweep {sweep.settings.name}: {len(sweep.search_space)} searched key(s), results in {sweep.path}",
              flush=True)
    result_grid = build_tuner(sweep, restore).fit()

    rows = result_rows(result_grid, sweep)
    if not rows:
        raise RuntimeError(f"the sweep in {sweep.path} has no trials")
    write_results(rows, sweep.path / RESULTS_CSV)
    print()
    print(format_table(rows))
    print(f"\nresults: {sweep.path / RESULTS_CSV}")
    s = sweep.settings
    best = best_row(rows, s.metric, s.mode)
    if best is None:
        print(f"no trial reported {s.metric}; nothing to call best", file=sys.stderr)
        return 1
    write_best_config(sweep, best, sweep.path / BEST_CONFIG)
    print(f"best trial {best['trial']}: {s.metric} = {best[s.metric]:.4g} "
          f"({', '.join(f'{k}={best[k]}' for k in sweep.search_space)})")
    print(f"best config: {sweep.path / BEST_CONFIG}  (python -m nrcc_scale.train --config {sweep.path / BEST_CONFIG})",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
