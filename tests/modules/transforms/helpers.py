"""Shared pieces for the transform tests: two param groups, identical grads, a step loop."""

from __future__ import annotations

import torch

import torchzero as tz

SHAPES = ((4, 3), (5,), (2, 3, 2))


def two_groups(dtype: torch.dtype, seed: int = 0) -> list[list[torch.Tensor]]:
    """Two lists of parameters (3 tensors each) with different values."""
    g = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for s in SHAPES] for _ in range(2)
    ]


def grads_for(params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) for p in params]


def modular(groups: list[list[torch.Tensor]], settings: list[dict], *modules) -> tz.Modular:
    return tz.Modular([{"params": ps, **s} for ps, s in zip(groups, settings, strict=True)], *modules)


def step_with(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    opt.step()


def copy_params(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone().requires_grad_() for p in params]
