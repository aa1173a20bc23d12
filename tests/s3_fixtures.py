"""An S3-compatible server on loopback for tests: moto in server mode (real HTTP, real S3 wire protocol), so
pyarrow's S3 client code runs exactly as against AWS. Nothing leaves 127.0.0.1.

* :func:`s3_server` (session fixture): a ``ThreadedMotoServer`` on 127.0.0.1 with a free port, and the
  environment a client needs (``AWS_ENDPOINT_URL``, test keys, region) — also inherited by subprocesses and
  by the Ray workers a test starts.
* :func:`auth_s3_server` (context manager): a second moto server, in its own process, that checks
  credentials (``INITIAL_NO_AUTH_ACTION_COUNT=0``), so unknown keys are refused with 403 as AWS does.

Import in a test module with an assignment: ``s3_server = s3f.s3_server``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import NamedTuple

import pytest

LOOPBACK = "127.0.0.1"
TEST_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


class S3Server(NamedTuple):
    endpoint: str
    env: dict[str, str]

    def new_bucket(self) -> str:
        """A fresh bucket; returns its name."""
        import boto3

        name = f"b-{uuid.uuid4().hex[:12]}"
        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])
        client.create_bucket(Bucket=name)
        return name


def _wait_for(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the moto server on {LOOPBACK}:{port} did not start")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    _wait_for(port)
    env = {**TEST_KEYS, "AWS_ENDPOINT_URL": f"http://{LOOPBACK}:{port}"}
    saved = {k: os.environ.get(k) for k in (*env, "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN")}
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(key, None)
    os.environ.update(env)
    try:
        yield S3Server(env["AWS_ENDPOINT_URL"], env)
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def auth_s3_server() -> Iterator[str]:
    """A moto server that checks credentials; yields its endpoint URL."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for(port)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
