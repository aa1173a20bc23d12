"""Starting or joining Ray safely.

A local Ray started by nrcc-scale binds every port (GCS, raylet, workers, dashboard) to 127.0.0.1 and keeps
Ray's token authentication on. ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is what makes Ray accept the
loopback address as the node IP (otherwise it silently swaps in the first network interface and listens on
all interfaces; see ../shared/notes/install-probe.md).
"""

from __future__ import annotations

import logging
import os

from nrcc_scale.config import RayConfig

LOOPBACK = "127.0.0.1"
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def init_ray(cfg: RayConfig) -> str:
    """Join the cluster named by ``ray.address`` or ``RAY_ADDRESS`` (as ``ray job submit`` sets), else start
    a local one on loopback. Returns a line saying which."""
    import ray

    if ray.is_initialized():
        return "using the Ray already initialised in this process"
    address = cfg.address or os.environ.get("RAY_ADDRESS", "")
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **quiet)
        return f"joined the Ray cluster at {address}"
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    info = ray.init(num_cpus=cfg.num_cpus, include_dashboard=True, dashboard_host=LOOPBACK,
                    _node_ip_address=LOOPBACK, **quiet)
    dashboard = getattr(info, "dashboard_url", "") or ""
    cpus = ray.cluster_resources().get("CPU", 0)
    return f"started a local Ray on {LOOPBACK} ({cpus:.0f} CPUs" + (
        f", dashboard http://{dashboard})" if dashboard else ")")


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0
