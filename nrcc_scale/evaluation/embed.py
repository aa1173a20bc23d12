"""Embed a data set with a trained encoder: whole images at the training resolution, eval mode."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from nrcc_scale.data.base import ImageSource
from nrcc_scale.data.torchvision_loader import EvalDataset


@dataclass
class Embeddings:
    features: np.ndarray  # N x D float32, L2-normalised
    labels: np.ndarray  # N int64 (ground truth, used only for scoring)
    indices: np.ndarray  # N int64: row of the source each embedding belongs to


def normalizer(source: ImageSource, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(source.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(source.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return mean, std


@torch.no_grad()
def embed_source(model: torch.nn.Module, source: ImageSource, resolution: int, device: torch.device,
                 batch_size: int = 512, indices: np.ndarray | None = None, num_workers: int = 0,
                 progress: bool = False, desc: str = "embed") -> Embeddings:
    """Embed ``source`` (or the rows ``indices`` of it) in eval mode; rows come back in the given order."""
    was_training = model.training
    model.eval()
    dataset = EvalDataset(source, resolution)
    rows = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
    subset = torch.utils.data.Subset(dataset, rows.tolist())
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    mean, std = normalizer(source, device)
    feats, labels, idx = [], [], []
    for images, y, i in tqdm(loader, desc=desc, disable=not progress, leave=False):
        x = (images.to(device).float() / 255.0 - mean) / std
        feats.append(model(x).float().cpu())
        labels.append(y)
        idx.append(i)
    model.train(was_training)
    return Embeddings(torch.cat(feats).numpy(), torch.cat(labels).numpy().astype(np.int64),
                      torch.cat(idx).numpy().astype(np.int64))

