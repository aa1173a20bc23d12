"""The Ray Tune side of ``python -m nrcc_scale.tune``: search-space objects, ASHA, loggers, the trial driver.

How a trial runs (Ray Train V2): :func:`run_trial` is a small driver that builds the same TorchTrainer as
``python -m nrcc_scale.train`` (named ``trial_<trial id>``, stored under ``<sweep>/runs``) and calls ``fit()``;
Tune's ``TuneReportCallback`` forwards every epoch's report of rank 0 to Tune, and after ``fit()`` the driver
evaluates the final checkpoint and reports those scores as the trial's last result (``nrcc_scale.tune``'s
docstring has the whole picture). Ray is imported inside the functions: the sweep schema is Ray-free.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from nrcc_scale.config import Config
from nrcc_scale.config import save_config as save_train_config
from nrcc_scale.engine.context import numeric_metrics
from nrcc_scale.tune_schema import RUNS_DIR, Sweep, trial_config


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


def make_scheduler(sweep: Sweep) -> Any:
    """ASHA over epochs (``time_attr="epoch"``, the loop's own counter, which stays right when a restored
    trial continues mid-run). ``stop_last_trials=False``: a trial that reaches the last epoch is not
    stopped by ASHA, so its driver still evaluates and reports the final scores."""
    s = sweep.settings
    if s.scheduler.type == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="epoch", metric=s.scheduler.metric or s.metric,
                         mode=s.scheduler.mode or s.mode, max_t=sweep.max_epochs(),
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
