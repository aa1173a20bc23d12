"""Linear evaluation (CueCo's Table 1 protocol): a linear classifier on frozen features, top-1 accuracy on
the held-out split. Plain PyTorch, so it runs on the GPU at ImageNet size and on the CPU here."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class LinearProbeResult:
    train_accuracy: float
    test_accuracy: float
    epochs: int


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 num_classes: int | None = None, epochs: int = 100, batch_size: int = 1024, lr: float = 0.1,
                 weight_decay: float = 1e-4, device: torch.device | str = "cpu", seed: int = 0
                 ) -> LinearProbeResult:
    """Softmax regression with SGD + cosine schedule on standardised features (statistics from the
    training split only, so nothing of the test split leaks into the classifier)."""
    gen = torch.Generator().manual_seed(seed)
    device = torch.device(device)
    num_classes = num_classes or int(max(train_y.max(), test_y.max()) + 1)
    xtr = torch.as_tensor(train_x, dtype=torch.float32)
    mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    xtr = ((xtr - mean) / std).to(device)
    xte = ((torch.as_tensor(test_x, dtype=torch.float32) - mean) / std).to(device)
    ytr = torch.as_tensor(train_y, dtype=torch.long, device=device)
    yte = torch.as_tensor(test_y, dtype=torch.long, device=device)
    layer = torch.nn.Linear(xtr.shape[1], num_classes).to(device)
    opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = max(1, int(np.ceil(len(xtr) / batch_size)))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(len(xtr), generator=gen).to(device)
        for start in range(0, len(xtr), batch_size):
            rows = order[start:start + batch_size]
            loss = F.cross_entropy(layer(xtr[rows]), ytr[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        train_acc = (layer(xtr).argmax(1) == ytr).float().mean().item()
        test_acc = (layer(xte).argmax(1) == yte).float().mean().item()
    return LinearProbeResult(train_acc, test_acc, epochs)
