"""CueCo (seed 000): InfoNCE against a MoCo queue, plus a centroid-contrastive loss and a variance loss over
momentum-updated cluster centroids (docs/spec/METHOD.md fixes what the summary leaves open).

    L1 = InfoNCE of query z against its key z' (momentum encoder, other view) and the K queued keys, tau
    L2 = cross-entropy of <z, c_l> / tau_c against i[z] = argmax_l <z', c_l>          (tau_c = tau)
    L3 = ||z - c_{i[z]}||^2 / (2 sigma^2_{i[z]} + eps)
    L  = lambda1 L1 + lambda2 L2 + lambda3 L3

After each optimizer step, with S_l the keys assigned to cluster l in the batch gathered from every worker
(so every worker applies the same update; the float64 sums use ``index_add_``, whose CUDA atomics add in
no fixed order, so rank 0's result is then broadcast and the buffers are identical by construction):

    c_l       <- normalize(beta1 c_l + (1 - beta1) mean_{S_l} z')
    sigma^2_l <- beta2 sigma^2_l + (1 - beta2) mean_{S_l} ||z' - mu_l||^2 / d      (mu_l: batch mean of S_l)

Empty clusters are left unchanged; a cluster that stays empty for a whole epoch is re-seeded from a key of
the last batch (the same key on every worker: the choice is seeded by the epoch).

Both views serve as queries (each against the other view's key), so every image contributes two queries
per step; the queue receives the keys of view b (n per worker per step, as MoCo).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nrcc_scale.config import Config, CueCoConfig
from nrcc_scale.methods.base import StepOutput, normalized
from nrcc_scale.methods.distributed import broadcast_from_rank0, gather_no_grad
from nrcc_scale.methods.momentum import MomentumMethod
from nrcc_scale.methods.precision import full_precision


class MomentumClusters(nn.Module):
    """Centroids (unit vectors), per-cluster variances and which clusters were hit this epoch."""

    def __init__(self, num_clusters: int, dim: int, beta1: float, beta2: float, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.beta1, self.beta2, self.dim, self.seed = beta1, beta2, dim, seed
        self.register_buffer("centroids", F.normalize(torch.randn(num_clusters, dim, generator=gen), dim=1))
        # a uniform unit vector has per-coordinate variance 1/d
        self.register_buffer("variances", torch.full((num_clusters,), 1.0 / dim))
        self.register_buffer("hit", torch.zeros(num_clusters, dtype=torch.bool))

    @torch.no_grad()
    def assign(self, keys: Tensor) -> Tensor:
        return (keys.to(self.centroids.dtype) @ self.centroids.T).argmax(dim=1)

    @torch.no_grad()
    def update(self, keys: Tensor, assignment: Tensor) -> None:
        """Momentum update from one (gathered) batch of keys and their cluster assignments."""
        keys = keys.double()
        num = self.centroids.shape[0]
        counts = torch.bincount(assignment, minlength=num).double()
        sums = torch.zeros(num, keys.shape[1], dtype=torch.float64, device=keys.device)
        sums.index_add_(0, assignment, keys)
        sq = torch.zeros(num, dtype=torch.float64, device=keys.device)
        sq.index_add_(0, assignment, keys.pow(2).sum(dim=1))
        present = counts > 0
        safe = counts.clamp_min(1.0)
        mean = sums / safe[:, None]
        # mean ||z' - mu||^2 = mean ||z'||^2 - ||mu||^2
        spread = (sq / safe - mean.pow(2).sum(dim=1)).clamp_min(0.0) / keys.shape[1]
        new_c = F.normalize(self.beta1 * self.centroids.double() + (1 - self.beta1) * mean, dim=1)
        new_v = self.beta2 * self.variances.double() + (1 - self.beta2) * spread
        self.centroids[present] = new_c[present].to(self.centroids.dtype)
        self.variances[present] = new_v[present].to(self.variances.dtype)
        self.hit |= present
        # identical on every worker by construction (a few kB per step): see the module docstring
        broadcast_from_rank0(self.centroids, self.variances, self.hit)

    @torch.no_grad()
    def reseed_empty(self, keys: Tensor, epoch: int) -> int:
        """Clusters not hit since the last call take a random key of ``keys``; returns how many."""
        empty = torch.nonzero(~self.hit).flatten()
        if len(empty) and len(keys):
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            rows = torch.randint(0, len(keys), (len(empty),), generator=gen).to(keys.device)
            self.centroids[empty] = F.normalize(keys[rows].float(), dim=1).to(self.centroids.dtype)
            self.variances[empty] = 1.0 / self.dim
        self.hit.zero_()
        return int(len(empty))


@full_precision
def cueco_losses(queries: Tensor, keys: Tensor, queue: Tensor, clusters: MomentumClusters,
                 cfg: CueCoConfig, assignment: Tensor) -> dict[str, Tensor]:
    """The three CueCo losses, means over the queries (all inputs L2-normalised)."""
    pos = (queries * keys).sum(dim=1, keepdim=True)
    neg = queries @ queue.T
    logits = torch.cat([pos, neg], dim=1) / cfg.temperature
    target0 = torch.zeros(len(queries), dtype=torch.long, device=queries.device)
    l1 = F.cross_entropy(logits, target0)
    l2 = F.cross_entropy(queries @ clusters.centroids.T / cfg.temperature, assignment)
    c = clusters.centroids[assignment]
    var = clusters.variances[assignment]
    l3 = ((queries - c).pow(2).sum(dim=1) / (2.0 * var + cfg.variance_eps)).mean()
    return {"l1": l1, "l2": l2, "l3": l3}


class CueCoMethod(MomentumMethod):
    """The momentum encoder (``self.target``, updated by MomentumMethod) gives the keys and is evaluated."""

    def __init__(self, cfg: Config, resolution: int) -> None:
        super().__init__(cfg, resolution)
        c = cfg.method.cueco
        self.cueco = c
        dim = cfg.model.projector_dim
        gen = torch.Generator().manual_seed(cfg.train.seed + 1)
        self.register_buffer("queue", F.normalize(torch.randn(c.queue_size, dim, generator=gen), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.clusters = MomentumClusters(c.num_centroids, dim, c.beta1, c.beta2, seed=cfg.train.seed)
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None

    def forward(self, x_a: Tensor, x_b: Tensor, x_c: Tensor | None = None) -> StepOutput:
        _, z_a = self.online(x_a)
        _, z_b = self.online(x_b)
        with torch.no_grad():
            _, k_a = self.target(x_a)
            _, k_b = self.target(x_b)
        queries = torch.cat([normalized(z_a), normalized(z_b)])
        keys = torch.cat([normalized(k_b), normalized(k_a)])  # each query's key: the other view
        assignment = self.clusters.assign(keys)
        parts = cueco_losses(queries, keys, self.queue, self.clusters, self.cueco, assignment)
        w1, w2, w3 = self.cueco.weights
        loss = w1 * parts["l1"] + w2 * parts["l2"] + w3 * parts["l3"]
        if self.training:
            all_keys = gather_no_grad(keys)
            all_assign = gather_no_grad(assignment)
            all_queue_keys = gather_no_grad(normalized(k_b).detach())
            self._pending = (all_keys, all_assign, all_queue_keys)
        metrics = {f"loss_{k}": v.detach() for k, v in parts.items()}
        metrics["loss"] = loss.detach()
        # counted on the device: torch.unique would wait for the GPU every step
        used = (torch.bincount(assignment, minlength=self.clusters.centroids.shape[0]) > 0).sum()
        metrics["clusters_used"] = used.to(torch.float32)
        return StepOutput(loss, metrics)

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        size = self.queue.shape[0]
        if size == 0:
            return
        keys = keys[-size:]
        ptr = int(self.queue_ptr)
        idx = (torch.arange(len(keys), device=keys.device) + ptr) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + len(keys)) % size)

    def after_optimizer_step(self, progress: float) -> None:
        super().after_optimizer_step(progress)  # the EMA of the momentum encoder first, as before
        if self._pending is not None:
            keys, assignment, queue_keys = self._pending
            self.clusters.update(keys, assignment)
            self._enqueue(queue_keys)

    def on_epoch_end(self, epoch: int) -> None:
        keys = self._pending[0] if self._pending is not None else self.queue[:0]
        self.clusters.reseed_empty(keys, epoch)
