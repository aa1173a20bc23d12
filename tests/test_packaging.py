"""The `[gpu]` extra installs beside the tested torch without touching torch's CUDA packages (issue 10).

``pip install --dry-run --report`` resolves exactly what pip would install, without installing it. Two
resolutions from scratch (``--ignore-installed``) with ``constraints.txt``: torch + torchvision alone (the
reference), and ``.[gpu]`` + torch + torchvision. Every package of the reference that belongs to torch's
CUDA stack (``nvidia-*``, ``cuda-*``, ``triton``) must come out at the same version in the second, no
``faiss-cpu`` may be installed (it would overwrite faiss-gpu's ``faiss`` module), and cuML must be the
CUDA 13 build. The version of this, with ``cuml-cu12``, replaced torch's CUDA 13 libraries by CUDA 12
ones. Slow (PyPI metadata, about two minutes each); skipped when PyPI cannot be reached.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 1500


def _pypi_reachable() -> bool:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=5):
            return True
    except OSError:
        return False


def _resolve(tmp_path: Path, name: str, *requirements: str) -> dict[str, str]:
    report = tmp_path / f"{name}.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--disable-pip-version-check", "--report", str(report), "-c", str(REPO / "constraints.txt"),
           *requirements]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip could not resolve {requirements} within {TIMEOUT_S} s (slow index?)")
    if proc.returncode != 0:
        text = proc.stdout + proc.stderr
        if any(s in text for s in ("NewConnectionError", "Temporary failure in name resolution",
                                   "Network is unreachable", "Could not fetch URL")):
            pytest.skip("PyPI is not reachable")
        raise AssertionError(text[-4000:])
    installed = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"] for item in installed}


def _torch_cuda_stack(packages: dict[str, str]) -> dict[str, str]:
    return {n: v for n, v in packages.items() if n.startswith(("nvidia-", "cuda-")) or n == "triton"}


@pytest.mark.slow
@pytest.mark.timeout(2 * TIMEOUT_S + 60)
@pytest.mark.skipif(not _pypi_reachable(), reason="PyPI is not reachable (offline)")
def test_gpu_extra_keeps_torchs_cuda_packages(tmp_path: Path) -> None:
    reference = _resolve(tmp_path, "torch", "torch", "torchvision")
    with_gpu = _resolve(tmp_path, "gpu", ".[gpu]", "torch", "torchvision")

    pins = {line.split("==")[0]: line.split("==")[1] for line in (REPO / "constraints.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    assert reference["torch"] == with_gpu["torch"] == pins["torch"]
    assert with_gpu["torchvision"] == pins["torchvision"]

    stack = _torch_cuda_stack(reference)
    assert any(n.startswith("nvidia-") for n in stack), f"torch {reference['torch']} brought no CUDA wheels"
    changed = {n: (v, with_gpu.get(n)) for n, v in stack.items() if with_gpu.get(n) != v}
    assert not changed, f"the [gpu] extra changes torch's CUDA packages: {changed}"

    assert "faiss-cpu" not in with_gpu, "faiss-cpu would overwrite the GPU faiss module"
    assert "cuml-cu13" in with_gpu and "cuml-cu12" not in with_gpu
    assert "cuvs-cu13" in with_gpu and "faiss-gpu" in with_gpu
    # nothing pulls a CUDA 12 toolkit meta-package (what cuml-cu12 did: cuda-toolkit==12.*)
    assert not with_gpu.get("cuda-toolkit", "13").startswith("12")
