"""Projector and predictor heads: Linear -> BatchNorm -> ReLU -> Linear (docs/spec/METHOD.md notation g and q)."""

from __future__ import annotations

from torch import Tensor, nn


class MLPHead(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
