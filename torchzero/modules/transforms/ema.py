"""Exponential moving average of the update."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.module import Transform
from ...core.schema import FLAG, Setting, in_range
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


class EMA(Transform):
    r"""Replace the update by an exponential moving average of the updates.

    .. math::
        m_t = \mu\, m_{t-1} + (1 - \mu)\, u_t \quad (m_0 = 0), \qquad
        u \leftarrow m_t \quad\text{or, with ``debiased``,}\quad u \leftarrow \frac{m_t}{1 - \mu^t}

    With ``debiased=True`` this is Adam's bias-corrected first moment.  The setting is called
    ``momentum``, so schedulers that cycle momentum (``OneCycleLR``) reach it.

    Args:
        momentum: decay :math:`\mu \in [0, 1)`.
        debiased: divide by :math:`1 - \mu^t` (``t`` counts the steps in which the parameter had a
            gradient, as torch.optim.Adam does, so a parameter that joins later starts from ``t = 1``).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.EMA(0.9), tz.m.Sign(), tz.m.LR(1e-3))  # signum
    """

    keeps_state = True
    counts_steps = True  # the debiasing uses each parameter's own step count

    schema = {
        "momentum": Setting(in_range(0, 1, closed="left"), "EMA needs 0 <= momentum < 1, e.g. 0.9."),
        "debiased": FLAG,
    }

    def __init__(self, momentum: float = 0.9, debiased: bool = False) -> None:
        super().__init__({"momentum": momentum, "debiased": debiased})

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        momentum = seg.settings["momentum"]
        (exp_avg,) = seg.state("exp_avg")
        update = seg.update
        ops.lerp_(exp_avg, update, 1 - momentum)
        ops.copy_(update, exp_avg)
        if seg.settings["debiased"]:
            ops.div_(update, 1 - momentum**seg.step)
