"""Moving the parameters to trial points and back, for modules that evaluate the closure elsewhere.

Line searches, finite differences, forward gradients and SAM all do the same thing: remember the
parameters, put them at ``x0 + step``, evaluate the closure, and finally put them back *exactly* (a copy,
never a subtraction, so no rounding is left behind).  :class:`Probe` is that one mechanism; every op runs
per (device, dtype) bucket of the step's layout, as the foreach layer requires.  :func:`raw_loss` is the
closure call of modules that differentiate the loss themselves (Hessians, Jacobian-vector products).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import Tensor

from ..foreach import ops, reduce
from .closure import as_loss

if TYPE_CHECKING:
    from .context import StepContext


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
        return reduce.dot(self.buckets, xs, ys)

    def norm(self, xs: Sequence[Tensor]) -> float:
        return reduce.norm(self.buckets, xs)


def raw_loss(ctx: StepContext, who: str, *, grad: bool) -> Tensor:
    """The loss of ``closure(False)`` with its autograd graph (see :meth:`Closure.raw`).

    It also becomes the step's loss (``ctx.loss``) if the step has none yet.  ``who`` names the calling
    module in the errors.
    """
    closure = ctx.closure
    if closure is None:
        raise RuntimeError(f"{who} needs a closure, but step() was called without one")
    loss = closure.raw(grad, who=who)
    if ctx.loss is None:
        ctx.loss = as_loss(loss)
    return loss
