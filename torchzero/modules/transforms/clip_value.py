"""Elementwise clipping of the update."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.module import Transform
from ...core.schema import Setting, greater_than
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


class ClipValue(Transform):
    r"""Clamp every component of the update to :math:`[-c, c]`: :math:`u \leftarrow \min(\max(u, -c), c)`.

    As the first module it is ``torch.nn.utils.clip_grad_value_``.  Complex parameters are handled as
    real views (real and imaginary parts are clamped separately).

    Args:
        value: the bound :math:`c > 0`.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.ClipValue(1.0), tz.m.Adam(), tz.m.LR(1e-3))
    """

    schema = {"value": Setting(greater_than(0), "ClipValue needs a positive bound, e.g. value=1.0.")}

    def __init__(self, value: float) -> None:
        super().__init__({"value": value})

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        c = seg.settings["value"]
        ops.clamp_min_(seg.update, -c)
        ops.clamp_max_(seg.update, c)
