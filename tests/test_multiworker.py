"""Several workers compute what one process computes on the concatenated batch.

Two real gloo processes (torch.multiprocessing); each holds half of a batch. With the gradient-preserving
all-gather and DDP's gradient averaging, the mean of the workers' losses and the averaged gradients must
equal one process's loss and gradient on the whole batch — for InfoNCE, InfoNCE+NRCC, BYOL+NRCC and
Barlow Twins, both for the loss functions and for the real method modules under DDP (BatchNorm replaced by
identity there, since per-worker batch statistics differ by design). CueCo's cluster statistics reduce to
the same update on every worker as on the whole batch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from nrcc_scale.config_load import load_config
from nrcc_scale.methods import build_method
from nrcc_scale.methods.barlow_twins import barlow_twins_loss
from nrcc_scale.methods.cueco import MomentumClusters
from nrcc_scale.methods.distributed import gather_no_grad, gather_with_grad, row_offset
from nrcc_scale.methods.infonce import info_nce_loss
from nrcc_scale.methods.nrcc import nrcc_regularizer

WORLD = 2
N_LOCAL = 4
D_IN, D = 6, 5


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = WORLD * N_LOCAL
    return (torch.randn(n, D_IN, generator=g, dtype=torch.float64),
            torch.randn(n, D_IN, generator=g, dtype=torch.float64),
            torch.randn(n, D_IN, generator=g, dtype=torch.float64),
            torch.randn(D_IN, D, generator=g, dtype=torch.float64))


def _objectives(weight, xa, xb, xc):
    """Loss functions on a linear encoder; returns {name: loss} for this process's rows."""
    za, zb = F.normalize(xa @ weight, dim=1), F.normalize(xb @ weight, dim=1)
    zc = F.normalize(xc @ weight, dim=1).detach()
    out = {"infonce": info_nce_loss(za, zb, 0.2)}
    v_neg = gather_no_grad(zc)
    kwargs = dict(weight=0.5, temperature=0.3, positive_weight=1.0, exclude_self=True,
                  offset=row_offset(za.shape[0]))
    out["infonce_nrcc"] = out["infonce"] + 0.5 * (
        nrcc_regularizer(za, gather_with_grad(zb), v_neg, **kwargs)
        + nrcc_regularizer(zb, gather_with_grad(za), v_neg, **kwargs))
    # BYOL+NRCC's regularizer: positives from a (stop-gradient) target, gathered without gradient
    out["byol_nrcc_reg"] = nrcc_regularizer(za, gather_no_grad(zb.detach()), v_neg, **kwargs)
    out["barlow_twins"] = barlow_twins_loss(xa @ weight, xb @ weight, 0.01)
    return out


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        xa, xb, xc, w0 = _data()
        rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        results = {}
        for name in ("infonce", "infonce_nrcc", "byol_nrcc_reg", "barlow_twins"):
            weight = w0.clone().requires_grad_(True)
            loss = _objectives(weight, xa[rows], xb[rows], xc[rows])[name]
            loss.backward()
            grad = weight.grad.clone()
            dist.all_reduce(grad)  # what DDP does: the mean of the workers' gradients
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            results[name] = (mean_loss / WORLD, grad / WORLD)
        results["methods"] = _method_step(rank)
        results["cueco"] = _cueco_update(rank)
        results["cueco_perturbed"] = _cueco_update(rank, perturb=1e-6 * rank)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _no_bn_method(name: str, negatives: str = "augment"):
    cfg = load_config(overrides=[f"method.name={name}", "model.projector_hidden=16", "model.predictor_hidden=16",
                                 "model.projector_dim=8", f"method.nrcc.negatives={negatives}",
                                 "method.nrcc.weight=0.5"])
    torch.manual_seed(0)
    method = build_method(cfg, 8).double()
    for module in list(method.modules()):
        for child_name, child in module.named_children():
            if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
                setattr(module, child_name, torch.nn.Identity())
    return method


def _images(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(WORLD * N_LOCAL, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(3)]


def _method_step(rank: int | None):
    """Loss and online gradients of one step of the real method modules (DDP when rank is given)."""
    out = {}
    images = _images()
    for name in ("infonce", "byol", "barlow_twins"):
        method = _no_bn_method(name)
        model = torch.nn.parallel.DistributedDataParallel(method) if rank is not None else method
        rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL) if rank is not None else slice(None)
        step = model(*(x[rows] for x in images))
        step.loss.backward()
        loss = step.loss.detach().clone()
        if rank is not None:
            dist.all_reduce(loss)
            loss /= WORLD
        out[name] = (loss, {k: p.grad.clone() for k, p in method.online.named_parameters()})
    return out


def _cueco_update(rank: int | None, perturb: float = 0.0):
    """``perturb`` shifts the gathered keys on this worker only: a stand-in for a reduction whose last bits
    differ between workers (CUDA atomics); the broadcast must still leave every worker with rank 0's state."""
    g = torch.Generator().manual_seed(2)
    keys = F.normalize(torch.randn(WORLD * N_LOCAL, D, generator=g), dim=1)
    clusters = MomentumClusters(3, D, 0.9, 0.9, seed=0)
    local = keys if rank is None else keys[rank * N_LOCAL:(rank + 1) * N_LOCAL]
    all_keys = gather_no_grad(local)
    clusters.update(all_keys + perturb, clusters.assign(all_keys))
    return clusters.centroids.clone(), clusters.variances.clone()


@pytest.fixture(scope="module")
def two_worker_results() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(_worker, args=(init_file, tmp), nprocs=WORLD, join=True)
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("name", ["infonce", "infonce_nrcc", "byol_nrcc_reg", "barlow_twins"])
def test_loss_functions_on_two_workers_equal_one_process(two_worker_results, name: str) -> None:
    xa, xb, xc, w0 = _data()
    weight = w0.clone().requires_grad_(True)
    loss = _objectives(weight, xa, xb, xc)[name]
    loss.backward()
    for result in two_worker_results:
        got_loss, got_grad = result[name]
        assert float(got_loss) == pytest.approx(float(loss.detach()), rel=1e-10)
        torch.testing.assert_close(got_grad, weight.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["infonce", "byol", "barlow_twins"])
def test_method_modules_under_ddp_equal_one_process(two_worker_results, name: str) -> None:
    single_loss, single_grads = _method_step(None)[name]
    for result in two_worker_results:
        loss, grads = result["methods"][name]
        assert float(loss) == pytest.approx(float(single_loss), rel=1e-9)
        for key, grad in single_grads.items():
            torch.testing.assert_close(grads[key], grad, rtol=1e-7, atol=1e-10, msg=key)


def test_cueco_cluster_statistics_reduce_to_the_whole_batch_update(two_worker_results) -> None:
    centroids, variances = _cueco_update(None)
    for result in two_worker_results:
        torch.testing.assert_close(result["cueco"][0], centroids)
        torch.testing.assert_close(result["cueco"][1], variances)


def test_cueco_cluster_statistics_are_identical_on_every_worker_by_construction(two_worker_results) -> None:
    """Rank 1 computed its update from slightly different numbers; after the update both workers hold rank
    0's buffers bit for bit (the broadcast), and those equal the single-process update."""
    rank0, rank1 = (r["cueco_perturbed"] for r in two_worker_results)
    assert torch.equal(rank0[0], rank1[0]) and torch.equal(rank0[1], rank1[1])
    centroids, variances = _cueco_update(None)
    assert torch.equal(rank0[0], centroids) and torch.equal(rank0[1], variances)
