"""Private, loopback-only Ray clusters for tests.

Two entry points, both of which start Ray with ``ray start --head`` in a *new process session*, on
127.0.0.1, with a private ``--temp-dir`` under /tmp, free ports and token authentication, and stop
exactly the processes they started:

* :func:`local_ray_head` (context manager; fixture :func:`loopback_ray_head`): a plain head node with
  the dashboard and job server, for ``ray job submit -- python -m nrcc_scale.train ...`` tests.
* :func:`fake_autoscaling_head` (context manager; fixture :func:`fake_autoscaling_cluster`): a head
  started with ``RAY_FAKE_CLUSTER=1 --autoscaling-config=cluster/local_fake.yaml``, whose autoscaler
  adds and removes fake worker nodes (extra raylets on this machine).

Why not ``ray stop``: it terminates every Ray process on the machine (it matches process names and
has no ``--temp-dir`` filter), which would kill other engineers' clusters. Teardown here signals the
process group of the ``ray start`` we launched (every Ray daemon inherits it), plus any descendant or
any process whose command line names our temp dir, and nothing else.

Import in a test module with an assignment (not ``from ... import fixture``, which makes ruff report
F811 on the test argument)::

    import ray_cluster_fixtures as rcf
    fake_autoscaling_cluster = rcf.fake_autoscaling_cluster
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import psutil
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL_FAKE_CONFIG = REPO_ROOT / "cluster" / "local_fake.yaml"
LOOPBACK = "127.0.0.1"

#: Seconds to wait for ``ray start --head`` to return and the dashboard to answer.
STARTUP_TIMEOUT_S = 60.0
#: Seconds between SIGTERM and SIGKILL at teardown (gcs_server ignores SIGTERM for a long time).
STOP_GRACE_S = 3.0


class LocalRayHead(NamedTuple):
    """A running loopback head node; unpacks as ``(address, dashboard_url, env)``."""

    address: str
    """GCS address ``127.0.0.1:<port>`` (for ``ray.init(address=...)``, ``ray status``)."""
    dashboard_url: str
    """``http://127.0.0.1:<port>``: dashboard, job server and state API."""
    env: dict[str, str]
    """Environment for client processes: token auth, ``RAY_ADDRESS``, ``RAY_API_SERVER_ADDRESS``."""


class FakeCluster(NamedTuple):
    """A running fake autoscaling cluster; the first two fields are the address and the temp dir."""

    address: str
    """GCS address ``127.0.0.1:<port>``."""
    temp_dir: Path
    """The private ``--temp-dir`` (logs are in ``<temp_dir>/session_latest/logs``)."""
    dashboard_url: str
    """``http://127.0.0.1:<port>``."""
    env: dict[str, str]
    """Environment for client processes (see :class:`LocalRayHead`)."""
    config_path: Path
    """The autoscaling config actually given to ``ray start`` (local_fake.yaml + ``gcs_address``)."""
    head_pgid: int
    """Process group of every process of this cluster (used for teardown and port checks)."""


#: Ray's default worker port range; `ray start` rejects a component port inside it.
RAY_WORKER_PORT_RANGE = range(10002, 20000)


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports that are free on 127.0.0.1 right now.

    Ports inside Ray's default worker port range (10002-19999) are skipped: ``ray start`` refuses a
    dashboard/GCS/client port there ("trying to use a port number ... used by other components").
    """
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            sockets.append(sock)  # keep it bound so the kernel does not hand it out again
            port = sock.getsockname()[1]
            if port not in RAY_WORKER_PORT_RANGE:
                ports.append(port)
            if len(sockets) > 50 * count:
                raise RuntimeError("could not find free ports outside Ray's worker port range")
        return ports
    finally:
        for sock in sockets:
            sock.close()


def ray_cli() -> str:
    """Path of the ``ray`` CLI of the interpreter running the tests (the project venv)."""
    candidate = Path(sys.executable).parent / "ray"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("ray")
    if found is None:
        raise RuntimeError("the `ray` CLI is not installed next to the test interpreter")
    return found


def loopback_env(token: str) -> dict[str, str]:
    """Environment shared by the Ray daemons and their clients.

    * ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: keep the node IP at 127.0.0.1 and bind every Ray port
      to loopback (otherwise Ray swaps 127.0.0.1 for the eth0 address and listens on ``*``).
    * ``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN``: token auth with a private token, so nothing reads
      or writes ``~/.ray/auth_token`` and the outcome does not depend on whether that file exists.
    * the venv's ``bin`` first on ``PATH``, so a job entrypoint's ``python`` is the venv interpreter.
    """
    env = dict(os.environ)
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_FAKE_CLUSTER"):
        env.pop(key, None)
    env.update(
        {
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
            "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        }
    )
    return env


def auth_headers(env: Mapping[str, str]) -> dict[str, str]:
    """HTTP headers that the dashboard accepts under token auth (``Authorization: Bearer ...``)."""
    return {"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"}


def dashboard_get(dashboard_url: str, path: str, env: Mapping[str, str], timeout: float = 10.0) -> Any:
    """GET ``dashboard_url + path`` with the cluster's token and decode the JSON answer."""
    request = urllib.request.Request(dashboard_url + path, headers=auth_headers(env))
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode())


