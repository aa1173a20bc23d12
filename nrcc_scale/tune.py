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

Resuming: run the same command again. If ``<storage_path>/<name>`` holds a Tune experiment,
``Tuner.restore`` picks it up: finished trials are kept, unfinished and errored ones run again, and their
Ray Train run (same name, same storage) continues from its latest checkpoint instead of epoch 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nrcc_scale.cli import run_main
from nrcc_scale.config import (
    Config,
    ConfigError,
    apply_mapping,
    apply_overrides,
    config_from_dict,
    load_config,
    parse_override,
    read_yaml,
)
from nrcc_scale.config import save_config as save_train_config
from nrcc_scale.engine.context import numeric_metrics
from nrcc_scale.utils.files import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = "runs"
RESULTS_CSV = "results.csv"
BEST_CONFIG = "best_config.yaml"
SWEEP_FILE = "sweep.yaml"
#: Metrics the training loop reports only on monitor epochs (``train.monitor_every``).
MONITOR_METRICS = ("knn_acc", "global_std", "monitor_nmi", "monitor_acc", "monitor_ari", "monitor_clusters",
                   # label-free monitors (nrcc_scale.evaluation.monitor.MONITORED_LABEL_FREE): ASHA without labels
                   "monitor_rankme", "monitor_stability", "monitor_silhouette", "monitor_cluster_size_cv",
                   "monitor_singleton_fraction")
#: Final scores that need labels, and those that do not (nrcc_scale.evaluation.label_free).
LABELLED_METRICS = ("nmi", "acc", "ari", "ami", "knn_acc", "linear_acc", "monitor_nmi", "monitor_acc", "monitor_ari")
LABEL_FREE_METRICS = ("rankme", "stability", "silhouette", "num_clusters", "cluster_size_cv",
                      "largest_cluster_fraction", "singleton_fraction", "global_std")
#: What tune.metric and tune.scheduler.metric may name.
KNOWN_METRICS = tuple(dict.fromkeys(LABELLED_METRICS + LABEL_FREE_METRICS + MONITOR_METRICS
                                    + ("loss", "loss_base", "loss_nrcc")))
#: Columns of the results table after the trial, its status and the searched keys (when present): the
#: label-free scores beside the labelled ones (columns no trial reported, e.g. NMI without labels, are dropped).
TABLE_METRICS = ("nmi", "acc", "ari", "num_clusters", "knn_acc", "linear_acc", "rankme", "stability", "silhouette",
                 "singleton_fraction", "monitor_nmi", "loss", "epoch")
DOMAIN_KINDS = ("grid", "choice", "uniform", "loguniform", "quniform", "randint")


# ----------------------------------------------------------------------------------------------------------
# The sweep file
# ----------------------------------------------------------------------------------------------------------


@dataclass
class SchedulerSettings:
    type: str = "none"  # none | asha
    metric: str | None = None  # per-epoch metric ASHA compares; None: tune.metric
    mode: str | None = None  # None: tune.mode
    grace_period: int = 1  # epochs before a trial can be stopped
    reduction_factor: float = 3.0


@dataclass
class ResourceSettings:
    """Each trial's Ray Train workers; None keeps the base config's ``train.*`` value."""

    num_workers: int | None = None
    cpus_per_worker: int | None = None
    use_gpu: bool | None = None
    driver_memory_gb: float = 1.0  # Ray memory resource the trial driver reserves (it runs the evaluation)


@dataclass
class TuneSettings:
    name: str = ""  # "" = the sweep file's name
    storage_path: str = "~/nrcc_scale_runs/tune"
    metric: str = "nmi"
    mode: str = "max"  # max | min
    num_samples: int = 1  # samples per grid point (random search: the number of trials)
    max_concurrent_trials: int | None = None  # None: as many as the cluster's CPUs/GPUs fit
    evaluate: bool = True  # evaluate each finished trial's checkpoint (clustering + kNN scores)
    max_failures: int = 0  # Tune-level retries of a failed trial (Ray Train retries come first)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    resources: ResourceSettings = field(default_factory=ResourceSettings)


@dataclass
class Sweep:
    """A resolved sweep: the base training config, the search space and the settings."""

    base: Config
    search_space: dict[str, Any]
    settings: TuneSettings
    source: str = ""

    @property
    def path(self) -> Path:
        return Path(self.settings.storage_path).expanduser().resolve() / self.settings.name

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "search_space": self.search_space, "tune": asdict(self.settings),
                "base": self.base.to_dict()}


