"""End-to-end autoscaling on a local fake multi-node Ray cluster (cluster/local_fake.yaml).

No nrcc training here: the job is a tiny Ray program that needs 3 CPUs at the same time while the head
has 1, so it can only finish if the autoscaler adds worker nodes. Afterwards the idle workers must be
removed (``idle_timeout_minutes: 0.2``). The job goes through ``ray job submit`` with token auth, the
path that ``ray job submit -- python -m nrcc_scale.train ...`` will take.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

try:
    import ray_cluster_fixtures as rcf
except ImportError:  # tests/ is a package or not on sys.path
    from tests import ray_cluster_fixtures as rcf

pytestmark = pytest.mark.slow

# Re-exported by assignment so that pytest finds the fixture in this module.
fake_autoscaling_cluster = rcf.fake_autoscaling_cluster

#: Concurrent 1-CPU tasks; the head has 1 CPU, so at least 2 fake workers must be added.
N_TASKS = 3
SCALE_DOWN_TIMEOUT_S = 60.0
LOOPBACK_IPS = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}

# The job: N_TASKS one-CPU tasks that wait at a barrier until all of them run at once, then report
# their node id. A barrier (not just sleeps) makes the result independent of timing: with 1 CPU on
# the head the tasks cannot all be running unless the cluster has grown to >= N_TASKS CPUs.
# The barrier is a directory on the local disk (all fake nodes share this machine), polled with
# time.sleep: a barrier built on ray.get() would not do, because Ray lends the CPU of a task that
# blocks in ray.get() to another task, so 3 tasks would fit on 2 CPUs.
JOB_SCRIPT = textwrap.dedent(
    """
    import json
    import os
    import sys
    import tempfile
    import time
    import uuid

    import ray

    N_TASKS = int(sys.argv[1])
    BARRIER_TIMEOUT_S = 45.0

    ray.init()


    @ray.remote(num_cpus=1)
    def hold_one_cpu(barrier_dir):
        open(os.path.join(barrier_dir, uuid.uuid4().hex), "w").close()
        deadline = time.monotonic() + BARRIER_TIMEOUT_S
        while len(os.listdir(barrier_dir)) < N_TASKS:
            if time.monotonic() > deadline:
                raise TimeoutError("the tasks never ran all at once: no scale-up?")
            time.sleep(0.2)
        alive = sum(1 for node in ray.nodes() if node["Alive"])
        time.sleep(1.0)
        return ray.get_runtime_context().get_node_id(), alive


    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nrcc-barrier-") as barrier_dir:
        results = ray.get([hold_one_cpu.remote(barrier_dir) for _ in range(N_TASKS)])
    print("NRCC_RESULT " + json.dumps({
        "driver_node_id": ray.get_runtime_context().get_node_id(),
        "task_node_ids": [node_id for node_id, _ in results],
        "max_alive_nodes": max(alive for _, alive in results),
        "seconds": round(time.monotonic() - start, 1),
    }))
    """
)


def _parse_result(output: str) -> dict:
    """Return the JSON object the job printed after ``NRCC_RESULT``."""
    for line in output.splitlines():
        if "NRCC_RESULT " in line:
            return json.loads(line.split("NRCC_RESULT ", 1)[1])
    raise AssertionError(f"job printed no NRCC_RESULT line:\n{output[-4000:]}")


def _monitor_log(temp_dir: Path) -> str:
    """The autoscaler monitor's log (``monitor.log``) of the cluster, or '' if absent."""
    log = temp_dir / "session_latest" / "logs" / "monitor.log"
    return log.read_text(errors="replace") if log.exists() else ""


def test_job_scales_fake_cluster_up_then_idle_nodes_are_removed(
    fake_autoscaling_cluster: rcf.FakeCluster, tmp_path: Path
) -> None:
    """A 3-CPU job on a 1-CPU head gets fake workers added, succeeds, and the idle workers go away."""
    cluster = fake_autoscaling_cluster
    timings: dict[str, float] = {}

    # Token auth is really on: the dashboard refuses a request without the bearer token.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(cluster.dashboard_url + "/api/version", timeout=5)
    assert refused.value.code == 401

    initial_nodes = rcf.alive_node_ids(cluster.dashboard_url, cluster.env)
    assert len(initial_nodes) == 1, f"expected only the head before the job, got {initial_nodes}"
    head_id = initial_nodes[0]

    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "demand.py").write_text(JOB_SCRIPT)
    submit = [
        rcf.ray_cli(), "job", "submit",
        "--address", cluster.dashboard_url,
        "--working-dir", str(job_dir),
        "--", "python", "demand.py", str(N_TASKS),
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(submit, env=cluster.env, capture_output=True, text=True, timeout=120)
    timings["job_submit_to_finish_s"] = time.monotonic() - started
    output = proc.stdout + proc.stderr
    monitor_tail = _monitor_log(cluster.temp_dir)[-3000:]
    assert proc.returncode == 0, f"ray job submit failed:\n{output[-4000:]}\n{monitor_tail}"
    assert "succeeded" in output

    result = _parse_result(output)
    assert result["driver_node_id"] == head_id, "the job driver runs on the head node"
    task_nodes = set(result["task_node_ids"])
    # One CPU per node and all tasks running at once -> every task on its own node.
    assert len(task_nodes) == N_TASKS, result
    added = task_nodes - {head_id}
    assert len(added) >= N_TASKS - 1, f"expected >= {N_TASKS - 1} added worker nodes, got {result}"
    assert result["max_alive_nodes"] >= N_TASKS, result
    assert "Adding" in _monitor_log(cluster.temp_dir)

    # Every socket of every process of this cluster (head daemons and fake workers) is on loopback.
    listening = rcf.cluster_listen_addresses(cluster.head_pgid, cluster.temp_dir)
    assert listening, "found no listening sockets for the cluster's processes"
    exposed = [entry for entry in listening if entry[0] not in LOOPBACK_IPS]
    assert not exposed, f"Ray ports bound outside loopback: {exposed}"

    # Scale-down: idle workers are terminated after idle_timeout_minutes (0.2 min = 12 s).
    finished = time.monotonic()
    deadline = finished + SCALE_DOWN_TIMEOUT_S
    alive = rcf.alive_node_ids(cluster.dashboard_url, cluster.env)
    while alive != [head_id] and time.monotonic() < deadline:
        time.sleep(1.0)
        alive = rcf.alive_node_ids(cluster.dashboard_url, cluster.env)
    timings["scale_down_s"] = time.monotonic() - finished
    monitor = _monitor_log(cluster.temp_dir)
    assert alive == [head_id], f"idle workers alive after {SCALE_DOWN_TIMEOUT_S}s: {alive}\n{monitor[-3000:]}"
    assert "(idle)" in monitor, "monitor.log does not record an idle termination"

    print(f"\nfake autoscaler timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}, "
          f"job: {result}", file=sys.stderr)
