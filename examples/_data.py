"""Tiny synthetic data shared by the examples (made on the fly, no downloads)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_data(n: int = 512, features: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A binary classification task: the label is the sign of a fixed random projection of ``x``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, generator=g)
    y = (x @ w + 0.3 * torch.randn(n, generator=g) > 0).long()
    return x, y


def make_loader(batch_size: int = 64, seed: int = 0) -> DataLoader:
    x, y = make_data(seed=seed)
    return DataLoader(
        TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


class Net(nn.Module):
    """An encoder and a decoder, so the examples can give them different settings."""

    def __init__(self, features: int = 10, hidden: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(features, hidden), nn.ReLU())
        self.decoder = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def steps_arg(default: int) -> int:
    """``--steps N`` from the command line (the tests pass a small N)."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=default, help=f"optimizer steps (default {default})")
    return parser.parse_args().steps