def _resolve_config_path(name: str, sweep_file: Path) -> Path:
    """A base config file: absolute, or relative to the current directory, the repository or the sweep file."""
    path = Path(name).expanduser()
    if path.is_absolute():
        return path
    for root in (Path.cwd(), REPO_ROOT, sweep_file.parent):
        if (root / path).is_file():
            return root / path
    raise ConfigError(f"{sweep_file}: base config {name} not found (relative to the current directory, "
                      f"{REPO_ROOT} or {sweep_file.parent})")


def _check_domain(key: str, spec: Any) -> None:
    if not isinstance(spec, dict):
        return  # a fixed value
    if len(spec) != 1 or next(iter(spec)) not in DOMAIN_KINDS:
        raise ConfigError(f"search_space.{key} = {spec!r}: expected one of {', '.join(DOMAIN_KINDS)}, "
                          f"e.g. {{grid: [0.1, 1, 10]}} or {{loguniform: [1e-3, 1e-1]}}")
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        raise ConfigError(f"search_space.{key}.{kind} = {args!r}: expected a non-empty list")
    if kind in ("uniform", "loguniform", "randint", "quniform"):
        want = 3 if kind == "quniform" else 2
        if len(args) != want or not all(isinstance(a, (int, float)) for a in args) or not args[0] < args[1]:
            raise ConfigError(f"search_space.{key}.{kind} = {args!r}: expected [low, high"
                              f"{', q' if kind == 'quniform' else ''}] with low < high")
        if kind == "loguniform" and args[0] <= 0:
            raise ConfigError(f"search_space.{key}.loguniform = {args!r}: low must be > 0")


def _probe_values(spec: Any) -> list[Any]:
    """Values of a domain to try on the base config, so a bad key or value fails before any trial runs."""
    if not isinstance(spec, dict):
        return [spec]
    kind, args = next(iter(spec.items()))
    if kind in ("grid", "choice"):
        return list(args)
    if kind == "randint":
        return [args[0], args[1] - 1]
    return [args[0], args[1]]


def override_text(key: str, value: Any) -> str:
    """``key=value`` with the value in YAML flow syntax (JSON), as :func:`nrcc_scale.config.parse_override` reads it."""
    if hasattr(value, "item"):  # numpy scalars from Tune's samplers
        value = value.item()
    return f"{key}={json.dumps(value)}"


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> Config:
    """The training config of one trial: the base with the sampled values written in, validated."""
    return apply_overrides(config_from_dict(base, validate=False),
                           [override_text(k, v) for k, v in sorted(params.items())])


def load_sweep(path: str | Path, extra: Sequence[str] = ()) -> Sweep:
    """Read a sweep file plus command-line ``key=value`` extras; check everything a trial will need."""
    path = Path(path)
    data = read_yaml(path)
    unknown = set(data) - {"base", "search_space", "tune"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}; allowed: base, search_space, tune")
    base_spec = data.get("base") or {}
    if not isinstance(base_spec, dict) or set(base_spec) - {"configs", "overrides"}:
        raise ConfigError(f"{path}: base must be a mapping with 'configs' and/or 'overrides'")
    settings = TuneSettings()
    apply_mapping(settings, data.get("tune") or {}, "tune.")
    train_overrides = [str(o) for o in base_spec.get("overrides") or []]
    for text in extra:
        key, value = parse_override(text)
        if key.startswith("tune."):
            nested: Any = value
            for part in reversed(key.split(".")[1:]):
                nested = {part: nested}
            apply_mapping(settings, nested, "tune.")
        else:
            train_overrides.append(text)
    res = settings.resources
    for key in ("num_workers", "cpus_per_worker", "use_gpu"):
        if getattr(res, key) is not None:
            train_overrides.append(override_text(f"train.{key}", getattr(res, key)))
    files = [_resolve_config_path(str(f), path) for f in base_spec.get("configs") or []]
    base = load_config(files, train_overrides)
    settings.name = settings.name or path.stem
    _validate_settings(settings, base)

    space = data.get("search_space") or {}
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{path}: search_space is empty; give at least one key, e.g. "
                          f"method.nrcc.weight: {{grid: [0.1, 0.5, 1]}}")
    for key, spec in space.items():
        _check_domain(key, spec)
        for value in _probe_values(spec):
            try:
                trial_config(base.to_dict(), {key: value})
            except ConfigError as err:
                raise ConfigError(f"search_space.{key}: {err}") from None
    return Sweep(base, dict(space), settings, str(path))


