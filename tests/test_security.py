"""Security properties that can regress: loopback-only local Ray with token auth, no secrets in the
repository's configs and docs, checkpoints that refuse to unpickle code.

The Ray check starts a local Ray the way every nrcc-scale command does (``nrcc_scale.ray_setup.init_ray``)
in a subprocess with a private token, lists the TCP sockets its processes listen on (psutil), and asks the
dashboard for ``/api/version`` without and with the token.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nrcc_scale.engine.checkpoint import STATE_FILE, CheckpointError, read_state

REPO = Path(__file__).resolve().parents[1]
LOOPBACK_IPS = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}

PROBE = r"""
import json, os, sys, urllib.error, urllib.request
import psutil, ray
from nrcc_scale.config import RayConfig
from nrcc_scale.ray_setup import init_ray

line = init_ray(RayConfig(num_cpus=1))
ray.get(ray.remote(lambda: 1).remote())  # a worker process too
ours = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
listening = [(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="tcp")
             if c.status == psutil.CONN_LISTEN and c.pid in ours]
url = "http://" + ray.get_runtime_context().dashboard_url if hasattr(ray.get_runtime_context(), "dashboard_url") \
    else None
url = url or "http://" + ray._private.worker.global_worker.node.address_info["webui_url"]
codes = {}
for name, headers in (("without", {}), ("with", {"Authorization": "Bearer " + os.environ["RAY_AUTH_TOKEN"]})):
    try:
        codes[name] = urllib.request.urlopen(urllib.request.Request(url + "/api/version", headers=headers),
                                             timeout=10).status
    except urllib.error.HTTPError as err:
        codes[name] = err.code
ray.shutdown()
print("PROBE " + json.dumps({"line": line, "listening": listening, "codes": codes, "url": url}))
"""


@pytest.mark.slow
def test_local_ray_listens_on_loopback_only_with_token_auth() -> None:
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"RAY_AUTH_TOKEN": token, "PYTHONUNBUFFERED": "1"})  # RAY_AUTH_MODE unset: Ray's default
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    probe = json.loads(out.split("PROBE ", 1)[1].splitlines()[0])
    assert "started a local Ray on 127.0.0.1" in probe["line"] and "token auth on" in probe["line"]
    assert probe["url"].startswith("http://127.0.0.1:")
    assert len(probe["listening"]) >= 3, probe  # GCS, raylet, dashboard, workers ...
    exposed = [entry for entry in probe["listening"] if entry[0] not in LOOPBACK_IPS]
    assert not exposed, f"Ray ports bound outside loopback: {exposed}"
    assert probe["codes"] == {"without": 401, "with": 200}, probe["codes"]
    assert token not in out, "the auth token was printed"


SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "credential assignment": re.compile(
        r"(?i)\b(password|passwd|secret|api[_-]?key|auth[_-]?token|access[_-]?key|tracking[_-]?token)\b"
        r"\s*[:=]\s*['\"]?(?![<$%{])[A-Za-z0-9/+_.=-]{12,}"),
}
SCANNED = ("configs", "docs", "cluster", "README.md")


def _scanned_files() -> list[Path]:
    files = []
    for name in SCANNED:
        path = REPO / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in path.rglob("*") if p.is_file() and p.suffix in {".yaml", ".yml", ".md", ".json",
                                                                               ".toml", ".txt", ""}]
    return files


def test_no_secrets_in_configs_docs_and_cluster_templates() -> None:
    files = _scanned_files()
    assert any(f.parent.name == "tune" for f in files) and any(f.suffix == ".md" for f in files)
    found = []
    for path in files:
        text = path.read_text(errors="replace")
        for what, pattern in SECRET_PATTERNS.items():
            for match in pattern.finditer(text):
                found.append(f"{path.relative_to(REPO)}: {what}: {match.group(0)[:40]}")
    assert not found, "secret-looking strings:\n" + "\n".join(found)


def test_secret_scan_catches_a_planted_secret() -> None:
    """The patterns above are not vacuous."""
    planted = "aws_access_key_id: AKIAABCDEFGHIJKLMNOP\nauth_token: 3f9a0c1b2d4e5f6a7b8c9d0e"
    hits = [what for what, pattern in SECRET_PATTERNS.items() if pattern.search(planted)]
    assert "AWS access key id" in hits and "credential assignment" in hits
    assert not SECRET_PATTERNS["credential assignment"].search("auth_token: <your-token>")


class _Payload:
    """Anything that is not plain tensors and containers: weights_only loading must refuse it."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_checkpoints_refuse_pickled_code(tmp_path: Path) -> None:
    torch.save({"format_version": 1, "model": {}, "payload": _Payload()}, tmp_path / STATE_FILE)
    with pytest.raises(CheckpointError, match="cannot read checkpoint file"):
        read_state(tmp_path)
