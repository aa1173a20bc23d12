"""Which library runs each heavy evaluation stage (kNN graph, dimension reduction, k-means), and its log.

Why this module exists
----------------------
The evaluation has to run on laptops without a GPU and on GPU hosts with ``pip install 'nrcc-scale[gpu]'``
(faiss-gpu, cuML). Every stage therefore has a CPU and a GPU backend, and the choice must be (a) made in one
place, with the same rules for every stage, and (b) visible: each stage logs ``stage <name>: backend <b>``
on the ``nrcc_scale.cluster`` logger, so a slow evaluation can be traced to a missing GPU library at a glance.

Rules (the same for ``use_gpu`` = None / True / False and for ``backend`` = "auto" / GPU name / CPU name):

* **auto** (``use_gpu=None``, ``backend="auto"``): the GPU backend when it is usable, the CPU one otherwise.
  If CUDA is present but the GPU library is missing, ONE warning line per process says so, with the
  install hint (that host is wasting its GPU). On a host without CUDA the fallback is expected and only
  logged at INFO level.
* **explicit GPU** (``use_gpu=True``, ``backend="cuml"``): if it is not usable this raises
  :class:`BackendUnavailableError` with one line naming the setting, what is missing, and how to fix it.
  We raise rather than fall back because an explicit request usually comes from a config written for a
  GPU host, and silently running a million-sample UMAP on two CPU cores for hours is the worse failure.
* **explicit CPU**: always honoured.

All probes are cached: importing cuML or initialising CUDA is slow and must not repeat on every call.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
from types import ModuleType

__all__ = [
    "GPU_INSTALL_HINT",
    "BackendUnavailableError",
    "choose_backend",
    "cpu_threads",
    "cuda_available",
    "cuml_available",
    "cuml_missing",
    "faiss_available",
    "faiss_gpu_available",
    "faiss_gpu_missing",
    "faiss_module",
    "log_backend",
    "select_faiss_gpu",
    "select_gpu",
    "set_faiss_threads",
    "warn_once",
]

log = logging.getLogger("nrcc_scale.cluster")

#: The one install hint every "GPU library missing" message carries.
GPU_INSTALL_HINT = "pip install 'nrcc-scale[gpu]'"

_warned: set[str] = set()


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend (GPU library, CUDA) is not usable on this host."""


# ---------------------------------------------------------------------------------------------- probes
@functools.cache
def cuda_available() -> bool:
    """Whether torch sees a CUDA device (torch is a hard dependency; the guard keeps this module importable
    in stripped-down environments)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@functools.cache
def faiss_module() -> ModuleType | None:
    """The imported ``faiss`` module, or None when it is not installed (then scikit-learn takes over)."""
    try:
        return importlib.import_module("faiss")
    except ImportError:
        return None


def faiss_available() -> bool:
    """Whether faiss (CPU or GPU build) can be imported."""
    return faiss_module() is not None


@functools.cache
def faiss_gpu_available() -> bool:
    """Whether the installed faiss is a GPU build that sees at least one GPU (faiss-cpu reports 0)."""
    faiss = faiss_module()
    if faiss is None or not hasattr(faiss, "get_num_gpus"):
        return False
    try:
        return int(faiss.get_num_gpus()) > 0
    except Exception:  # a GPU build on a host whose driver is broken raises from CUDA
        return False


@functools.cache
def cuml_available() -> bool:
    """Whether ``cuml`` imports. Importing it on a host without a usable GPU can raise arbitrary CUDA
    errors, hence the broad guard; it is also slow, hence the cache."""
    try:
        importlib.import_module("cuml")
    except Exception:
        return False
    return True


def cpu_threads() -> int:
    """CPU threads this process may use: the scheduler affinity (what containers and ``taskset`` grant,
    unlike ``os.cpu_count()``), capped by ``OMP_NUM_THREADS`` when that is set to a positive integer."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        n = min(n, int(env))
    return max(1, n)


def set_faiss_threads() -> int:
    """Point faiss's OpenMP pool at :func:`cpu_threads` (faiss otherwise uses every core of the machine,
    oversubscribing containers). Returns the thread count, 0 without faiss."""
    faiss = faiss_module()
    if faiss is None:
        return 0
    n = cpu_threads()
    # faiss and torch share one OpenMP runtime here: setting faiss's pool also resizes torch's, so put
    # torch's thread count back (a training process must not change speed or numerics after a monitor)
    from nrcc_scale.utils.threads import keep_torch_threads

    with keep_torch_threads():
        faiss.omp_set_num_threads(n)
    return n


