"""Cautious updates (Liang et al., 2024): drop the components that disagree with the gradient."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

from ...core.module import Transform
from ...core.schema import FLAG, Setting, greater_than
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


class Cautious(Transform):
    r"""Zero the components of the update whose sign disagrees with the gradient.

    .. math::
        m = \mathbb{1}[u \odot g > 0], \qquad
        u \leftarrow u \odot m \quad\text{or, with ``normalize``,}\quad
        u \leftarrow \frac{u \odot m}{\max(\operatorname{mean}(m), \epsilon)}

    where :math:`g` is the raw gradient and the mean is taken per tensor.  The module declares
    ``needs_raw_grad``, so the chain keeps the gradient intact when earlier modules change the update.

    Args:
        normalize: rescale each tensor by the inverse fraction of kept components, so the update keeps
            its average magnitude (what the paper's reference code does).
        eps: lower bound of that fraction.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Adam(), tz.m.Cautious(), tz.m.LR(1e-3))

    Reference: Liang, Chen, Liu, Liu, "Cautious Optimizers: Improving Training with One Line of Code", 2024.
    """

    needs_raw_grad = True
    schema = {"normalize": FLAG, "eps": Setting(greater_than(0), "eps bounds the kept fraction from below, e.g. 1e-3.")}

    def __init__(self, normalize: bool = False, eps: float = 1e-3) -> None:
        super().__init__({"normalize": normalize, "eps": eps})

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        update, grad = seg.update, seg.grad
        if ctx.may_overwrite_grad(self) and not any(map(operator.is_, update, grad)):
            mask = grad  # nothing after this module reads the gradient: build the mask in it, no allocation
            ops.mul_(mask, update)
        else:
            mask = seg.scratch("mask")  # reused every step: no allocation, and .grad stays as backward left it
            ops.copy_(mask, update)
            ops.mul_(mask, grad)
        ops.sign_(mask)
        ops.clamp_min_(mask, 0)  # 1 where u*g > 0, else 0 (NaN stays NaN)
        if seg.settings["normalize"]:
            kept = ops.norm(mask, 1)  # number of kept components per tensor, still on the device
            ops.div_(kept, [float(m.numel()) for m in mask])
            ops.clamp_min_(kept, seg.settings["eps"])
            ops.div_(mask, kept)
        ops.mul_(update, mask)
