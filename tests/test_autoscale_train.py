"""The nrcc training job on an autoscaling cluster, for real on one machine (cluster/local_fake.yaml).

``ray job submit -- python -m nrcc_scale.train`` with ``train.num_workers=2`` (one CPU each) on a fake
multi-node cluster whose head has 1 CPU: Ray Train's worker group can only be placed once the autoscaler
has added a worker node. The test watches the node count through the dashboard's state API while the job
runs, then checks that the job succeeded and wrote its report, that its per-epoch progress is readable with
``ray job logs``, that every Ray port is on loopback, and that the idle worker nodes are removed afterwards.
The fixture starts the cluster with token auth on loopback and stops only the processes it started.

No ``--working-dir``: nrcc-scale is installed in the venv every node runs (as in the KubeRay image). On a
fake cluster every node shares one temp dir, and a fake node that the autoscaler removes while the job is
still evaluating deletes the unpacked working-dir package, which is the job driver's current directory.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import ray_cluster_fixtures as rcf

pytestmark = pytest.mark.slow

fake_autoscaling_cluster = rcf.fake_autoscaling_cluster

REPO = Path(__file__).resolve().parents[1]
JOB_TIMEOUT_S = 420
SCALE_DOWN_TIMEOUT_S = 90.0
LOOPBACK_IPS = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
TRAIN_ARGS = ["train.num_workers=2", "train.cpus_per_worker=1", "train.epochs=2", "train.batch_size=32",
              "train.checkpoint_every=1", "data.holdout_fraction=0.8", "model.projector_hidden=64",
              "model.predictor_hidden=64", "model.projector_dim=32", "eval.baselines=false",
              "eval.linear_eval=false", "eval.plots=false", "train.use_gpu=false"]  # CPU-designed: pinned


def test_training_job_scales_the_cluster_up_and_back_down(fake_autoscaling_cluster: rcf.FakeCluster,
                                                          tmp_path: Path) -> None:
    cluster = fake_autoscaling_cluster
    head = rcf.alive_node_ids(cluster.dashboard_url, cluster.env)
    assert len(head) == 1, f"expected only the head before the job, got {head}"

    storage = tmp_path / "runs"
    submit = [rcf.ray_cli(), "job", "submit", "--address", cluster.dashboard_url, "--",
              "python", "-m", "nrcc_scale.train", f"storage_path={storage}", "name=autoscaled", *TRAIN_ARGS]
    log = tmp_path / "submit.log"
    max_nodes, exposed = 1, []
    with log.open("w") as out:
        proc = subprocess.Popen(submit, cwd=REPO, env=cluster.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + JOB_TIMEOUT_S
        try:
            while proc.poll() is None:
                assert time.monotonic() < deadline, f"job still running:\n{log.read_text()[-4000:]}"
                alive = rcf.alive_node_ids(cluster.dashboard_url, cluster.env)
                if len(alive) > max_nodes:
                    max_nodes = len(alive)
                    # while the added node and the training workers are up: every socket on loopback
                    listening = rcf.cluster_listen_addresses(cluster.head_pgid, cluster.temp_dir)
                    exposed += [entry for entry in listening if entry[0] not in LOOPBACK_IPS]
                time.sleep(1.0)
        finally:
            if proc.poll() is None:
                proc.kill()
    output = log.read_text()
    monitor_log = cluster.temp_dir / "session_latest" / "logs" / "monitor.log"
    assert proc.returncode == 0, f"{output[-5000:]}\n{monitor_log.read_text(errors='replace')[-2000:]}"
    assert "succeeded" in output

    assert max_nodes > 1, "the autoscaler never added a worker node"
    assert "Adding" in monitor_log.read_text(errors="replace")
    assert not exposed, f"Ray ports bound outside loopback: {exposed}"
    assert "joined the Ray cluster" in output and "2 worker(s)" in output
    metrics = json.loads((storage / "autoscaled" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and 0.0 <= metrics["nmi"] <= 1.0
    assert (storage / "autoscaled" / "checkpoint_000002" / "rng_rank1.pt").is_file()

    # progress is readable from the job server (on a fake cluster every node's log monitor tails the shared
    # log folder, so worker lines can arrive more than once; tests/test_resume.py checks "once" on one node)
    job_id = re.search(r"raysubmit_\w+", output).group(0)
    logs = subprocess.run([rcf.ray_cli(), "job", "logs", "--address", cluster.dashboard_url, job_id],
                          env=cluster.env, capture_output=True, text=True, timeout=60).stdout
    for epoch in (1, 2):
        assert re.search(rf"epoch {epoch}/2 \| loss \d", logs), logs[-3000:]
    assert "run directory:" in logs

    # idle worker nodes go away (idle_timeout_minutes: 0.2)
    deadline = time.monotonic() + SCALE_DOWN_TIMEOUT_S
    alive = rcf.alive_node_ids(cluster.dashboard_url, cluster.env)
    while alive != head and time.monotonic() < deadline:
        time.sleep(1.0)
        alive = rcf.alive_node_ids(cluster.dashboard_url, cluster.env)
    assert alive == head, f"idle nodes still alive after {SCALE_DOWN_TIMEOUT_S} s: {alive}"
    assert "(idle)" in monitor_log.read_text(errors="replace")