def _validate_settings(s: TuneSettings, base: Config) -> None:
    if s.mode not in ("max", "min") or (s.scheduler.mode or s.mode) not in ("max", "min"):
        raise ConfigError(f"tune.mode = {s.mode!r}: allowed values are max, min")
    if s.scheduler.type not in ("none", "asha"):
        raise ConfigError(f"tune.scheduler.type = {s.scheduler.type!r}: allowed values are none, asha")
    if s.num_samples < 1 or (s.max_concurrent_trials is not None and s.max_concurrent_trials < 1):
        raise ConfigError("tune.num_samples and tune.max_concurrent_trials must be >= 1")
    if s.scheduler.grace_period < 1 or s.scheduler.reduction_factor <= 1:
        raise ConfigError("tune.scheduler: grace_period must be >= 1 and reduction_factor > 1")
    if "/" in s.name or s.name.startswith("."):
        raise ConfigError(f"tune.name = {s.name!r}: a sweep name is one folder name")
    if s.resources.driver_memory_gb <= 0:
        raise ConfigError("tune.resources.driver_memory_gb must be > 0")
    asha_metric = s.scheduler.metric or s.metric
    for key, name in (("tune.metric", s.metric), ("tune.scheduler.metric", asha_metric)):
        if name not in KNOWN_METRICS:
            raise ConfigError(f"{key} = {name!r}: not a reported metric; allowed: {', '.join(KNOWN_METRICS)}")
        if name in LABELLED_METRICS and _unlabelled(base):
            raise ConfigError(f"{key} = {name!r} needs labels, but the data are unlabelled "
                              f"(data.labels / a folder without class folders); use a label-free score: "
                              f"{', '.join(LABEL_FREE_METRICS)} or the monitor_* ones")
    if s.scheduler.type == "asha" and asha_metric in MONITOR_METRICS and base.train.monitor_every == 0:
        print(f"warning: ASHA compares {asha_metric}, which the training monitor reports only at the last "
              f"epoch with train.monitor_every=0; set it to a few epochs so that ASHA can stop trials early",
              file=sys.stderr)


def _unlabelled(base: Config) -> bool:
    """Whether the sweep's data are known, cheaply and before any trial, to have no labels."""
    if base.data.labels == "none":
        return True
    if base.data.dataset == "image_folder" and base.data.root:
        from nrcc_scale.data.unlabelled import has_top_level_images

        root = Path(base.data.root).expanduser()
        return root.is_dir() and has_top_level_images(root)
    return False


# ----------------------------------------------------------------------------------------------------------
# Ray Tune objects
# ----------------------------------------------------------------------------------------------------------


def param_space(space: dict[str, Any]) -> dict[str, Any]:
    """The sweep file's domains as Ray Tune search-space objects."""
    from ray import tune

    makers = {"grid": lambda a: tune.grid_search(list(a)), "choice": lambda a: tune.choice(list(a)),
              "uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
              "quniform": lambda a: tune.quniform(*a), "randint": lambda a: tune.randint(*a)}
    out = {}
    for key, spec in space.items():
        if isinstance(spec, dict):
            kind, args = next(iter(spec.items()))
            out[key] = makers[kind](args)
        else:
            out[key] = spec
    return out


def _max_epochs(sweep: Sweep) -> int:
    """ASHA's ``max_t``: the most epochs any trial can run (train.epochs may itself be searched)."""
    spec = sweep.search_space.get("train.epochs")
    return max(int(v) for v in _probe_values(spec)) if spec is not None else sweep.base.train.epochs


def make_scheduler(sweep: Sweep) -> Any:
    """ASHA over epochs (``time_attr="epoch"``, the loop's own counter, which stays right when a restored
    trial continues mid-run). ``stop_last_trials=False``: a trial that reaches the last epoch is not
    stopped by ASHA, so its driver still evaluates and reports the final scores."""
    s = sweep.settings
    if s.scheduler.type == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="epoch", metric=s.scheduler.metric or s.metric,
                         mode=s.scheduler.mode or s.mode, max_t=_max_epochs(sweep),
                         grace_period=s.scheduler.grace_period, reduction_factor=s.scheduler.reduction_factor,
                         stop_last_trials=False)


