"""``python -m nrcc_scale.tune``: the sweep file format, and a real sweep that is interrupted and resumed.

Fast: the sweep files shipped in configs/tune load; mistakes in a sweep file are reported before any trial
runs; the search space becomes Tune domains; ASHA counts epochs and lets finishing trials be evaluated; the
best config written for the best trial is one ``python -m nrcc_scale.train --config`` takes.

Slow: configs/tune/smoke.yaml (2 trials on digits, 1 one-CPU Ray Train worker each, run concurrently on 2
CPUs). One trial's worker hangs at the start of epoch 2 (testing aid ``NRCC_FAULT_AT``, fires once); the
tune driver is SIGKILLed with everything it started once Tune's experiment state holds both trials and
their epoch-1 checkpoints exist. The same command then resumes the sweep (``Tuner.restore``), the hung
trial continues from its epoch-1 checkpoint (no epoch repeated), and the sweep ends with a results table
(printed and CSV), a best config that ``load_config`` accepts, and TensorBoard logs.
"""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_resume import kill_tree

from nrcc_scale.config import ConfigError
from nrcc_scale.config_load import load_config
from nrcc_scale.engine.checkpoint import find_latest_checkpoint, read_state
from nrcc_scale.engine.context import RUN_DIR_TAG
from nrcc_scale.testing import FAULT_ENV, FAULT_MARKER_ENV
from nrcc_scale.train import RAY_RUN_SNAPSHOT
from nrcc_scale.tune_ray import make_scheduler, param_space
from nrcc_scale.tune_results import best_row, write_best_config
from nrcc_scale.tune_schema import BEST_CONFIG, RESULTS_CSV, RUNS_DIR, load_sweep, trial_config

REPO = Path(__file__).resolve().parents[1]
TUNE_CONFIGS = sorted((REPO / "configs" / "tune").glob("*.yaml"))
SMOKE = REPO / "configs" / "tune" / "smoke.yaml"
EPOCHS = 3
TIMEOUT_S = 480


def _sweep_file(tmp_path: Path, search_space: dict, tune: dict | None = None) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": {"configs": ["configs/default.yaml"], "overrides": ["train.epochs=4"]},
                                    "search_space": search_space,
                                    "tune": {"storage_path": str(tmp_path), **(tune or {})}}))
    return path


# ----------------------------------------------------------------------------------------------------------
# fast
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", TUNE_CONFIGS, ids=lambda p: p.stem)
def test_shipped_sweeps_load(path: Path) -> None:
    sweep = load_sweep(path)
    assert sweep.settings.name == path.stem
    assert sweep.search_space and param_space(sweep.search_space).keys() == sweep.search_space.keys()


def test_paper_grid_is_the_papers_grid() -> None:
    sweep = load_sweep(REPO / "configs" / "tune" / "paper_grid.yaml")
    assert sweep.search_space["method.nrcc.temperature"] == {"grid": [0.1, 1.0, 10.0]}
    assert sweep.search_space["method.nrcc.weight"] == {"grid": [0.1, 0.5, 1.0]}
    assert sweep.base.method.name == "byol" and sweep.base.uses_nrcc


def test_asha_random_searches_lambda_tau_deltas_and_lr() -> None:
    sweep = load_sweep(REPO / "configs" / "tune" / "asha_random.yaml")
    wanted = {"method.nrcc.weight", "method.nrcc.temperature", "method.nrcc.sghmc.delta1",
              "method.nrcc.sghmc.delta2", "method.nrcc.sghmc.delta3", "optim.base_lr"}
    assert wanted <= set(sweep.search_space)
    scheduler = make_scheduler(sweep)
    # epochs as the time axis, max_t = train.epochs, and trials that reach it are not stopped by ASHA
    assert scheduler._time_attr == "epoch" and scheduler._max_t == sweep.base.train.epochs
    assert scheduler._metric == "knn_acc" and scheduler._stop_last_trials is False


