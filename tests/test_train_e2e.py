"""The main job end to end, for real: Ray Train on 2 CPU workers (gloo DDP), the NRCC step, UMAP, GridShift.

Three ways in: ``python -m nrcc_scale.train`` starting its own loopback Ray; ``--no-ray`` in-process; and
``ray job submit -- python -m nrcc_scale.train`` on a ``ray start --head`` cluster that the test starts on
loopback and stops (only that one) afterwards. Few epochs: these prove the plumbing, not the accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray_cluster_fixtures as rcf
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SHORT = ["train.epochs=2", "train.batch_size=128", "train.checkpoint_every=1", "model.projector_hidden=256",
         "model.predictor_hidden=256", "eval.linear_eval=false",
         "train.use_gpu=false"]  # CPU-designed: 2 CPU workers even on a 1-GPU host (2 GPU workers would hang)
loopback_ray_head = rcf.loopback_ray_head


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _check_run(stdout: str, run_dir: Path, ray_layout: bool) -> dict:
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    assert lines[-1] == f"run directory: {run_dir}", lines[-5:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("nmi", "acc", "ari", "ami", "num_clusters"):
        assert key in metrics, key
        assert metrics[key] == metrics[key]  # not NaN
    assert 0.0 <= metrics["nmi"] <= 1.0 and metrics["num_clusters"] >= 1
    assert set(metrics["baselines"]) == {"kmeans_true_k", "raw_pixels_umap_gridshift", "umap_hdbscan"}
    assert metrics["baselines"]["kmeans_true_k"]["num_clusters"] == 10
    hdbscan = metrics["baselines"]["umap_hdbscan"]  # the peer UMAP's documentation recommends, every run
    assert 0.0 <= hdbscan["noise_fraction"] <= 1.0 and hdbscan["num_clusters"] >= 1
    assert "learned: UMAP + HDBSCAN" in stdout
    assert metrics["epochs"] == 2 and metrics["num_samples"] == 1797
    assert "knn_acc" in metrics and "global_std" in metrics
    assert (run_dir / "umap_scatter.png").stat().st_size > 10_000
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 2 and saved["method"]["nrcc"]["enabled"] is True
    folder = run_dir if ray_layout else run_dir / "checkpoints"
    checkpoints = sorted(p for p in folder.glob("checkpoint_0*") if p.is_dir())  # not Ray's snapshot json
    assert [c.name for c in checkpoints] == ["checkpoint_000001", "checkpoint_000002"]
    assert (checkpoints[-1] / "state.pt").is_file()
    ranks = {p.name for p in checkpoints[-1].glob("rng_rank*.pt")}
    assert ranks == ({"rng_rank0.pt", "rng_rank1.pt"} if ray_layout else {"rng_rank0.pt"})
    return metrics


def test_train_on_a_local_ray_with_two_workers(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "nrcc_scale.train", f"storage_path={tmp_path}", "name=ray_run", *SHORT]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "started a local Ray on 127.0.0.1" in proc.stdout
    assert "2 worker(s)" in proc.stdout + proc.stderr  # the DDP world size the loop saw
    _check_run(proc.stdout, tmp_path / "ray_run", ray_layout=True)


def test_train_in_process_without_ray(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "nrcc_scale.train", "--no-ray", f"storage_path={tmp_path}", "name=local",
           *SHORT]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Ray" not in proc.stdout.split("run directory")[0].split("training done")[0]
    _check_run(proc.stdout, tmp_path / "local", ray_layout=False)


def test_ray_job_submit_runs_the_main_job(loopback_ray_head, tmp_path: Path) -> None:
    head = loopback_ray_head
    storage = tmp_path / "runs"
    cmd = [rcf.ray_cli(), "job", "submit", "--address", head.dashboard_url, "--working-dir", str(REPO), "--",
           "python", "-m", "nrcc_scale.train", f"storage_path={storage}", "name=job_run", *SHORT]
    proc = subprocess.run(cmd, cwd=REPO, env=head.env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "succeeded" in out
    assert f"joined the Ray cluster at {head.address}" in out or "joined the Ray cluster" in out
    job_output = out[out.index("run ") if "run " in out else 0:]
    assert f"run directory: {storage / 'job_run'}" in job_output
    metrics = json.loads((storage / "job_run" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and "nmi" in metrics
