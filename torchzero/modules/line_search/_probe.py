"""Moving the parameters to trial points and back, for modules that evaluate the closure elsewhere.

Line searches, finite differences and SAM all do the same thing: remember the parameters, put them at
``x0 + step``, evaluate the closure, and finally put them back *exactly* (a copy, never a subtraction,
so no rounding is left behind).  :class:`Probe` is that one mechanism; every op runs per
(device, dtype) bucket of the step's layout, as the foreach layer requires.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import StepContext


class Probe:
    """Trial points ``x0 + alpha * d`` of the parameters of one step, with an exact restore."""

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx
        self.buckets = ctx.layout.buckets
        self.x0 = ops.clone(ctx.params)
        self.moved = False

    def move(self, direction: Sequence[Tensor], alpha: float | Tensor) -> None:
        """Set the parameters to ``x0 + alpha * direction`` (``alpha`` may be a 0-dim tensor)."""
        params = self.ctx.params
        for a, b in self.buckets:
            ops.copy_(params[a:b], self.x0[a:b])
            if isinstance(alpha, Tensor):
                step = ops.mul(list(direction[a:b]), alpha.to(params[a].device, params[a].dtype))
                ops.add_(params[a:b], step)
            else:
                ops.add_(params[a:b], list(direction[a:b]), alpha=alpha)
        self.moved = True

    def restore(self) -> None:
        """Put the parameters back to ``x0``, bit for bit."""
        if self.moved:
            params = self.ctx.params
            for a, b in self.buckets:
                ops.copy_(params[a:b], self.x0[a:b])
            self.moved = False

    # ------------------------------------------------------------------ reductions over all parameters
    def dot(self, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> float:
        """``<x, y>`` over every parameter, as a Python float (one host sync per bucket)."""
        return dot(self.buckets, xs, ys)

    def norm(self, xs: Sequence[Tensor]) -> float:
        return norm(self.buckets, xs)


def dot(buckets: Sequence[tuple[int, int]], xs: Sequence[Tensor], ys: Sequence[Tensor]) -> float:
    """``<x, y>`` summed over all buckets, as a Python float (closure modules only: it syncs)."""
    return float(dot_tensor(buckets, xs, ys))


def dot_tensor(buckets: Sequence[tuple[int, int]], xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """``<x, y>`` summed over all buckets, a 0-dim tensor on the first bucket's device (no host sync).

    Each bucket's part is computed in its own dtype; the parts are added in the widest of them.
    """
    parts = [ops.dot(list(xs[a:b]), list(ys[a:b])) for a, b in buckets]
    if not parts:
        return torch.zeros(())
    dtype = parts[0].dtype
    for p in parts[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    total = parts[0].to(dtype)
    for p in parts[1:]:
        total = total + p.to(total.device, dtype)
    return total


def norm(buckets: Sequence[tuple[int, int]], xs: Sequence[Tensor]) -> float:
    return dot(buckets, xs, xs) ** 0.5


def scaled(buckets: Sequence[tuple[int, int]], xs: Sequence[Tensor], alpha: Tensor) -> list[Tensor]:
    """``alpha * x`` for a 0-dim tensor ``alpha`` (cast per bucket; no host sync)."""
    out: list[Tensor] = []
    for a, b in buckets:
        part = list(xs[a:b])
        out.extend(ops.mul(part, alpha.to(part[0].device, part[0].dtype)))
    return out


def add_scaled_(buckets: Sequence[tuple[int, int]], xs: list[Tensor], ys: Sequence[Tensor], alpha: Tensor) -> None:
    """``x += alpha * y`` in place for a 0-dim tensor ``alpha`` (no host sync)."""
    for a, b in buckets:
        part = list(ys[a:b])
        ops.add_(xs[a:b], ops.mul(part, alpha.to(part[0].device, part[0].dtype)))


def max_abs(buckets: Sequence[tuple[int, int]], xs: Sequence[Tensor]) -> float:
    """Largest ``|x_i|`` over all tensors, as a Python float (closure modules only: one host sync per bucket).

    Tensors without elements (an empty FSDP shard, a zero-width layer) are left out: the infinity norm has
    no identity, so ``_foreach_norm`` refuses them; 0.0 when nothing is left.
    """
    out = 0.0
    for a, b in buckets:
        part = [x for x in xs[a:b] if x.numel() > 0]
        if part:
            out = max(out, float(torch.stack(ops.norm(part, math.inf)).max()))
    return out


def l1_tensor(buckets: Sequence[tuple[int, int]], xs: Sequence[Tensor]) -> Tensor:
    """Sum of absolute values over all buckets, a 0-dim tensor on the first bucket's device (no host sync)."""
    total: Tensor | None = None
    for a, b in buckets:
        part = torch.stack(ops.norm(list(xs[a:b]), 1)).sum()
        if total is None:
            total = part
        else:
            total = total.to(torch.promote_types(total.dtype, part.dtype)) + part.to(total.device)
    return torch.zeros(()) if total is None else total
