"""Starting or joining Ray safely.

A local Ray started by nrcc-scale binds every port (GCS, raylet, workers, dashboard) to 127.0.0.1 and keeps
Ray's token authentication on. ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is what makes Ray accept the
loopback address as the node IP (otherwise it silently swaps in the first network interface and listens on
all interfaces; see ../shared/notes/install-probe.md). Token authentication: Ray 2.60 turns it on for a
new ``ray.init()`` cluster while ``RAY_AUTH_MODE`` is unset, taking the token from ``RAY_AUTH_TOKEN`` /
``RAY_AUTH_TOKEN_PATH`` or creating ``~/.ray/auth_token`` (which the ``ray`` CLI then finds); nrcc-scale
leaves that default alone (setting ``RAY_AUTH_MODE=token`` itself would skip the token creation and crash
the GCS on a machine without a token), reports the mode it ended up with, never prints the token, and
warns loudly when ``RAY_AUTH_MODE=disabled`` was set by hand.

Workers' output reaches the driver (``log_to_driver=True``), so rank 0's per-epoch lines appear in the
driver's stdout and therefore in ``ray job logs``.
"""

from __future__ import annotations

import logging
import os
import sys

from nrcc_scale.config import RayConfig

LOOPBACK = "127.0.0.1"
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def use_loopback() -> None:
    """Make the next local Ray bind to 127.0.0.1 only, whenever ``ray`` was imported.

    The variable goes into the environment that Ray's daemons inherit. Ray's Python side reads it once, when
    ``ray`` is first imported (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``), so a process that imported
    ``ray`` before this call (e.g. ``from ray import tune`` at the top of a script) would still swap the
    loopback address for the first network interface and listen on every interface: the constant is then
    set to the value the variable means. tests/test_security.py checks the sockets either way.
    """
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
        constants.ENABLE_RAY_CLUSTER = False


def init_ray(cfg: RayConfig, data_cpus: int = 0) -> str:
    """Join the cluster named by ``ray.address`` or ``RAY_ADDRESS`` (as ``ray job submit`` sets), else start
    a local one on loopback. Returns a line saying which.

    ``data_cpus``: extra logical CPUs for a local Ray, beyond ``cfg.num_cpus`` (or the cores), for Ray Data's
    read and decode tasks (``data.format: ray_data``). Training workers reserve their CPUs for the whole run;
    Ray Data tasks need a free CPU to be scheduled, so without these a run whose workers take every core
    waits forever. They oversubscribe the cores (the OS shares them), which is what a data pipeline feeding
    the same cores needs. A joined cluster is used as it is: its nodes must have CPUs left over
    (``ray_data_loader.check_data_cpus`` says so before the workers start)."""
    import ray

    if ray.is_initialized():
        return "using the Ray already initialised in this process"
    address = cfg.address or os.environ.get("RAY_ADDRESS", "")
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **quiet)
        return f"joined the Ray cluster at {address}"
    use_loopback()
    num_cpus = cfg.num_cpus
    if data_cpus:
        num_cpus = (num_cpus or os.cpu_count() or 1) + data_cpus
    info = ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host=LOOPBACK,
                    _node_ip_address=LOOPBACK, **quiet)
    dashboard = getattr(info, "dashboard_url", "") or ""
    cpus = ray.cluster_resources().get("CPU", 0)
    auth = os.environ.get("RAY_AUTH_MODE", "")
    auth_note = "token auth on" if auth == "token" else f"WARNING: token auth off (RAY_AUTH_MODE={auth})"
    extra = f" incl. {data_cpus} for Ray Data" if data_cpus else ""
    return f"started a local Ray on {LOOPBACK} ({cpus:.0f} CPUs{extra}" + (
        f", dashboard http://{dashboard}" if dashboard else "") + f", {auth_note})"


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0