# ------------------------------------------------------------------------------------------- decisions
def log_backend(stage: str, backend: str, detail: str = "") -> None:
    """The single log line every stage emits: ``stage knn: backend faiss-cpu exact (N=..., k=...)``."""
    log.info("stage %s: backend %s%s", stage, backend, f" ({detail})" if detail else "")


def warn_once(message: str) -> None:
    """Log a warning the first time this exact message comes up in the process (the monitor calls the
    stages every few epochs; one line is enough)."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def choose_backend(stage: str, requested: str, *, setting: str, gpu: str, cpu: str,
                   gpu_missing: str | None, cpu_aliases: tuple[str, ...] = (), shown: str | None = None,
                   auto: str = "'auto'") -> str:
    """Resolve ``requested`` ("auto", ``gpu`` or ``cpu`` / one of ``cpu_aliases``) to ``gpu`` or ``cpu``.

    ``gpu_missing`` is None when the GPU backend is usable, else the reason, phrased to follow "but", e.g.
    "cuML is not installed (pip install 'nrcc-scale[gpu]')". ``setting`` names the knob in messages
    (``eval.umap_backend``); ``shown`` / ``auto`` override how the request and the automatic value are
    written (``use_gpu=True`` / ``use_gpu=None``). See the module docstring for the rules.
    """
    shown = f"{setting} = {requested!r}" if shown is None else shown
    if requested == cpu or requested in cpu_aliases:
        return cpu
    if requested == gpu:
        if gpu_missing is not None:
            raise BackendUnavailableError(
                f"stage {stage}: {shown} but {gpu_missing}; set it to {auto} to fall back to {cpu}")
        return gpu
    if requested != "auto":
        allowed = ", ".join(repr(c) for c in ("auto", gpu, cpu, *cpu_aliases))
        raise ValueError(f"stage {stage}: {setting} = {requested!r}; expected one of {allowed}")
    if gpu_missing is None:
        return gpu
    message = f"stage {stage}: {setting} is {auto} but {gpu_missing}; falling back to {cpu}"
    if cuda_available():
        warn_once(message)  # a GPU host without the GPU library: worth one loud line
    else:
        log.debug(message)  # a CPU host: the expected case
    return cpu


def select_gpu(stage: str, use_gpu: bool | None, *, gpu: str, cpu: str, gpu_missing: str | None) -> bool:
    """The ``use_gpu`` tri-state of the kNN and k-means stages through :func:`choose_backend`:
    None = auto, True = GPU required, False = CPU. Returns whether to use the GPU."""
    requested = {None: "auto", True: gpu, False: cpu}[use_gpu]
    return choose_backend(stage, requested, setting="use_gpu", gpu=gpu, cpu=cpu, gpu_missing=gpu_missing,
                          shown=f"use_gpu={use_gpu}", auto="None (auto)") == gpu


def select_faiss_gpu(stage: str, use_gpu: bool | None) -> bool:
    """:func:`select_gpu` for the faiss stages (kNN, k-means). Without faiss at all the stage falls back to
    scikit-learn: one warning line, or :class:`BackendUnavailableError` for ``use_gpu=True``."""
    if not faiss_available():
        if use_gpu:
            raise BackendUnavailableError(f"stage {stage}: use_gpu=True but faiss is not installed "
                                          f"({GPU_INSTALL_HINT})")
        warn_once(f"stage {stage}: faiss is not installed; using scikit-learn (exact and slow beyond ~10^5 "
                  "samples; pip install faiss-cpu)")
        return False
    return select_gpu(stage, use_gpu, gpu="faiss-gpu", cpu="faiss-cpu", gpu_missing=faiss_gpu_missing())


def faiss_gpu_missing() -> str | None:
    """Why faiss cannot run on the GPU here (None when it can), phrased for :func:`choose_backend`."""
    if not faiss_available():
        return f"faiss is not installed ({GPU_INSTALL_HINT})"
    if faiss_gpu_available():
        return None
    if not cuda_available():
        return "no CUDA device is available"
    return f"the installed faiss has no GPU support ({GPU_INSTALL_HINT})"


def cuml_missing() -> str | None:
    """Why cuML cannot run here (None when it can), phrased for :func:`choose_backend`."""
    if importlib.util.find_spec("cuml") is None:
        return f"cuML is not installed ({GPU_INSTALL_HINT})"
    if not cuda_available():
        return "no CUDA device is available"
    if not cuml_available():
        return "cuML is installed but fails to import (see `python -c 'import cuml'`)"
    return None
