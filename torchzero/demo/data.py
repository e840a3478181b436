"""The demo's data: two interleaved spirals, made on the fly (no downloads)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Task:
    """A binary classification task split into a training and a held-out test set."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_classes(self) -> int:
        return int(torch.cat([self.y_train, self.y_test]).max()) + 1


def spirals(
    n: int, *, turns: float = 1.5, noise: float = 0.08, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    r"""``n`` points on two interleaved spirals in the plane; labels 0 and 1.

    Point :math:`i` of a spiral sits at angle :math:`\phi = 2\pi \cdot \text{turns} \cdot r` and radius
    :math:`r \in (0, 1]`; the second spiral is the first rotated by :math:`\pi`.  Gaussian noise of
    standard deviation ``noise`` is added to the coordinates.
    """
    if n < 2:
        raise ValueError(f"spirals needs at least 2 points (one per class), got n={n}")
    label = torch.arange(n) % 2
    r = torch.rand(n, generator=generator) * 0.95 + 0.05
    phi = 2 * math.pi * turns * r + math.pi * label
    x = torch.stack([r * torch.cos(phi), r * torch.sin(phi)], dim=1)
    x = x + noise * torch.randn(x.shape, generator=generator)
    return x, label


def make_task(n_train: int = 512, n_test: int = 512, *, seed: int = 0) -> Task:
    """Two-spirals classification with a fixed seed (the same data for every chain)."""
    g = torch.Generator().manual_seed(seed)
    x_train, y_train = spirals(n_train, generator=g)
    x_test, y_test = spirals(n_test, generator=g)
    return Task(x_train, y_train, x_test, y_test)
