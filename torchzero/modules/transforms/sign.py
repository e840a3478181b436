"""The sign of the update (signSGD)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.module import Transform
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


class Sign(Transform):
    r"""Replace the update by its elementwise sign: :math:`u \leftarrow \operatorname{sign}(u)`.

    Complex parameters are handled as real views, so the real and imaginary parts get their own sign.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Sign(), tz.m.LR(1e-3))  # signSGD

    Reference: Bernstein, Wang, Azizzadenesheli, Anandkumar, "signSGD: Compressed Optimisation for
    Non-Convex Problems", ICML 2018.
    """

    def __init__(self) -> None:
        super().__init__({})

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        ops.sign_(seg.update)
