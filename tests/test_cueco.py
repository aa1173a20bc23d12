"""CueCo: its three losses and its momentum clustering against per-sample loops (docs/spec/METHOD.md, CueCo)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nrcc_scale.config import CueCoConfig
from nrcc_scale.config_load import load_config
from nrcc_scale.methods import build_method
from nrcc_scale.methods.cueco import MomentumClusters, cueco_losses

DT = torch.float64


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=DT), dim=1)


def _clusters(num: int, d: int) -> MomentumClusters:
    clusters = MomentumClusters(num, d, beta1=0.9, beta2=0.8, seed=3)
    clusters.centroids = clusters.centroids.double()
    clusters.variances = torch.linspace(0.05, 0.2, num, dtype=DT)
    return clusters


def test_momentum_clustering_update_equals_a_per_sample_loop() -> None:
    d, num = 4, 5
    clusters = _clusters(num, d)
    keys = _unit(12, d, 1)
    assignment = torch.tensor([0, 0, 1, 1, 1, 3, 3, 3, 3, 0, 1, 3])  # clusters 2 and 4 are empty
    c0, v0 = clusters.centroids.clone(), clusters.variances.clone()
    clusters.update(keys, assignment)
    for lbl in range(num):
        members = [keys[i] for i in range(12) if int(assignment[i]) == lbl]
        if not members:
            assert torch.equal(clusters.centroids[lbl], c0[lbl]), "empty cluster's centroid must not move"
            assert clusters.variances[lbl] == v0[lbl], "empty cluster's variance must not move"
            assert not clusters.hit[lbl]
            continue
        mu = sum(members) / len(members)
        spread = sum(float((z - mu) @ (z - mu)) for z in members) / len(members) / d
        c_new = 0.9 * c0[lbl] + 0.1 * mu
        torch.testing.assert_close(clusters.centroids[lbl], c_new / c_new.norm(), rtol=1e-12, atol=1e-12)
        assert float(clusters.variances[lbl]) == pytest.approx(0.8 * float(v0[lbl]) + 0.2 * spread, rel=1e-10)
        assert clusters.hit[lbl]


def test_clusters_empty_for_an_epoch_are_reseeded_identically_everywhere() -> None:
    keys = _unit(10, 4, 2)
    a, b = _clusters(6, 4), _clusters(6, 4)
    assignment = torch.tensor([0] * 5 + [1] * 5)
    for c in (a, b):
        c.update(keys, assignment)
    before = a.centroids.clone()
    assert a.reseed_empty(keys, epoch=4) == 4
    b.reseed_empty(keys, epoch=4)
    assert torch.equal(a.centroids, b.centroids)  # same choice on every worker
    assert torch.equal(a.centroids[:2], before[:2])  # hit clusters untouched
    for row in a.centroids[2:]:
        assert any(torch.allclose(row, k) for k in keys)  # re-seeded from a key of the batch
    assert not a.hit.any()


def test_losses_equal_per_sample_loops() -> None:
    d, num, k = 4, 3, 6
    cfg = CueCoConfig(temperature=0.2, variance_eps=1e-6)
    clusters = _clusters(num, d)
    q, keys, queue = _unit(5, d, 4), _unit(5, d, 5), _unit(k, d, 6)
    assignment = clusters.assign(keys)
    got = cueco_losses(q, keys, queue, clusters, cfg, assignment)
    l1 = l2 = l3 = 0.0
    tau = 0.2
    for i in range(5):
        pos = math.exp(float(q[i] @ keys[i]) / tau)
        l1 += -math.log(pos / (pos + sum(math.exp(float(q[i] @ queue[j]) / tau) for j in range(k))))
        target = int(torch.argmax(keys[i] @ clusters.centroids.T))
        assert target == int(assignment[i])
        logits = [float(q[i] @ clusters.centroids[m]) / tau for m in range(num)]
        l2 += -(logits[target] - math.log(sum(math.exp(v) for v in logits)))
        diff = q[i] - clusters.centroids[target]
        l3 += float(diff @ diff) / (2 * float(clusters.variances[target]) + 1e-6)
    assert float(got["l1"]) == pytest.approx(l1 / 5, rel=1e-10)
    assert float(got["l2"]) == pytest.approx(l2 / 5, rel=1e-10)
    assert float(got["l3"]) == pytest.approx(l3 / 5, rel=1e-10)


def test_cueco_step_updates_queue_centroids_and_target() -> None:
    cfg = load_config(overrides=["method.name=cueco", "method.cueco.queue_size=8", "method.cueco.num_centroids=4",
                                 "model.projector_hidden=16", "model.projector_dim=8"])
    torch.manual_seed(0)
    method = build_method(cfg, 8)
    queue0, cent0 = method.queue.clone(), method.clusters.centroids.clone()
    target0 = [p.clone() for p in method.target.parameters()]
    out = method(torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8))
    out.loss.backward()
    method.after_optimizer_step(0.5)
    assert int(method.queue_ptr) == 3
    assert not torch.equal(method.queue[:3], queue0[:3]) and torch.equal(method.queue[3:], queue0[3:])
    assert not torch.equal(method.clusters.centroids, cent0)
    # the online network did not move (no optimizer step), so EMA keeps the target where it was
    assert all(torch.allclose(a, b) for a, b in zip(method.target.parameters(), target0, strict=True))
    assert {"loss_l1", "loss_l2", "loss_l3", "loss"} <= set(out.metrics)
