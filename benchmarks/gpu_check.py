"""`make gpu-check`: one command that says whether nrcc-scale's GPU half works on this machine, and how fast.

    python benchmarks/gpu_check.py --quick --json results/gpu_check.json

Needs only torch, numpy, scipy and scikit-learn, run from the source tree (no install): Ray, umap-learn,
faiss, cuML, cuVS, timm and PyYAML are optional, and each missing one turns the rows that need it into
"skipped" rows, never a crash. On a GPU (about 5 minutes on one H100-class card with ``--quick``) it checks:

* environment: Python, torch, CUDA, the device, bf16 support, which optional libraries are present;
* GridShift on CUDA against NumPy at 10^6 x 3-d, h = 2 and h = 0.5: equal partitions, and both times;
* GPU kNN (faiss-GPU after its kernel check, else cuVS) against exact search: recall@10;
* one AMP training step per method (NRCC on where it applies): finite, and loss = loss_base + loss_nrcc;
* BYOL vs BYOL+NRCC images/s and their ratio at ResNet-18 / 32 px and ResNet-50 / 224 px in bf16;
* the SGHMC input gradient in bf16 against float32 (cosine and relative error);
* a checkpoint round trip (save, load into a fresh model, the next step's loss is identical).

On a CPU it runs the same checks where they make sense (GridShift torch-CPU vs NumPy at 10^5, a CPU kNN, the
AMP-step rows in float32, a small BYOL/BYOL+NRCC ratio, SGHMC in CPU bf16, the round trip) and marks each
GPU figure "missing (no CUDA device)". Exit status 0 unless a check produced a wrong result.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import parse_args, print_table, timed, write_json

OK, FAIL, SKIPPED, MISSING = "ok", "FAIL", "skipped", "missing"
OPTIONAL = ("ray", "umap", "faiss", "cuml", "cuvs", "timm", "yaml")
COLUMNS = ["check", "device", "result", "seconds", "status"]


def _have(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken or blocked installation counts as absent
        return False


def _version(name: str) -> str:
    try:
        return str(getattr(importlib.import_module(name), "__version__", "present"))
    except Exception as err:  # a library that is installed but fails to import (CUDA mismatch...)
        return f"fails to import: {type(err).__name__}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Checks:
    """Collects rows; a check that raises becomes a FAIL row with the error, and the run goes on."""

    def __init__(self, device: torch.device, quick: bool) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.quick = quick
        self.rows: list[dict[str, Any]] = []

    def add(self, check: str, result: str, status: str, seconds: float | None = None,
            device: str | None = None, **extra: Any) -> None:
        row = {"check": check, "device": device or str(self.device), "result": result,
               "seconds": None if seconds is None else round(seconds, 4), "status": status, **extra}
        self.rows.append(row)
        print(f"  [{status}] {check}: {result}", flush=True)

    def missing_gpu(self, check: str) -> None:
        self.add(check, "no CUDA device on this machine", MISSING, device="cuda")

    def run(self, check: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as err:
            traceback.print_exc()
            self.add(check, f"{type(err).__name__}: {err}"[:300], FAIL)


# ----------------------------------------------------------------------------------------------- checks
def check_environment(c: Checks) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if c.cuda:
        props = torch.cuda.get_device_properties(c.device)
        env.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported(),
                   device_count=torch.cuda.device_count())
        c.add("environment", f"{props.name} (sm_{props.major}{props.minor}, {env['memory_gib']} GiB), torch "
              f"{torch.__version__} CUDA {torch.version.cuda}, bf16 {'yes' if env['bf16'] else 'no'}", OK)
    else:
        c.add("environment", f"Python {env['python']}, torch {torch.__version__}, no CUDA device: GPU figures "
              "below are missing", OK, device="cpu")
    for name in OPTIONAL:
        if _have(name):
            version = _version(name)
            env[name] = version
            status = FAIL if version.startswith("fails to import") else OK
            c.add(f"library {name}", version, status, device="-")
        else:
            env[name] = None
            c.add(f"library {name}", "not installed: rows that need it are skipped", SKIPPED, device="-")
    return env


def _blobs(n: int, seed: int = 0) -> np.ndarray:
    """n points in 3-d: 20 Gaussian blobs (std 1) with centres spread over a 40-wide cube."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-20, 20, size=(20, 3))
    return (centres[rng.integers(0, 20, n)] + rng.standard_normal((n, 3))).astype(np.float32)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to the cluster numbering (GridShift numbers clusters by mode cell, so usually equal)."""
    if len(a) != len(b):
        return False
    pairs = np.unique(np.stack([a, b], axis=1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def check_gridshift(c: Checks) -> None:
    from nrcc_scale.cluster import GridShift

    n = 1_000_000 if c.cuda else (100_000 if c.quick else 1_000_000)
    x = _blobs(n)
    xt = torch.from_numpy(x).to(c.device)  # on the GPU: where the evaluation's UMAP output would be
    for h in (2.0, 0.5):
        name = f"GridShift {n:.0e} x 3-d, h={h}"
        t_np, ref = timed(lambda h=h: GridShift(bandwidth=h, backend="numpy").fit_predict(x), repeats=1, warmup=0)
        if c.cuda:
            t_gpu, got = timed(lambda h=h: GridShift(bandwidth=h, backend="torch").fit_predict(xt),
                               repeats=3, warmup=1, sync=lambda: _sync(c.device))
            equal = _same_partition(got, ref)
            c.add(f"{name}: torch-cuda vs numpy", f"{len(np.unique(got))} clusters, equal labels: "
                  f"{'yes' if equal else 'NO'}; cuda {t_gpu * 1e3:.1f} ms, numpy {t_np * 1e3:.0f} ms "
                  f"({t_np / t_gpu:.0f}x)", OK if equal else FAIL, t_gpu, gpu_ms=t_gpu * 1e3, numpy_ms=t_np * 1e3,
                  n=n, bandwidth=h)
        else:
            t_cpu, got = timed(lambda h=h: GridShift(bandwidth=h, backend="torch-cpu").fit_predict(xt),
                               repeats=1, warmup=0)
            equal = _same_partition(got, ref)
            c.add(f"{name}: torch-cpu vs numpy", f"{len(np.unique(got))} clusters, equal labels: "
                  f"{'yes' if equal else 'NO'}; torch-cpu {t_cpu * 1e3:.0f} ms, numpy {t_np * 1e3:.0f} ms",
                  OK if equal else FAIL, t_cpu, device="cpu", numpy_ms=t_np * 1e3, n=n, bandwidth=h)
            c.missing_gpu(f"GridShift 1e+06 x 3-d, h={h}: torch-cuda time")


def _exact_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """Exact cosine neighbours (self excluded) by blocked matrix products in float32."""
    x = torch.nn.functional.normalize(x.float(), dim=1)
    out = []
    for start in range(0, len(x), 4096):
        sims = x[start:start + 4096] @ x.T
        rows = torch.arange(start, min(start + 4096, len(x)), device=x.device)
        sims[rows - start, rows] = -float("inf")
        out.append(sims.topk(k, dim=1).indices)
    return torch.cat(out)


def gpu_search(x: np.ndarray, k: int, backend: str) -> tuple[np.ndarray, np.ndarray]:
    """The kNN of ``x`` against itself (cosine) with the named GPU backend ("cuvs" or faiss-GPU)."""
    from nrcc_scale.cluster.gpu_knn import cuvs_search
    from nrcc_scale.cluster.knn import knn_search, l2_normalize

    if backend == "cuvs":
        return cuvs_search(l2_normalize(np.asarray(x, dtype=np.float32)), None, k, "cosine")
    result = knn_search(x, None, k, metric="cosine", use_gpu=True)
    return result.similarities, result.indices


def check_knn(c: Checks) -> None:
    n, d, k = (200_000 if c.cuda else 10_000), 128, 10
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((50, d)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    exact = _exact_topk(torch.from_numpy(x).to(c.device), k).cpu().numpy()

    def recall(ids: np.ndarray) -> float:
        hits = sum(len(np.intersect1d(a, b)) for a, b in zip(ids, exact, strict=True))
        return hits / exact.size

    from nrcc_scale.cluster import gpu_knn

    if c.cuda:
        backend, why = gpu_knn.gpu_knn_backend()
        c.add("GPU kNN kernel check", f"{backend}: {why}", OK if backend != "none" else SKIPPED)
        if backend == "none":
            return
        seconds, (_, ids) = timed(lambda: gpu_search(x, k + 1, backend), repeats=1, warmup=1,
                                  sync=lambda: _sync(c.device))
        r = recall(_drop_self_ids(ids, k))
        c.add(f"kNN {backend} {n:.0e} x {d}-d, k={k}: recall@{k} vs exact", f"{r:.4f}",
              OK if r >= 0.95 else FAIL, seconds, recall=r)
        return
    c.missing_gpu("GPU kNN kernel check and recall")
    if not _have("faiss"):
        c.add("kNN faiss-cpu recall", "faiss not installed", SKIPPED, device="cpu")
        return
    from nrcc_scale.cluster.knn import knn_search

    seconds, graph = timed(lambda: knn_search(x, None, k, metric="cosine", use_gpu=False, exclude_self=True),
                           repeats=1, warmup=0)
    r = recall(graph.indices)
    c.add(f"kNN {graph.backend} {n:.0e} x {d}-d, k={k}: recall@{k} vs exact", f"{r:.4f}",
          OK if r >= 0.95 else FAIL, seconds, device="cpu", recall=r)


def _drop_self_ids(ids: np.ndarray, k: int) -> np.ndarray:
    """k neighbours per row without the row itself (a search of the database against itself)."""
    rows = np.arange(len(ids))[:, None]
    keep = ids != rows
    return np.stack([row[m][:k] for row, m in zip(ids, keep, strict=True)])


def _config(method: str, backbone: str, nrcc: bool, batch: int, overrides: dict[str, Any] | None = None):
    from nrcc_scale.config import Config
    from nrcc_scale.config_checks import validate_config

    cfg = Config()
    cfg.method.name = method
    cfg.method.nrcc.enabled = nrcc
    cfg.model.backbone = backbone
    cfg.train.batch_size = batch
    cfg.train.num_workers = 1
    for key, value in (overrides or {}).items():
        obj = cfg
        *path, last = key.split(".")
        for part in path:
            obj = getattr(obj, part)
        setattr(obj, last, value)
    validate_config(cfg)
    return cfg


def _step_once(method, optimizer, xs, dtype, scaler):
    with torch.autocast(xs[0].device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = method(*xs)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(out.loss).backward()
    scaler.step(optimizer)
    scaler.update()
    method.after_optimizer_step(0.5)
    return out


def _amp_dtype() -> Any:
    from nrcc_scale.engine.gpu_defaults import amp_dtype

    return amp_dtype


def check_amp_steps(c: Checks) -> None:
    if not _have("timm"):
        c.add("AMP step per method", "timm not installed (the backbones come from timm)", SKIPPED)
        return
    from nrcc_scale.methods import METHOD_CLASSES, build_method

    dtype = _amp_dtype()("auto", c.device)
    res, batch = (32, 64) if c.cuda else (16, 8)
    for name in METHOD_CLASSES:
        nrcc = name != "cueco"
        cfg = _config(name, "resnet18" if c.cuda else "resnet_tiny", nrcc, batch,
                      {"method.cueco.queue_size": 256, "method.cueco.num_centroids": 10})
        torch.manual_seed(0)
        method = build_method(cfg, res).to(c.device).train()
        optimizer = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
        scaler = torch.amp.GradScaler(c.device.type, enabled=dtype == torch.float16)
        xs = [torch.randn(batch, 3, res, res, device=c.device) for _ in range(2)]
        started = time.perf_counter()
        out = _step_once(method, optimizer, xs, dtype, scaler)
        _sync(c.device)
        seconds = time.perf_counter() - started
        m = {k: float(v) for k, v in out.metrics.items()}
        finite = all(np.isfinite(v) for v in m.values())
        summed = True
        if "loss_nrcc" in m:
            total = m["loss_base"] + m["loss_nrcc"]
            summed = abs(m["loss"] - total) <= 4 * np.finfo(np.float32).eps * max(1.0, abs(total))
        label = f"{name}{'+NRCC' if nrcc else ''}"
        dtype_name = {None: "float32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
        c.add(f"AMP step {label} ({dtype_name}, {cfg.model.backbone}/{res} px)",
              f"loss {m['loss']:.4f}" + (f" = base {m['loss_base']:.4f} + nrcc {m['loss_nrcc']:.5f}"
                                         if "loss_nrcc" in m else "") + f", dtype {out.loss.dtype}",
              OK if finite and summed and out.loss.dtype == torch.float32 else FAIL, seconds)


def _throughput(c: Checks, backbone: str, res: int, batch: int, nrcc: bool, steps: int, dtype) -> float:
    from nrcc_scale.engine.gpu_defaults import configure_cuda
    from nrcc_scale.methods import build_method

    configure_cuda(c.device, deterministic=False)
    cfg = _config("byol", backbone, nrcc, batch)
    torch.manual_seed(0)
    method = build_method(cfg, res).to(c.device).train()
    channels_last = c.cuda and backbone.startswith("resnet")
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(c.device.type, enabled=dtype == torch.float16)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xs = [torch.randn(batch, 3, res, res, device=c.device).contiguous(memory_format=fmt) for _ in range(2)]

    def run() -> None:
        for _ in range(steps):
            _step_once(method, optimizer, xs, dtype, scaler)

    seconds = timed(run, repeats=1, warmup=1, sync=lambda: _sync(c.device))[0]
    return steps * batch / seconds


def _free_cuda() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_throughput(c: Checks) -> dict[str, Any]:
    if not _have("timm"):
        c.add("BYOL vs BYOL+NRCC throughput", "timm not installed", SKIPPED)
        return {}
    out: dict[str, Any] = {}
    if c.cuda:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        cases = [("resnet18", 32, 256, 10 if c.quick else 30), ("resnet50", 224, 128, 8 if c.quick else 25)]
    else:
        dtype = None
        cases = [("resnet_tiny", 16, 32, 2 if c.quick else 10)]
        for backbone, res in (("resnet18", 32), ("resnet50", 224)):
            c.missing_gpu(f"BYOL vs BYOL+NRCC img/s, {backbone}/{res} px bf16")
    for backbone, res, batch, steps in cases:
        base = _throughput(c, backbone, res, batch, False, steps, dtype)
        _free_cuda()
        with_nrcc = _throughput(c, backbone, res, batch, True, steps, dtype)
        _free_cuda()
        ratio = base / with_nrcc
        dtype_name = {None: "float32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
        key = f"{backbone}_{res}px"
        out[key] = {"byol_img_s": base, "byol_nrcc_img_s": with_nrcc, "ratio": ratio, "batch": batch,
                    "dtype": dtype_name}
        c.add(f"BYOL vs BYOL+NRCC img/s, {backbone}/{res} px {dtype_name}, batch {batch}",
              f"BYOL {base:.0f} img/s, BYOL+NRCC {with_nrcc:.0f} img/s, cost {ratio:.2f}x", OK,
              byol_img_s=base, byol_nrcc_img_s=with_nrcc, ratio=ratio)
    return out


def check_sghmc_precision(c: Checks) -> None:
    """The potential's input gradient through a conv net under bf16 autocast vs float32 (a plain torch net;
    the ``nrcc_scale.methods`` package itself imports timm for its backbones)."""
    if not _have("timm"):
        c.add("SGHMC input gradient bf16 vs float32", "timm not installed (nrcc_scale.methods imports it)", SKIPPED)
        return
    from nrcc_scale.methods.sghmc import potential_gradient

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.BatchNorm2d(64), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 128)).to(c.device)
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.randn(64, 3, 32, 32, device=c.device)
    with torch.no_grad():
        ref = net(torch.randn(64, 3, 32, 32, device=c.device))
    g32 = potential_gradient(net, x, ref)
    with torch.autocast(c.device.type, dtype=torch.bfloat16):
        g16 = potential_gradient(net, x, ref)
    cos = float(torch.nn.functional.cosine_similarity(g16.flatten().double(), g32.flatten().double(), dim=0))
    rel = float((g16.double() - g32.double()).norm() / g32.double().norm())
    c.add("SGHMC input gradient bf16 vs float32", f"cosine {cos:.5f}, relative error {rel:.3g}, dtype {g16.dtype}",
          OK if cos > 0.99 and g16.dtype == torch.float32 else FAIL, cosine=cos, relative_error=rel)


def check_checkpoint(c: Checks) -> None:
    if not _have("timm"):
        c.add("checkpoint round trip", "timm not installed", SKIPPED)
        return
    from nrcc_scale.engine.checkpoint import TrainingState, read_state, write_checkpoint
    from nrcc_scale.methods import build_method

    dtype = _amp_dtype()("auto", c.device)
    cfg = _config("byol", "resnet_tiny", True, 16)
    res = 16

    def fresh():
        torch.manual_seed(0)
        method = build_method(cfg, res).to(c.device).train()
        return method, torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)

    started = time.perf_counter()
    method, optimizer = fresh()
    scaler = torch.amp.GradScaler(c.device.type, enabled=dtype == torch.float16)
    xs = [torch.randn(16, 3, res, res, device=c.device) for _ in range(2)]
    _step_once(method, optimizer, xs, dtype, scaler)
    with tempfile.TemporaryDirectory() as tmp:
        saved = TrainingState(model=method.state_dict(), optimizer=optimizer.state_dict(), scaler=None, epoch=0,
                              step=1, sampler_epoch=0, schedule=None, history=[], config=cfg.to_dict(),
                              world_size=1, resolution=res)
        write_checkpoint(Path(tmp), 0, {"cpu": torch.get_rng_state()}, saved)
        state = read_state(Path(tmp))
    restored, restored_opt = fresh()
    restored.load_state_dict(state.model)
    restored_opt.load_state_dict(state.optimizer)
    equal = all(torch.equal(a, b) for a, b in zip(method.state_dict().values(), restored.state_dict().values(),
                                                  strict=True))
    torch.manual_seed(1)
    a = float(_step_once(method, optimizer, xs, dtype, scaler).metrics["loss"])
    torch.manual_seed(1)
    b = float(_step_once(restored, restored_opt, xs, dtype, torch.amp.GradScaler(c.device.type,
                                                                                  enabled=dtype == torch.float16))
              .metrics["loss"])
    _sync(c.device)
    c.add("checkpoint round trip (BYOL+NRCC)", f"tensors equal: {'yes' if equal else 'NO'}; next-step loss "
          f"{a:.6f} vs {b:.6f}", OK if equal and a == b else FAIL, time.perf_counter() - started)


# ------------------------------------------------------------------------------------------------- main
def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    c = Checks(device, args.quick)
    started = time.perf_counter()
    print(f"gpu-check on {device} ({'quick' if args.quick else 'full'})", flush=True)
    env = check_environment(c)
    c.run("GridShift", lambda: check_gridshift(c))
    c.run("kNN", lambda: check_knn(c))
    c.run("AMP step", lambda: check_amp_steps(c))
    throughput: dict[str, Any] = {}
    c.run("throughput", lambda: throughput.update(check_throughput(c)))
    c.run("SGHMC precision", lambda: check_sghmc_precision(c))
    c.run("checkpoint", lambda: check_checkpoint(c))
    total = time.perf_counter() - started

    print_table(c.rows, COLUMNS, title=f"gpu-check ({device}, {total:.0f} s)")
    failed = [r["check"] for r in c.rows if r["status"] == FAIL]
    missing = [r["check"] for r in c.rows if r["status"] == MISSING]
    notes = [f"device: {env.get('device_name', 'CPU only')}; torch {torch.__version__}",
             "machine may have been loaded by other work"]
    if missing:
        notes.append(f"{len(missing)} GPU figure(s) missing: no CUDA device on this machine")
    if failed:
        notes.append(f"FAILED: {', '.join(failed)}")
    print("\n" + "\n".join(notes))
    if args.json:
        write_json(args.json, {"quick": args.quick, "device": str(device), "environment": env,
                               "rows": c.rows, "throughput": throughput, "seconds": total,
                               "report": {"title": f"gpu-check on {env.get('device_name', 'CPU')}",
                                          "columns": COLUMNS,
                                          "rows": [{k: r.get(k) for k in COLUMNS} for r in c.rows],
                                          "notes": notes, "plots": []}})
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