def alive_node_ids(dashboard_url: str, env: Mapping[str, str]) -> list[str]:
    """Node ids the state API (``/api/v0/nodes``) reports as ALIVE."""
    payload = dashboard_get(dashboard_url, "/api/v0/nodes?limit=1000&detail=false", env)
    nodes = payload["data"]["result"]["result"]
    return sorted(node["node_id"] for node in nodes if node["state"] == "ALIVE")


def _wait_for_dashboard(dashboard_url: str, env: Mapping[str, str], deadline: float) -> None:
    """Poll the authenticated ``/api/version`` endpoint until it answers 200 or ``deadline`` passes."""
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            dashboard_get(dashboard_url, "/api/version", env, timeout=5.0)
            return
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last_error = exc
            time.sleep(0.5)
    raise TimeoutError(f"dashboard {dashboard_url} did not answer: {last_error!r}")


def _cluster_processes(pgid: int, temp_dir: Path) -> list[psutil.Process]:
    """Live (non-zombie) processes that belong to the cluster started in session/group ``pgid``.

    ``ray start`` ran as the leader of a new session, so its id is both the session and the process
    group id of every daemon it spawned. Returned: processes in that session *and* group, their
    descendants (job entrypoints may start sessions of their own), and processes whose command line
    names ``temp_dir``. Requiring both ids guards against an unrelated process that reuses the number.
    """
    found: dict[int, psutil.Process] = {}
    marker = str(temp_dir)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            in_session = os.getsid(proc.pid) == pgid and os.getpgid(proc.pid) == pgid
            if in_session or marker in " ".join(proc.info["cmdline"] or []):
                found[proc.pid] = proc
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    for proc in list(found.values()):
        with contextlib.suppress(psutil.Error):
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
    alive = []
    for proc in found.values():
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


def stop_cluster(pgid: int, temp_dir: Path, grace_s: float = STOP_GRACE_S) -> None:
    """Stop only the cluster started in process group ``pgid``: SIGTERM, then SIGKILL after ``grace_s``.

    Also deletes ``<temp_dir>/ray_current_cluster``, which Ray leaves behind and which would make the
    next ``ray.init(_temp_dir=<temp_dir>)`` try to join the dead cluster.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        procs = _cluster_processes(pgid, temp_dir)
        if not procs:
            break
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        _, still_alive = psutil.wait_procs(procs, timeout=grace_s if sig == signal.SIGTERM else 5.0)
        if sig == signal.SIGKILL and still_alive:
            raise RuntimeError(f"Ray processes survived SIGKILL: {[p.pid for p in still_alive]}")
    (temp_dir / "ray_current_cluster").unlink(missing_ok=True)


def cluster_listen_addresses(pgid: int, temp_dir: Path) -> list[tuple[str, int, int]]:
    """``(ip, port, pid)`` of every TCP socket in LISTEN state owned by the cluster's processes."""
    pids = {proc.pid for proc in _cluster_processes(pgid, temp_dir)}
    result = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            result.append((conn.laddr.ip, conn.laddr.port, conn.pid))
    return result


