"""Exact resume: a checkpoint holds everything a run needs, and a resumed run ends bit-identical.

Fast (in this process, no Ray): what a checkpoint contains and that it loads with ``weights_only=True``
(BYOL+NRCC and CueCo, whose queue and centroids are method state); an injected failure in epoch 2 and a
resume from the epoch-1 checkpoint end with the same weights as an uninterrupted run.

Slow (subprocesses, real Ray Train with 2 gloo workers, and ``--no-ray``):
(a) a worker raises mid-epoch under ``FailureConfig(max_failures=1)`` -> Ray restarts the worker group from
    the latest checkpoint and the run finishes bit-identical to an uninterrupted one;
(b) the driver is SIGKILLed mid-training, the same command runs again -> Ray Train V2 restores the run from
    its snapshot in ``storage_path/name``, no epoch runs twice, and the weights are again bit-identical;
(c) the process is SIGKILLed while it writes a checkpoint -> the previous checkpoint is still the latest
    complete one, it loads, and the same command resumes from it.

The fault and slow-write hooks are the testing aids ``NRCC_FAULT_AT`` and ``NRCC_TEST_CHECKPOINT_PAUSE``
(nrcc_scale/testing.py, plugged into the loop by ``nrcc_scale.train.loop_hooks``); both are inert unless set.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from nrcc_scale.config_load import load_config
from nrcc_scale.engine.checkpoint import (
    REQUIRED_STATE_KEYS,
    CheckpointError,
    TrainingState,
    checkpoint_is_complete,
    find_latest_checkpoint,
    read_rng,
    read_state,
    rng_file,
    write_checkpoint,
)
from nrcc_scale.engine.context import TENSORBOARD_DIR, LocalContext
from nrcc_scale.engine.loop import LoopHooks, train_worker
from nrcc_scale.testing import FAULT_ENV, FAULT_MARKER_ENV, TEST_PAUSE_ENV, InjectedFault
from nrcc_scale.train import RAY_RUN_SNAPSHOT, loop_hooks
from nrcc_scale.utils.threads import keep_torch_threads

REPO = Path(__file__).resolve().parents[1]
# Small and quick, and still the default method (BYOL + NRCC with SGHMC negatives, whose noise and the
# photometric augmentation draw from the global RNG). holdout_fraction=0.9 trains on 180 digits;
# eval.n_neighbors above the set size makes the training monitor skip UMAP (kNN and std remain).
TINY = ["data.holdout_fraction=0.9", "train.batch_size=32", "train.checkpoint_every=1", "train.log_every=1000",
        "model.projector_hidden=64", "model.predictor_hidden=64", "model.projector_dim=32",
        "optim.warmup_epochs=1", "eval.n_neighbors=100000", "eval.enabled=false",
        # CPU-designed: on a GPU host, float32 on the CPU (bf16 on CUDA would break the bit-identical checks)
        "train.use_gpu=false", "train.amp=off"]
CUECO = ["method.name=cueco", "method.cueco.queue_size=64", "method.cueco.num_centroids=8"]
EPOCHS = 3
TIMEOUT_S = 420


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------


def _model_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    return read_state(checkpoint).model


def assert_bit_identical(a: Path, b: Path) -> None:
    """Model (online, target, predictor, buffers) and optimizer state of two checkpoints are equal bit for bit."""
    sa, sb = read_state(a), read_state(b)
    assert sa.epoch == sb.epoch and sa.step == sb.step
    assert sa.model.keys() == sb.model.keys()
    different = [k for k in sa.model if not torch.equal(sa.model[k], sb.model[k])]
    assert not different, f"{len(different)} model tensors differ, e.g. {different[:5]}"
    for pa, pb in zip(sa.optimizer["state"].values(), sb.optimizer["state"].values(), strict=True):
        for key in pa:
            assert torch.equal(pa[key], pb[key]), f"optimizer state {key} differs"


def _history_epochs(checkpoint: Path) -> list[int]:
    return [int(h["epoch"]) for h in read_state(checkpoint).history]


def _in_process(tmp: Path, name: str, overrides: list[str]) -> tuple[dict, LocalContext]:
    cfg = load_config(None, [*TINY, f"train.epochs={EPOCHS}", f"storage_path={tmp}", f"name={name}", *overrides])
    ctx = LocalContext(tmp / name, torch.device("cpu"))
    return cfg.to_dict(), ctx


@pytest.fixture
def one_thread():
    """Deterministic and fast on a shared 2-core machine; restores the thread count afterwards."""
    with keep_torch_threads():
        torch.set_num_threads(1)
        yield


# ----------------------------------------------------------------------------------------------------------
# fast: contents and in-process exact resume
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["byol_nrcc", "cueco"])
def test_checkpoint_holds_everything_for_an_exact_resume(tmp_path: Path, method: str, one_thread) -> None:
    overrides = ["train.epochs=1"] + (CUECO if method == "cueco" else [])
    cfg = load_config(None, [*TINY, *overrides])
    ctx = LocalContext(tmp_path, torch.device("cpu"))
    train_worker(cfg.to_dict(), ctx, loop_hooks())
    checkpoint = find_latest_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.name == "checkpoint_000001"
    assert checkpoint_is_complete(checkpoint)

    # Every file loads with weights_only=True (read_state/read_rng use it; load here too, explicitly).
    state = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=True)
    rng = torch.load(checkpoint / rng_file(0), map_location="cpu", weights_only=True)
    for key in REQUIRED_STATE_KEYS:
        assert key in state, key
    model = state["model"]
    assert any(k.startswith("online.backbone.") for k in model)
    assert any(k.startswith("target.") for k in model), "EMA target / momentum encoder missing"
    if method == "cueco":
        for key in ("queue", "queue_ptr", "clusters.centroids", "clusters.variances", "clusters.hit"):
            assert key in model, key
    else:
        assert any(k.startswith("predictor.") for k in model)
    assert any(k.endswith("running_mean") for k in model), "BatchNorm statistics missing"
    assert state["optimizer"]["state"], "optimizer state (momentum buffers) missing"
    assert state["epoch"] == 1 and state["sampler_epoch"] == 1
    assert state["step"] == state["schedule"]["steps_per_epoch"] > 0
    assert state["schedule"]["total_steps"] == state["step"]
    assert state["world_size"] == 1 and [h["epoch"] for h in state["history"]] == [1]
    assert "scaler" in state  # None on CPU (no fp16 scaling), a state dict under fp16
    assert set(rng) >= {"torch", "numpy", "python"}
    assert torch.equal(read_rng(checkpoint, 0)["torch"], rng["torch"])
    assert read_rng(checkpoint, 1) is None


@pytest.mark.parametrize("method", ["byol_nrcc", "cueco"])
def test_in_process_resume_after_a_failure_is_bit_identical(tmp_path: Path, monkeypatch, method: str,
                                                            one_thread) -> None:
    # BYOL+NRCC with the monitor after every epoch (between checkpoints): whatever it draws from the RNGs
    # is saved, and its kNN (faiss) must leave the training's thread count alone
    extra = CUECO if method == "cueco" else ["train.monitor_every=1"]
    config, ctx = _in_process(tmp_path, "straight", extra)
    train_worker(config, ctx, loop_hooks())

    monkeypatch.setenv(FAULT_ENV, "2:2:0")
    monkeypatch.setenv(FAULT_MARKER_ENV, str(tmp_path / "fault_marker"))
    config, ctx = _in_process(tmp_path, "resumed", extra)
    with pytest.raises(InjectedFault):
        train_worker(config, ctx, loop_hooks())
    assert (tmp_path / "fault_marker").exists()
    assert find_latest_checkpoint(tmp_path / "resumed").name == "checkpoint_000001"
    _, ctx = _in_process(tmp_path, "resumed", extra)
    train_worker(config, ctx, loop_hooks())  # the marker disarms the fault; resumes from epoch 1
    assert ctx.resumed_from is not None and ctx.resumed_from.endswith("checkpoint_000001")

    final = find_latest_checkpoint(tmp_path / "resumed")
    assert _history_epochs(final) == list(range(1, EPOCHS + 1))
    assert_bit_identical(find_latest_checkpoint(tmp_path / "straight"), final)
    # rank 0's TensorBoard scalars: one event file per attempt, none empty
    events = list((tmp_path / "resumed" / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    assert len(events) == 2 and all(e.stat().st_size > 100 for e in events), events


def test_fault_hook_is_inert_without_its_variables(monkeypatch) -> None:
    from nrcc_scale.config import ConfigError
    from nrcc_scale.testing import FaultInjector

    monkeypatch.delenv(FAULT_ENV, raising=False)
    assert FaultInjector.from_env() is None
    monkeypatch.setenv(FAULT_ENV, "2:0:0")
    monkeypatch.delenv(FAULT_MARKER_ENV, raising=False)
    with pytest.raises(ConfigError, match=FAULT_MARKER_ENV):
        FaultInjector.from_env()


def _state(**changes) -> TrainingState:
    fields = dict(model={"w": torch.arange(3.0)}, optimizer={"state": {}, "param_groups": []}, scaler=None, epoch=2,
                  step=10, sampler_epoch=2, schedule={"total_steps": 15}, history=[{"epoch": 1}, {"epoch": 2}],
                  config={"name": "x"}, world_size=2, resolution=16)
    return TrainingState(**{**fields, **changes})


def test_training_state_round_trips_through_the_plain_dict_on_disk(tmp_path: Path) -> None:
    state = _state()
    write_checkpoint(tmp_path, 0, {"torch": torch.get_rng_state()}, state)
    raw = torch.load(tmp_path / "state.pt", map_location="cpu", weights_only=True)
    assert set(raw) == {*REQUIRED_STATE_KEYS, "format_version"} and raw["format_version"] == 1
    back = read_state(tmp_path)
    assert torch.equal(back.model["w"], state.model["w"])
    assert (back.epoch, back.step, back.sampler_epoch, back.schedule, back.history, back.config, back.world_size,
            back.resolution, back.scaler) == (2, 10, 2, {"total_steps": 15}, state.history, {"name": "x"}, 2, 16, None)
    assert not checkpoint_is_complete(tmp_path)  # world size 2: rank 1's RNG file is missing
    write_checkpoint(tmp_path, 1, {"torch": torch.get_rng_state()}, None)
    assert checkpoint_is_complete(tmp_path)


def test_the_first_format_1_checkpoints_still_load(tmp_path: Path) -> None:
    """The spine's checkpoints had no sampler_epoch and schedule (and may lack world_size): the same dict
    without them loads, with the epoch as sampler epoch, no schedule to compare and an unknown world size."""
    raw = {k: v for k, v in _state().to_dict().items() if k not in ("sampler_epoch", "schedule", "world_size")}
    torch.save(raw, tmp_path / "state.pt")
    torch.save({"torch": torch.get_rng_state()}, tmp_path / rng_file(0))
    state = read_state(tmp_path)
    assert (state.sampler_epoch, state.schedule, state.world_size) == (2, None, None)
    assert checkpoint_is_complete(tmp_path)  # an unknown world size counts as one worker (as before)
    torch.save({k: v for k, v in raw.items() if k != "model"}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match="model missing"):
        read_state(tmp_path)


def test_monitor_hook_runs_on_its_epochs_and_leaves_torch_threads_alone(tmp_path: Path, one_thread) -> None:
    """The loop runs the monitor its caller hands it (none: no monitor) and restores torch's thread count
    around it, whatever the monitor does to the shared OpenMP pool."""
    seen: list[int] = []

    def monitor(method, cfg, data, resolution, device) -> dict[str, float]:
        seen.append(len(seen))
        torch.set_num_threads(2)  # as faiss's omp_set_num_threads does
        return {"knn_acc": 0.25}

    cfg = load_config(None, [*TINY, "train.epochs=2", "train.monitor_every=1"])
    train_worker(cfg.to_dict(), LocalContext(tmp_path / "hooked", torch.device("cpu")), LoopHooks(monitor=monitor))
    assert seen == [0, 1] and torch.get_num_threads() == 1
    assert [h.get("knn_acc") for h in read_state(find_latest_checkpoint(tmp_path / "hooked")).history] == [0.25] * 2
    train_worker(cfg.to_dict(), LocalContext(tmp_path / "bare", torch.device("cpu")), LoopHooks())
    assert all("knn_acc" not in h for h in read_state(find_latest_checkpoint(tmp_path / "bare")).history)


# ----------------------------------------------------------------------------------------------------------
# slow: real processes, real Ray Train
# ----------------------------------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("RAY_ADDRESS", FAULT_ENV, FAULT_MARKER_ENV, TEST_PAUSE_ENV):
        env.pop(key, None)
    env.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), **extra})
    return env


def _command(storage: Path, name: str, *extra: str, no_ray: bool = False) -> list[str]:
    return [sys.executable, "-m", "nrcc_scale.train", "--no-eval", *(["--no-ray"] if no_ray else []),
            f"storage_path={storage}", f"name={name}", *TINY, f"train.epochs={EPOCHS}", "ray.num_cpus=2", *extra]


def _run(cmd: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the process and everything it started (its local Ray included), and nothing else."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(family, timeout=15)
    proc.wait(timeout=15)


def _start_and_kill_when(cmd: list[str], env: dict[str, str], log: Path, ready, what: str) -> str:
    """Start ``cmd``; SIGKILL it (and its children) as soon as ``ready()`` is true; return its output."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while not ready():
                if proc.poll() is not None:
                    raise AssertionError(f"the run ended (rc={proc.returncode}) before {what}:\n"
                                         f"{log.read_text()[-4000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")
                time.sleep(0.3)
        finally:
            kill_tree(proc)
    return log.read_text()


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _epoch_lines(output: str) -> list[int]:
    """Epoch numbers of the per-epoch lines, in order (Ray prefixes worker lines with a coloured tag)."""
    plain = ANSI.sub("", output)
    return [int(m.group(1)) for m in re.finditer(rf"^(?:\(.*?\) )?epoch (\d+)/{EPOCHS} \|", plain, re.M)]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted Ray run with 2 workers: the final checkpoint every other Ray run must equal."""
    storage = tmp_path_factory.mktemp("reference")
    out = _run(_command(storage, "reference"), _env())
    assert "2 worker(s)" in out
    return find_latest_checkpoint(storage / "reference")


@pytest.mark.slow
def test_a_worker_failure_is_retried_and_the_result_is_bit_identical(reference_run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "fault_marker"
    out = _run(_command(tmp_path, "faulty", "train.max_failures=1"),
               _env(**{FAULT_ENV: "2:3:1", FAULT_MARKER_ENV: str(marker)}))
    assert marker.exists(), "the fault never fired"
    assert "injected fault at epoch 2 batch 3 on rank 1" in out
    assert re.search(r"resumed from \S*checkpoint_000001 at epoch 1", out), out[-4000:]
    final = find_latest_checkpoint(tmp_path / "faulty")
    assert final.name == f"checkpoint_{EPOCHS:06d}"
    assert _history_epochs(final) == list(range(1, EPOCHS + 1))
    assert_bit_identical(reference_run, final)


@pytest.mark.slow
def test_a_killed_driver_resumes_on_rerun_without_repeating_an_epoch(reference_run: Path, tmp_path: Path) -> None:
    name = "killed"
    run_dir = tmp_path / name
    snapshot = run_dir / RAY_RUN_SNAPSHOT
    cmd = _command(tmp_path, name)

    # Rank 0 hangs at the start of epoch 3 (as if the driver died at that moment); kill everything once
    # Ray has registered the epoch-2 checkpoint in the run's snapshot.
    def checkpoint_2_registered() -> bool:
        return snapshot.is_file() and "checkpoint_000002" in snapshot.read_text(errors="replace")

    env = _env(**{FAULT_ENV: "3:0:0:hang", FAULT_MARKER_ENV: str(tmp_path / "hang_marker")})
    first = _start_and_kill_when(cmd, env, tmp_path / "first.log", checkpoint_2_registered,
                                 "checkpoint_000002 in the run snapshot")
    assert _epoch_lines(first) == [1, 2], first[-3000:]

    second = _run(cmd, env)  # same command; the marker keeps the hang from firing again
    assert f"found an earlier run '{name}'" in second
    assert re.search(r"resumed from \S*checkpoint_000002 at epoch 2", second), second[-4000:]
    assert _epoch_lines(second) == [3], second[-3000:]
    final = find_latest_checkpoint(run_dir)
    assert _history_epochs(final) == [1, 2, 3]
    assert_bit_identical(reference_run, final)


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    name = "torn"
    run_dir = tmp_path / name
    cmd = _command(tmp_path, name, no_ray=True)
    first = _start_and_kill_when(cmd, _env(**{TEST_PAUSE_ENV: "2:600"}), tmp_path / "first.log",
                                 lambda: TEST_PAUSE_ENV in (tmp_path / "first.log").read_text(),
                                 "the pause inside write_checkpoint")
    assert "epoch 2/3" in first
    partial = [p for p in (run_dir / "checkpoints").iterdir() if "checkpoint_000002" in p.name]
    assert partial and all(p.name.startswith(".") for p in partial), "no half-written checkpoint folder left"
    assert not (partial[0] / "state.pt").exists() and (partial[0] / rng_file(0)).exists()

    latest = find_latest_checkpoint(run_dir)
    assert latest is not None and latest.name == "checkpoint_000001"
    state = read_state(latest)
    assert state.epoch == 1 and read_rng(latest, 0) is not None

    second = _run(cmd, _env())
    assert re.search(r"resumed from \S*checkpoint_000001 at epoch 1", second), second[-3000:]
    assert _epoch_lines(second) == [2, 3]
    assert _history_epochs(find_latest_checkpoint(run_dir)) == [1, 2, 3]
    metrics = json.dumps(read_state(find_latest_checkpoint(run_dir)).history[-1])
    assert "loss" in metrics


def test_epoch_logger_feeds_tensorboard_and_mlflow_when_asked(tmp_path: Path, monkeypatch) -> None:
    """TensorBoard always (tensorboardX is a dependency); MLflow (the real package, a local file store)
    only with ``MLFLOW_TRACKING_URI``; a resumed run (same run folder) continues its MLflow run."""
    import mlflow  # a dev dependency (mlflow-skinny)
    from mlflow.tracking import MlflowClient

    from nrcc_scale.engine.context import RUN_DIR_TAG, EpochLogger

    monkeypatch.chdir(tmp_path)  # MLflow would write ./mlruns if it were used without a URI
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    quiet = EpochLogger(tmp_path / "a", "a")
    quiet.log({"loss": 1.0}, 1)
    quiet.close()
    assert not (tmp_path / "mlruns").exists(), "MLflow used without MLFLOW_TRACKING_URI"
    assert list((tmp_path / "a" / TENSORBOARD_DIR).glob("events.out.tfevents.*"))

    store = tmp_path / "store"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{store}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for a database otherwise
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "nrcc-test")
    run_dir = tmp_path / "runs" / "it's run_b"  # a quote: MLflow filter strings have no escapes
    for epoch, loss in ((1, 0.75), (2, 0.5)):  # two attempts: the second resumes the same run folder
        logger = EpochLogger(run_dir, "run_b")
        logger.log({"loss": loss, "epoch": epoch, "note": "text", "bad": float("nan"), "flag": True}, epoch)
        logger.close()
    assert mlflow.active_run() is None

    client = MlflowClient(tracking_uri=f"file://{store}")
    experiment = client.get_experiment_by_name("nrcc-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "a resumed training opened a second MLflow run"
    run = runs[0]
    assert run.info.run_name == "run_b" and run.data.tags[RUN_DIR_TAG] == str(run_dir)
    assert sorted(run.data.metrics) == ["epoch", "loss"]  # strings, NaN and booleans are not sent
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.75), (2, 0.5)]
