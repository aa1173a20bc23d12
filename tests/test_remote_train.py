"""End to end: training from data in object storage (a loopback S3 server), and data errors as one line.

* ``python -m nrcc_scale.train data.beton=s3://...`` with 2 Ray workers stages the ``.beton`` once on the
  node (one worker copies, the other waits on the lock and uses the copy), trains and evaluates; a second
  variant kills a staging copy first and checks that the next run completes it and trains.
* ``data.format=ray_data`` (Ray Data) and ``data.format=parquet`` (the deterministic reader) on Parquet shards
  on the server train and evaluate (2 Ray workers; for ray_data on a 2-core machine, which is the case where
  Ray Data's tasks used to wait forever behind the training workers).
* A missing ``.beton`` (path and URI) and a corrupt image under ``on_bad_file=fail`` end the Ray run and the
  in-process run with exactly one error line naming the file, exit status 2 and no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import s3_fixtures as s3f

from nrcc_scale.config_load import load_config
from nrcc_scale.data.registry import build_data
from nrcc_scale.utils import remote_fs

pytestmark = pytest.mark.slow
s3_server = s3f.s3_server
REPO = Path(__file__).resolve().parents[1]
# small and fast: 1 epoch, narrow heads, CPU, no linear probe, no monitor
SMALL = ["train.epochs=1", "train.batch_size=128", "train.use_gpu=false", "train.monitor_every=-1",
         "model.projector_hidden=128", "model.predictor_hidden=128", "eval.linear_eval=false"]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONUNBUFFERED="1", **extra)
    return env


def _train(args: list[str], timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nrcc_scale.train", *args], cwd=REPO, env=_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def _digits_beton(folder: Path) -> Path:
    ffcv_io = pytest.importorskip("nrcc_scale.data.ffcv_io")
    from nrcc_scale.data.ffcv_io import ffcv_available

    if not ffcv_available():
        pytest.skip("ffcv is not installed")
    cfg = load_config([], [])
    return ffcv_io.write_beton(build_data(cfg.data, cfg.train.seed).train, folder / "digits_train.beton",
                               write_mode="raw", num_workers=1, progress=False)


def _check_trained(proc: subprocess.CompletedProcess, run_dir: Path) -> dict:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == f"run directory: {run_dir}"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["nmi"] <= 1.0 and metrics["epochs"] == 1
    return metrics


def test_train_from_a_beton_on_s3_stages_once_per_node(s3_server, tmp_path) -> None:
    beton = _digits_beton(tmp_path)
    uri = f"s3://{s3_server.new_bucket()}/digits/train.beton"
    remote_fs.upload_file(beton, uri)
    cache = tmp_path / "cache"
    proc = _train([*SMALL, f"storage_path={tmp_path / 'runs'}", "name=s3run", f"data.beton={uri}",
                   f"data.cache_dir={cache}", "data.loader_workers=1"])
    _check_trained(proc, tmp_path / "runs" / "s3run")
    out = proc.stdout + proc.stderr
    staged = [line for line in out.splitlines() if "data: staged" in line]
    cached = [line for line in out.splitlines() if "(cached copy of" in line]
    assert len(staged) == 1 and uri in staged[0], out[-3000:]  # one node: one copy
    assert len(cached) == 1  # the other worker used it
    assert "2 worker(s)" in out


def test_a_killed_staging_is_completed_by_the_next_run_which_trains(s3_server, tmp_path) -> None:
    import signal
    import time

    from nrcc_scale.data.staging import entry_dir

    beton = _digits_beton(tmp_path)
    uri = f"s3://{s3_server.new_bucket()}/train.beton"
    remote_fs.upload_file(beton, uri)
    cache = tmp_path / "cache"
    script = "import sys; from nrcc_scale.data.staging import stage; stage(sys.argv[1], sys.argv[2])"
    proc = subprocess.Popen([sys.executable, "-c", script, uri, str(cache)], cwd=REPO, start_new_session=True,
                            env=_env(NRCC_STAGING_CHUNK_BYTES="20000", NRCC_STAGING_CHUNK_DELAY="0.2"))
    partial = entry_dir(cache, uri) / "train.beton.partial"
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size > 0):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (entry_dir(cache, uri) / "train.beton").exists()
    run = _train(["--no-ray", *SMALL, f"storage_path={tmp_path / 'runs'}", "name=after_kill", f"data.beton={uri}",
                  f"data.cache_dir={cache}", "data.loader_workers=1"])
    _check_trained(run, tmp_path / "runs" / "after_kill")
    assert "staged (resumed an interrupted copy)" in run.stdout
    assert (entry_dir(cache, uri) / "train.beton").read_bytes() == beton.read_bytes()


@pytest.mark.parametrize("fmt", ["ray_data", "parquet"])
def test_train_from_parquet_shards_on_s3(s3_server, tmp_path, fmt) -> None:
    uri = f"s3://{s3_server.new_bucket()}/digits-shards"
    made = subprocess.run([sys.executable, "-m", "nrcc_scale.data", "shard", "--dataset", "digits", "--out", uri,
                           "--rows-per-file", "400", "--no-progress"], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    proc = _train([*SMALL, f"storage_path={tmp_path / 'runs'}", "name=shards", f"data.format={fmt}",
                   f"data.root={uri}", "train.num_workers=2", "train.cpus_per_worker=1", "ray.num_cpus=2"],
                  timeout=480)
    metrics = _check_trained(proc, tmp_path / "runs" / "shards")
    assert metrics["num_samples"] == 1797
    assert "2 worker(s)" in proc.stdout + proc.stderr
    if fmt == "ray_data":  # 2 CPUs for the 2 workers + ray.data_cpus (2) for Ray Data's tasks
        assert "(4 CPUs incl. 2 for Ray Data" in proc.stdout


def _corrupt_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(20):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    bad = root / "b" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return bad


@pytest.mark.parametrize("ray", [True, False], ids=["ray", "in_process"])
def test_data_errors_are_one_line_exit_2_before_workers_start(s3_server, tmp_path, ray) -> None:
    bad = _corrupt_folder(tmp_path / "folder")
    missing_uri = f"s3://{s3_server.new_bucket()}/missing.beton"
    cases = [
        ([f"data.beton={tmp_path / 'missing.beton'}"], str(tmp_path / "missing.beton")),
        ([f"data.beton={missing_uri}"], missing_uri),
        (["data.dataset=image_folder", f"data.root={tmp_path / 'folder'}", "data.on_bad_file=fail"], str(bad)),
    ]
    for overrides, named in cases:
        args = [*SMALL, f"storage_path={tmp_path / 'runs'}", "name=err", *overrides]
        proc = _train(args if ray else ["--no-ray", *args], timeout=300)
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
        errors = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith("data error:") and named in errors[0], proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
        assert "started a local Ray" not in proc.stdout  # stopped before any worker (or Ray) started