def default_concurrency(base: Config) -> int:
    """How many trials the cluster can run at once, from its CPUs (or GPUs) and one trial's workers."""
    import ray

    resources = ray.cluster_resources()
    t = base.train
    if t.use_gpu:
        return max(1, int(resources.get("GPU", 0) // t.num_workers))
    return max(1, int(resources.get("CPU", 0) // (t.num_workers * t.cpus_per_worker)))


def logger_callbacks(name: str) -> list[Any]:
    """Tune's TensorBoard logger (explicit; Tune would add it anyway) and MLflow's when ``mlflow`` is
    importable and ``MLFLOW_TRACKING_URI`` is set (credentials stay in MLflow's own variables)."""
    from ray.tune.logger import TBXLoggerCallback

    callbacks: list[Any] = [TBXLoggerCallback()]
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        try:
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            callbacks.append(MLflowLoggerCallback(tracking_uri=uri,
                                                  experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", name)))
        except ImportError:
            print("note: MLFLOW_TRACKING_URI is set but mlflow is not installed; logging to TensorBoard only",
                  file=sys.stderr)
    return callbacks


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def run_trial(params: dict[str, Any], base: dict[str, Any], runs_dir: str, evaluate: bool) -> None:
    """One trial (runs in a Tune trial actor): fit a TorchTrainer with this trial's config, forwarding
    every epoch's report to Tune, then evaluate the final checkpoint and report its scores."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from nrcc_scale.train import build_trainer, fit_trainer, resolve_run_dir

    cfg = trial_config(base, params)
    cfg.name = f"trial_{ray.tune.get_context().get_trial_id()}"
    cfg.storage_path = runs_dir
    storage, run_dir = resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_train_config(cfg, run_dir / "config.yaml")
    checkpoint = fit_trainer(build_trainer(cfg, storage, run_dir, callbacks=[TuneReportCallback()]),
                             storage, cfg.name)
    if not evaluate:
        return
    from nrcc_scale.engine.checkpoint import read_state
    from nrcc_scale.evaluation.checkpoint_eval import evaluate_checkpoint

    scores, _table = evaluate_checkpoint(checkpoint, run_dir)
    last_epoch = dict(read_state(checkpoint).history[-1])
    ray.tune.report({**numeric_metrics(last_epoch), **numeric_metrics(scores), "evaluated": 1})


def build_tuner(sweep: Sweep, restore: bool) -> Any:
    """A new Tuner, or the one stored in ``sweep.path`` (``Tuner.restore``) when ``restore`` is true."""
    from ray import tune

    s = sweep.settings
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=sweep.base.to_dict(), runs_dir=str(sweep.path / RUNS_DIR),
                             evaluate=s.evaluate),
        {"CPU": 0, "memory": int(s.resources.driver_memory_gb * 1024**3)})
    if restore:
        return tune.Tuner.restore(str(sweep.path), trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    concurrency = s.max_concurrent_trials or default_concurrency(sweep.base)
    return tune.Tuner(
        trainable,
        param_space=param_space(sweep.search_space),
        tune_config=tune.TuneConfig(num_samples=s.num_samples, max_concurrent_trials=concurrency,
                                    scheduler=make_scheduler(sweep), trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=s.name, storage_path=str(sweep.path.parent),
                                  callbacks=logger_callbacks(s.name),
                                  failure_config=tune.FailureConfig(max_failures=s.max_failures)),
    )


# ----------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------


def result_rows(result_grid: Any, sweep: Sweep) -> list[dict[str, Any]]:
    """One row per trial: id, status, searched values, then the metrics of its last report."""
    keys = list(sweep.search_space)
    epochs = _max_epochs(sweep)
    rows = []
    for result in result_grid:
        metrics = dict(result.metrics or {})
        trial = metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_")
        if result.error is not None:
            status = "error"
        elif metrics.get("evaluated"):
            status = "done"
        elif int(metrics.get("epoch", 0)) < epochs:
            status = "stopped early"
        else:
            status = "done" if not sweep.settings.evaluate else "not evaluated"
        row: dict[str, Any] = {"trial": trial, "status": status}
        row.update({k: (result.config or {}).get(k) for k in keys})
        for name in dict.fromkeys([sweep.settings.metric, *TABLE_METRICS]):
            row[name] = metrics.get(name)
        row["run_dir"] = str(sweep.path / RUNS_DIR / f"trial_{trial}")
        row["error"] = str(result.error).splitlines()[0][:200] if result.error is not None else ""
        rows.append(row)
    return sorted(rows, key=lambda r: str(r["trial"]))


def best_row(rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    scored = [r for r in rows if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda r: r[metric])


def format_table(rows: list[dict[str, Any]]) -> str:
    columns = [c for c in rows[0] if c not in ("run_dir", "error") and any(r.get(c) is not None for r in rows)]

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(lines)


def write_results(rows: list[dict[str, Any]], path: Path) -> None:
    from io import StringIO

    buffer = StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def write_best_config(sweep: Sweep, row: dict[str, Any], path: Path) -> Config:
    """The best trial's full training config, as a file ``python -m nrcc_scale.train --config`` takes: the
    base config's storage and an empty run name (a fresh, timestamped run, not a resume of the trial)."""
    cfg = trial_config(sweep.base.to_dict(), {k: row[k] for k in sweep.search_space})
    cfg.name = ""
    save_train_config(cfg, path)
    return cfg


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


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