@pytest.mark.parametrize("space, message", [
    ({"method.nrcc.wieght": {"grid": [0.1]}}, "unknown key 'method.nrcc.wieght'"),
    ({"method.nrcc.weight": {"grid": [-1.0]}}, "method.nrcc.weight = -1.0"),
    ({"method.nrcc.weight": {"normal": [0, 1]}}, "expected one of grid"),
    ({"method.nrcc.weight": {"uniform": [1.0, 0.5]}}, "low < high"),
    ({"optim.base_lr": {"loguniform": [0.0, 0.1]}}, "low must be > 0"),
    ({}, "search_space is empty"),
])
def test_sweep_mistakes_are_reported_before_anything_runs(tmp_path: Path, space: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_sweep(_sweep_file(tmp_path, space))


def test_command_line_extras_and_resources(tmp_path: Path) -> None:
    path = _sweep_file(tmp_path, {"method.nrcc.weight": {"grid": [0.1, 0.5]}},
                       {"resources": {"num_workers": 1, "cpus_per_worker": 2}})
    sweep = load_sweep(path, ["tune.scheduler.type=asha", "tune.num_samples=3", "train.epochs=7"])
    assert sweep.settings.scheduler.type == "asha" and sweep.settings.num_samples == 3
    assert sweep.base.train.epochs == 7 and make_scheduler(sweep)._max_t == 7
    assert sweep.base.train.num_workers == 1 and sweep.base.train.cpus_per_worker == 2
    with pytest.raises(ConfigError, match="tune.scheduler.type"):
        load_sweep(path, ["tune.scheduler.type=hyperband"])
    with pytest.raises(ConfigError, match="unknown key 'tune.metrc'"):
        load_sweep(path, ["tune.metrc=acc"])


def test_best_config_is_a_train_config(tmp_path: Path) -> None:
    sweep = load_sweep(_sweep_file(tmp_path, {"method.nrcc.weight": {"grid": [0.1, 0.5]},
                                              "method.nrcc.sghmc.steps": {"randint": [1, 4]}}))
    rows = [{"trial": "a", "method.nrcc.weight": 0.1, "method.nrcc.sghmc.steps": 2, "nmi": 0.4},
            {"trial": "b", "method.nrcc.weight": 0.5, "method.nrcc.sghmc.steps": 3, "nmi": 0.6},
            {"trial": "c", "method.nrcc.weight": 0.5, "method.nrcc.sghmc.steps": 1, "nmi": float("nan")}]
    best = best_row(rows, "nmi", "max")
    assert best["trial"] == "b" and best_row(rows, "nmi", "min")["trial"] == "a"
    write_best_config(sweep, best, tmp_path / BEST_CONFIG)
    cfg = load_config([tmp_path / BEST_CONFIG])
    assert cfg.method.nrcc.weight == 0.5 and cfg.method.nrcc.sghmc.steps == 3 and cfg.train.epochs == 4
    assert cfg.name == ""  # a fresh, timestamped run, not a resume of the trial's run


def test_trial_config_is_the_command_line_config() -> None:
    """A trial's sampled values (numpy scalars from Tune's samplers, strings, lists, null) are written in as
    mappings and give the config the same ``key=value`` overrides give on the command line."""
    params = {"method.nrcc.weight": np.float64(0.5), "method.nrcc.sghmc.steps": np.int64(3), "optim.base_lr": 1e-05,
              "method.nrcc.negatives": "hmc", "eval.bandwidth": None, "method.cueco.weights": [1, 0.5, 0.2],
              "method.nrcc.enabled": np.bool_(True), "name": 123}
    cfg = trial_config(load_config().to_dict(), params)
    assert cfg == load_config(overrides=["method.nrcc.weight=0.5", "method.nrcc.sghmc.steps=3", "optim.base_lr=1e-05",
                                         "method.nrcc.negatives=hmc", "eval.bandwidth=null",
                                         "method.cueco.weights=[1, 0.5, 0.2]", "method.nrcc.enabled=true", "name=123"])
    assert type(cfg.method.nrcc.sghmc.steps) is int and type(cfg.method.nrcc.weight) is float
    with pytest.raises(ConfigError, match=re.escape("method.nrcc.sghmc.steps = 0: must be in [1, inf]")):
        trial_config(load_config().to_dict(), {"method.nrcc.sghmc.steps": np.int64(0)})


# ----------------------------------------------------------------------------------------------------------
# slow: a real sweep, interrupted and resumed
# ----------------------------------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("RAY_ADDRESS", FAULT_ENV, FAULT_MARKER_ENV):
        env.pop(key, None)
    env.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": secrets.token_hex(32), **extra})
    return env


def _sweep_ready_to_kill(sweep_dir: Path, marker: Path) -> bool:
    """Both trials are in Tune's saved experiment state, every trial's epoch-1 checkpoint is registered,
    and the hang has fired (so one trial cannot have finished)."""
    runs = sorted((sweep_dir / RUNS_DIR).glob("trial_*"))
    states = sorted(sweep_dir.glob("experiment_state-*.json"))
    if not marker.exists() or len(runs) < 2 or not states:
        return False
    saved = states[-1].read_text(errors="replace")
    for run in runs:
        snapshot = run / RAY_RUN_SNAPSHOT
        if run.name.removeprefix("trial_") not in saved or not snapshot.is_file():
            return False
        if "checkpoint_000001" not in snapshot.read_text(errors="replace"):
            return False
    return True


@pytest.mark.slow
def test_sweep_interrupted_then_resumed(tmp_path: Path, monkeypatch) -> None:
    sweep_dir = tmp_path / "smoke"
    marker = tmp_path / "hang_marker"
    cmd = [sys.executable, "-m", "nrcc_scale.tune", "--config", str(SMOKE), f"tune.storage_path={tmp_path}",
           f"train.epochs={EPOCHS}", "ray.num_cpus=2", "train.use_gpu=false"]  # CPU-designed: pinned
    mlflow_store = tmp_path / "mlflow"
    env = _env(**{FAULT_ENV: "2:0:0:hang", FAULT_MARKER_ENV: str(marker),
                  "MLFLOW_TRACKING_URI": f"file://{mlflow_store}", "MLFLOW_ALLOW_FILE_STORE": "true"})

    log = tmp_path / "first.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while not _sweep_ready_to_kill(sweep_dir, marker):
                assert proc.poll() is None, f"the sweep ended (rc={proc.returncode}):\n{log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, f"sweep never got ready to kill:\n{log.read_text()[-4000:]}"
                time.sleep(0.5)
        finally:
            kill_tree(proc)
    first = log.read_text()
    assert "sweep smoke: 1 searched key(s)" in first
    assert not (sweep_dir / RESULTS_CSV).exists()

    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert f"resuming the sweep in {sweep_dir}" in out
    # the trial that hung continues from its registered epoch-1 checkpoint
    assert re.search(r"resumed from \S*/runs/trial_\w+/checkpoint_000001 at epoch 1", out), out[-5000:]

    # every trial trained epochs 1..EPOCHS exactly once, and was evaluated
    runs_dirs = sorted((sweep_dir / RUNS_DIR).glob("trial_*"))
    assert len(runs_dirs) == 2
    for run in runs_dirs:
        history = read_state(find_latest_checkpoint(run)).history
        assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1)), run
        assert 0.0 <= json.loads((run / "metrics.json").read_text())["nmi"] <= 1.0
        assert list((run / "tensorboard").glob("events.out.tfevents.*")), "no training TensorBoard events"

    with (sweep_dir / RESULTS_CSV).open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(float(r["method.nrcc.weight"]) for r in rows) == [0.1, 0.5]
    assert all(r["status"] == "done" and 0.0 <= float(r["nmi"]) <= 1.0 for r in rows), rows
    assert "nmi" in out and "best trial" in out  # the printed table and verdict
    best = max(rows, key=lambda r: float(r["nmi"]))

    cfg = load_config([sweep_dir / BEST_CONFIG])
    assert cfg.method.nrcc.weight == float(best["method.nrcc.weight"])
    assert cfg.train.epochs == EPOCHS and cfg.train.num_workers == 1 and cfg.name == ""

    # Tune's own loggers: one TensorBoard event file per trial, with a result per epoch plus the final one
    for trial_dir in sorted(sweep_dir.glob("trial_*")):
        assert list(trial_dir.glob("events.out.tfevents.*")), trial_dir
        results = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line]
        assert {r.get("epoch") for r in results} >= {EPOCHS} and any(r.get("evaluated") for r in results)

    # MLflow (a real local store): Tune's MLflowLoggerCallback records each trial's results, and each
    # trial's training workers log one loss series over epochs 1..EPOCHS, continued across the resume
    # (Tune's callback starts new MLflow runs for the trials of a resumed sweep: the killed attempt's runs
    # stay RUNNING in the store; that is Ray's behaviour.)
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=f"file://{mlflow_store}")
    experiment = client.get_experiment_by_name("smoke")
    assert experiment is not None, "the sweep's MLflow experiment is missing"
    runs = client.search_runs([experiment.experiment_id])
    training = [r for r in runs if RUN_DIR_TAG in r.data.tags]
    assert sorted(Path(r.data.tags[RUN_DIR_TAG]).name for r in training) == sorted(r.name for r in runs_dirs)
    for run in training:
        # one series per trial; an epoch that was trained but not checkpointed before the kill is trained
        # (and logged) again after the resume, but nothing restarts from epoch 1
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
        assert steps == sorted(steps) and sorted(set(steps)) == list(range(1, EPOCHS + 1)), steps
        assert steps.count(1) == 1, (run.data.tags[RUN_DIR_TAG], steps)
    tune_runs = [r for r in runs if RUN_DIR_TAG not in r.data.tags and "nmi" in r.data.metrics]
    assert sorted(float(r.data.params["method.nrcc.weight"]) for r in tune_runs) == [0.1, 0.5], \
        [(r.info.run_name, r.data.params) for r in runs]
