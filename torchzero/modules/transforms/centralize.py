"""Gradient centralization (Yong et al., 2020)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.module import Transform
from ...core.schema import Setting, integer

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


class Centralize(Transform):
    r"""Subtract from each slice of the update its mean over all dimensions but the first.

    For a tensor :math:`u` of shape :math:`(n, d_1, \dots, d_k)` with at least ``min_ndim`` dimensions,

    .. math::  u_{i,\cdot} \leftarrow u_{i,\cdot} - \operatorname{mean}(u_{i,\cdot})

    (for a linear layer's weight, each output row gets zero mean).  Tensors with fewer dimensions,
    such as biases, are left alone.  A complex parameter is centralized as complex numbers: its real
    and imaginary parts are averaged separately, never mixed.

    There is no foreach kernel for a mean over some dimensions, so this module runs one small
    reduction per tensor.

    Args:
        min_ndim: tensors with fewer dimensions than this are not changed.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Centralize(), tz.m.SGD(momentum=0.9), tz.m.LR(0.1))

    Reference: Yong, Huang, Hua, Zhang, "Gradient Centralization: A New Optimization Technique for Deep
    Neural Networks", ECCV 2020.
    """

    schema = {
        "min_ndim": Setting(
            integer(2), "The first dimension is never averaged, so a 1-D tensor has nothing to centralize."
        )
    }

    def __init__(self, min_ndim: int = 2) -> None:
        super().__init__({"min_ndim": min_ndim})

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        min_ndim = seg.settings["min_ndim"]
        originals = ctx.layout.originals[seg.start : seg.stop]
        for u, p in zip(seg.update, originals, strict=True):
            if p.ndim < min_ndim:
                continue
            dims = tuple(range(1, p.ndim))  # a complex view's trailing (re, im) dimension is excluded
            u.sub_(u.mean(dim=dims, keepdim=True))
