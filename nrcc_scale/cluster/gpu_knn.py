"""Which GPU kNN library actually runs on this device: faiss-GPU after a kernel check, else cuVS, else none.

Why this module exists
----------------------
A GPU faiss wheel can import, report a GPU, and still have no kernels for the device: faiss-gpu-cu12 1.13.2
shipped only sm_70/sm_80 code, and on an H100 (sm_90) its first search fails with "no kernel image is
available" (faiss-wheels#151) - through a faiss assertion that aborts the whole process. So before the kNN
stage first uses faiss-GPU, a tiny search runs in a *subprocess*; if it fails, cuVS (from the ``gpu`` extra,
built for the same CUDA 13 as torch) is tried the same way, and otherwise faiss runs on the CPU. One line
says which backend ran and why. Results are cached per process (the probe costs a second or two).

:func:`cuvs_search` returns faiss's score conventions (inner products for cosine on normalised rows,
squared L2 otherwise), so :mod:`nrcc_scale.cluster.knn` treats its output like faiss's.
"""

from __future__ import annotations

import functools
import logging
import subprocess
import sys

import numpy as np

from nrcc_scale.cluster import backends

log = logging.getLogger("nrcc_scale.cluster")

PROBE_TIMEOUT_S = 180

_FAISS_PROBE = """
import numpy as np, faiss
x = np.random.default_rng(0).standard_normal((256, 16)).astype("float32")
index = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), 16)
index.add(x)
_, ids = index.search(x[:8], 2)
assert (ids[:, 0] == np.arange(8)).all(), ids
"""

_CUVS_PROBE = """
import numpy as np, cupy as cp
from cuvs.neighbors import brute_force
x = cp.asarray(np.random.default_rng(0).standard_normal((256, 16)).astype("float32"))
_, ids = brute_force.search(brute_force.build(x, metric="sqeuclidean"), x[:8], 2)
ids = cp.asnumpy(cp.asarray(ids))
assert (ids[:, 0] == np.arange(8)).all(), ids
"""


def _probe(code: str) -> str | None:
    """Run ``code`` in a fresh interpreter (an abort there cannot take this process down); None = it ran."""
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"its self-test did not finish in {PROBE_TIMEOUT_S} s"
    if proc.returncode == 0:
        return None
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    reason = next((line for line in reversed(lines) if "no kernel image" in line), lines[-1] if lines else "")
    return f"its self-test failed (exit {proc.returncode}): {reason.strip()[:200]}"


@functools.cache
def faiss_gpu_error() -> str | None:
    """Why faiss-GPU cannot search on this device (None when its self-test passes)."""
    missing = backends.faiss_gpu_missing()
    return missing if missing is not None else _probe(_FAISS_PROBE)


@functools.cache
def cuvs_error() -> str | None:
    """Why cuVS cannot search on this device (None when its self-test passes)."""
    import importlib.util

    if importlib.util.find_spec("cuvs") is None or importlib.util.find_spec("cupy") is None:
        return f"cuVS is not installed ({backends.GPU_INSTALL_HINT})"
    if not backends.cuda_available():
        return "no CUDA device is available"
    return _probe(_CUVS_PROBE)


@functools.cache
def gpu_knn_backend() -> tuple[str, str]:
    """("faiss-gpu" | "cuvs" | "none", why), decided once per process and logged in one line."""
    faiss_err = faiss_gpu_error()
    if faiss_err is None:
        choice = ("faiss-gpu", "faiss-GPU passed its kernel self-test on this device")
    else:
        cuvs_err = cuvs_error()
        if cuvs_err is None:
            choice = ("cuvs", f"faiss-GPU unusable ({faiss_err}); cuVS passed its self-test")
        else:
            choice = ("none", f"faiss-GPU unusable ({faiss_err}); cuVS unusable ({cuvs_err}); kNN runs on the CPU")
    level = logging.INFO if choice[0] == "faiss-gpu" or not backends.cuda_available() else logging.WARNING
    log.log(level, "stage knn: GPU library %s (%s)", choice[0], choice[1])
    return choice


def cuvs_search(database: np.ndarray, queries: np.ndarray | None, k: int, metric: str,
                chunk_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN with cuVS brute force on the GPU. Inputs are already prepared (L2-normalised for cosine).
    Returns (scores, ids) in faiss's conventions: inner products (cosine) or squared L2, nearest first."""
    import cupy as cp
    from cuvs.neighbors import brute_force

    db = cp.asarray(database, dtype=cp.float32)
    index = brute_force.build(db, metric="sqeuclidean")
    q_host = database if queries is None else queries
    scores = np.empty((q_host.shape[0], k), dtype=np.float32)
    ids = np.empty((q_host.shape[0], k), dtype=np.int64)
    for start in range(0, q_host.shape[0], chunk_size):
        q = cp.asarray(q_host[start:start + chunk_size], dtype=cp.float32)
        dist, ind = brute_force.search(index, q, k)
        d2 = cp.asnumpy(cp.asarray(dist)).astype(np.float64)
        scores[start:start + chunk_size] = 1.0 - d2 / 2.0 if metric == "cosine" else d2
        ids[start:start + chunk_size] = cp.asnumpy(cp.asarray(ind)).astype(np.int64)
    return scores, ids
