"""Where an update comes from: the raw gradient (:class:`Grad`) or a copy (:class:`Clone`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.module import Module
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import StepContext


class Grad(Module):
    r"""Replace the update by the raw gradient: :math:`u \leftarrow g`.

    Mostly useful as the operand of a branch (``tz.m.Add(tz.m.Grad())``) or to restart a chain from the
    gradient.  It declares ``needs_raw_grad``, so the gradient is kept intact for it.

    Example::

        tz.Modular(p, tz.m.Adam(), tz.m.Lerp(tz.m.Grad(), 0.1), tz.m.LR(1e-3))
    """

    needs_raw_grad = True

    def step(self, ctx: StepContext) -> None:
        grad, update = ctx.get_grad(), ctx.update
        if len(update) != len(grad):  # the chain creates the update: nothing to overwrite yet
            ctx.update = ops.clone(grad)
            return
        for a, b in ctx.layout.buckets:
            ops.copy_(update[a:b], grad[a:b])


class Clone(Module):
    r"""Continue on a copy of the update: :math:`u \leftarrow \operatorname{copy}(u)`.

    The update starts as the gradient tensors themselves and modules change it in place; put ``Clone()``
    first to leave ``.grad`` untouched (one allocation per parameter and step).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Clone(), tz.m.ClipNorm(1.0), tz.m.Adam(), tz.m.LR(1e-3))
        # p.grad still holds the unclipped gradient after opt.step()
    """

    def step(self, ctx: StepContext) -> None:
        ctx.update = ops.clone(ctx.update)
