"""GPU tests (issue 10, item 6): they run where CUDA exists and skip cleanly elsewhere.

* one AMP training step per method (NRCC on where it applies): finite, float32 loss = base + NRCC;
* the SGHMC input gradient in bf16 agrees with float32;
* a DDP step over NCCL (one process per GPU; world size 1 on a one-GPU host) equals the plain step;
* checkpoint and resume on CUDA: the resumed run continues the saved one;
* CUDA GridShift against NumPy at 10^6 points: the same partition.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nrcc_scale.config_load import load_config
from nrcc_scale.methods import METHOD_CLASSES, build_method

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SMALL = ["model.backbone=resnet18", "model.projector_hidden=256", "model.predictor_hidden=256",
         "model.projector_dim=64", "method.cueco.queue_size=512", "method.cueco.num_centroids=10"]


def _amp_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@pytest.mark.parametrize("name", sorted(METHOD_CLASSES))
def test_one_amp_step_per_method(name: str) -> None:
    cfg = load_config(overrides=[f"method.name={name}", *SMALL])
    torch.manual_seed(0)
    method = build_method(cfg, 32).cuda().train()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01)
    dtype = _amp_dtype()
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    xs = [torch.randn(32, 3, 32, 32, device="cuda") for _ in range(2)]
    with torch.autocast("cuda", dtype=dtype):
        out = method(*xs)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    m = {k: float(v) for k, v in out.metrics.items()}
    if "loss_nrcc" in m:
        assert m["loss_nrcc"] != 0.0
        assert m["loss"] == pytest.approx(m["loss_base"] + m["loss_nrcc"], rel=1e-6, abs=1e-6)
    scaler.scale(out.loss).backward()
    scaler.step(optimizer)
    scaler.update()
    method.after_optimizer_step(0.5)
    assert all(torch.isfinite(p).all() for p in method.parameters())


def test_sghmc_gradient_bf16_agrees_with_float32() -> None:
    from nrcc_scale.methods.sghmc import potential_gradient

    cfg = load_config(overrides=SMALL)
    torch.manual_seed(0)
    net = build_method(cfg, 32).cuda().target
    x = torch.randn(64, 3, 32, 32, device="cuda")
    with torch.no_grad():
        ref = net(torch.randn(64, 3, 32, 32, device="cuda"))[0]

    def features(v: torch.Tensor) -> torch.Tensor:
        return net(v)[0]

    g32 = potential_gradient(features, x, ref)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        g16 = potential_gradient(features, x, ref)
    assert g16.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0)
    assert float(cos) > 0.99


def _ddp_worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = load_config(overrides=["method.name=infonce", *SMALL])
        torch.manual_seed(0)
        method = build_method(cfg, 32).cuda()
        model = torch.nn.parallel.DistributedDataParallel(method, device_ids=[rank])
        g = torch.Generator().manual_seed(1)
        xs = [torch.randn(16 * world, 3, 32, 32, generator=g) for _ in range(2)]
        rows = slice(rank * 16, (rank + 1) * 16)
        step = model(*(x[rows].cuda() for x in xs))
        step.loss.backward()
        grad = next(method.online.parameters()).grad.detach().cpu()
        torch.save({"grad": grad, "loss": float(step.loss)}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_step_over_nccl() -> None:
    if not dist.is_nccl_available():
        pytest.skip("this torch has no NCCL")
    world = min(2, torch.cuda.device_count())
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ddp_worker, args=(world, os.path.join(tmp, "init"), tmp), nprocs=world, join=True)
        results = [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(world)]
    for r in results:
        assert np.isfinite(r["loss"]) and torch.isfinite(r["grad"]).all()
    for r in results[1:]:  # DDP averaged the gradients: every worker holds the same ones
        torch.testing.assert_close(r["grad"], results[0]["grad"])


def test_checkpoint_and_resume_on_cuda(tmp_path: Path, monkeypatch) -> None:
    from nrcc_scale.engine.checkpoint import find_latest_checkpoint, read_state
    from nrcc_scale.engine.context import LocalContext
    from nrcc_scale.engine.loop import train_worker
    from nrcc_scale.testing import FAULT_ENV, FAULT_MARKER_ENV, InjectedFault
    from nrcc_scale.train import loop_hooks

    cfg = load_config(overrides=["data.holdout_fraction=0.9", "train.batch_size=32", "train.checkpoint_every=1",
                                 "model.projector_hidden=64", "model.predictor_hidden=64", "model.projector_dim=32",
                                 "eval.enabled=false", "train.monitor_every=-1", "train.deterministic=true",
                                 "train.epochs=2"])
    cuda = torch.device("cuda", 0)
    train_worker(cfg.to_dict(), LocalContext(tmp_path / "straight", cuda), loop_hooks())
    monkeypatch.setenv(FAULT_ENV, "2:1:0")
    monkeypatch.setenv(FAULT_MARKER_ENV, str(tmp_path / "marker"))
    with pytest.raises(InjectedFault):
        train_worker(cfg.to_dict(), LocalContext(tmp_path / "resumed", cuda), loop_hooks())
    ctx = LocalContext(tmp_path / "resumed", cuda)
    train_worker(cfg.to_dict(), ctx, loop_hooks())  # the marker disarms the fault: continues from epoch 1
    assert ctx.resumed_from is not None and ctx.resumed_from.endswith("checkpoint_000001")
    a = read_state(find_latest_checkpoint(tmp_path / "straight"))
    b = read_state(find_latest_checkpoint(tmp_path / "resumed"))
    assert a.epoch == b.epoch == 2 and a.step == b.step
    assert [h["epoch"] for h in b.history] == [1, 2]
    for key, value in a.model.items():  # bf16 + cuDNN: equal to rounding, not necessarily bit for bit
        torch.testing.assert_close(b.model[key], value, rtol=1e-3, atol=1e-4, msg=key)


def test_cuda_gridshift_equals_numpy_at_a_million_points() -> None:
    from nrcc_scale.cluster import GridShift

    rng = np.random.default_rng(0)
    centres = rng.uniform(-20, 20, size=(20, 3))
    x = (centres[rng.integers(0, 20, 1_000_000)] + rng.standard_normal((1_000_000, 3))).astype(np.float32)
    for h in (2.0, 0.5):
        ref = GridShift(bandwidth=h, backend="numpy").fit_predict(x)
        gs = GridShift(bandwidth=h, backend="torch")
        got = gs.fit_predict(torch.from_numpy(x).cuda())
        assert gs.backend_ == "torch-cuda"
        assert np.array_equal(got, ref)
