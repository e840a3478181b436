"""The demo's model: a small MLP, identical initial weights for every chain."""

from __future__ import annotations

import torch
from torch import nn


def make_model(n_features: int = 2, n_classes: int = 2, *, hidden: int = 32, seed: int = 0) -> nn.Module:
    """``Linear -> tanh -> Linear -> tanh -> Linear``, initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(n_features, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, n_classes),
        )