@contextlib.contextmanager
def _ray_head(
    *,
    num_cpus: int,
    autoscaling_config: Path | None = None,
    extra_server_env: Mapping[str, str] | None = None,
    temp_prefix: str = "nrcc-ray-",
) -> Iterator[tuple[LocalRayHead, Path, int, Path | None]]:
    """Start ``ray start --head`` on loopback; yield ``(head, temp_dir, pgid, config_path)``; stop it.

    The temp dir lives directly under /tmp because Ray's Unix socket paths
    (``<temp>/session_<date>/sockets/raylet``) must stay under 107 characters. It is removed at the
    end unless ``NRCC_KEEP_RAY_TMP=1``.
    """
    temp_dir = Path(tempfile.mkdtemp(prefix=temp_prefix, dir="/tmp"))
    gcs_port, dashboard_port, client_port, agent_port, autoscaler_metrics, dashboard_metrics = free_ports(6)
    token = secrets.token_hex(32)
    server_env = loopback_env(token)
    # Prometheus ports that `ray start` has no flag for (defaults 44217/44227 would clash between
    # two clusters on one machine).
    server_env["AUTOSCALER_METRIC_PORT"] = str(autoscaler_metrics)
    server_env["DASHBOARD_METRIC_PORT"] = str(dashboard_metrics)
    server_env.update(extra_server_env or {})

    config_path: Path | None = None
    if autoscaling_config is not None:
        # Fake worker raylets join provider.gcs_address (Ray's fallback is <node ip>:6379, which may
        # be somebody else's cluster), so point it at our private port.
        config = yaml.safe_load(autoscaling_config.read_text())
        config["provider"]["gcs_address"] = f"{LOOPBACK}:{gcs_port}"
        config_path = temp_dir / autoscaling_config.name
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    cmd = [
        ray_cli(),
        "start",
        "--head",
        f"--node-ip-address={LOOPBACK}",
        f"--port={gcs_port}",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        "--include-dashboard=true",
        f"--dashboard-host={LOOPBACK}",
        f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={agent_port}",
        f"--ray-client-server-port={client_port}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    if config_path is not None:
        cmd.append(f"--autoscaling-config={config_path}")

    start_log = temp_dir / "ray_start.log"
    with start_log.open("wb") as log:
        # A new session: every daemon `ray start` spawns inherits this process group id.
        proc = subprocess.Popen(
            cmd, env=server_env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    pgid = proc.pid
    address = f"{LOOPBACK}:{gcs_port}"
    dashboard_url = f"http://{LOOPBACK}:{dashboard_port}"
    client_env = dict(server_env)
    client_env.update({"RAY_ADDRESS": address, "RAY_API_SERVER_ADDRESS": dashboard_url})
    for server_only in ("RAY_FAKE_CLUSTER", "AUTOSCALER_UPDATE_INTERVAL_S", "AUTOSCALER_METRIC_PORT",
                        "DASHBOARD_METRIC_PORT"):
        client_env.pop(server_only, None)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        try:
            returncode = proc.wait(timeout=STARTUP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            returncode = None
        if returncode != 0:
            tail = start_log.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"`ray start --head` failed (rc={returncode}):\n{tail}")
        _wait_for_dashboard(dashboard_url, client_env, deadline)
        yield LocalRayHead(address, dashboard_url, client_env), temp_dir, pgid, config_path
    finally:
        stop_cluster(pgid, temp_dir)
        if os.environ.get("NRCC_KEEP_RAY_TMP") != "1":
            shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def local_ray_head(num_cpus: int = 2) -> Iterator[LocalRayHead]:
    """Plain loopback head node with dashboard and job server; yields ``(address, dashboard_url, env)``.

    Submit with ``subprocess.run(["ray", "job", "submit", "--", ...], env=head.env)``: ``env``
    carries ``RAY_AUTH_MODE=token``, the token, ``RAY_ADDRESS`` (GCS) and ``RAY_API_SERVER_ADDRESS``
    (dashboard URL, which the jobs CLI prefers over ``RAY_ADDRESS``).
    """
    with _ray_head(num_cpus=num_cpus) as (head, _temp_dir, _pgid, _config):
        yield head


@contextlib.contextmanager
def fake_autoscaling_head(config: Path = LOCAL_FAKE_CONFIG) -> Iterator[FakeCluster]:
    """Head started with ``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=<config>``.

    The head's CPU count is read from the head node type of ``config`` so the two always agree.
    ``AUTOSCALER_UPDATE_INTERVAL_S=1`` makes the autoscaler react within about a second.
    """
    parsed = yaml.safe_load(config.read_text())
    head_type = parsed["available_node_types"][parsed["head_node_type"]]
    num_cpus = int(head_type["resources"].get("CPU", 0))
    extra = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    with _ray_head(
        num_cpus=num_cpus, autoscaling_config=config, extra_server_env=extra, temp_prefix="nrcc-fake-"
    ) as (head, temp_dir, pgid, config_path):
        assert config_path is not None
        yield FakeCluster(head.address, temp_dir, head.dashboard_url, head.env, config_path, pgid)


@pytest.fixture
def fake_autoscaling_cluster() -> Iterator[FakeCluster]:
    """Pytest fixture around :func:`fake_autoscaling_head` with ``cluster/local_fake.yaml``."""
    with fake_autoscaling_head() as cluster:
        yield cluster


@pytest.fixture
def loopback_ray_head() -> Iterator[LocalRayHead]:
    """Pytest fixture around :func:`local_ray_head` (2 CPUs)."""
    with local_ray_head() as head:
        yield head
