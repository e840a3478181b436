"""The demo's data: two interleaved spirals made on the fly, and scikit-learn's handwritten digits.

Nothing is downloaded: the spirals are generated, and the digits (UCI's optical recognition of handwritten
digits, 1,797 8x8 images) ship inside the scikit-learn package, which the ``demo`` extra installs.  Only the
digits task imports scikit-learn, when it is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

TASKS = ("spirals", "digits")
"""the demo's tasks, by name (``torchzero demo --task``)"""


@dataclass
class Task:
    """A classification task split into a training and a held-out test set."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    name: str = "spirals"
    description: str = "Two interleaved spirals"

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
    return Task(
        x_train,
        y_train,
        x_test,
        y_test,
        description=f"Two interleaved spirals, {n_train} training and {n_test} test points",
    )


def load_digits_task(test_fraction: float = 0.25, *, seed: int = 0) -> Task:
    """scikit-learn's handwritten digits (8x8 grey images, 10 classes), pixels scaled to [0, 1].

    The 1,797 images are shuffled with ``seed`` and split into a training set and a held-out test set of
    ``test_fraction`` of them.  Raises ``ModuleNotFoundError`` with the install command if scikit-learn is missing.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction is the held-out share of the images, between 0 and 1; got {test_fraction}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ModuleNotFoundError(
            "the digits task reads scikit-learn's bundled digits data set: pip install 'torchzero[demo]' "
            f"(or scikit-learn>=1.4), or run the demo with --task spirals ({e})",
            name="sklearn",
        ) from None
    digits = load_digits()
    x = torch.as_tensor(digits.data, dtype=torch.float32) / 16.0  # pixel intensities are 0..16
    y = torch.as_tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return Task(
        x[train], y[train], x[test], y[test], name="digits",
        description=f"Handwritten digits bundled with scikit-learn (8x8 images, 10 classes), {len(train)} training and "
        f"{len(test)} test images",
    )  # fmt: skip


def load_task(name: str, samples: int = 512, *, seed: int = 0) -> Task:
    """The task called ``name`` (:data:`TASKS`); ``samples`` is the spirals' training (and test) size."""
    if name == "spirals":
        return make_task(samples, samples, seed=seed)
    if name == "digits":
        return load_digits_task(seed=seed)
    raise ValueError(f"unknown task {name!r}; choose from: {', '.join(TASKS)}")
