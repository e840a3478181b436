"""Lion: the sign of an interpolated momentum (Chen et al., 2023)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.module import Transform
from ...core.schema import ALPHA, BETAS
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


class Lion(Transform):
    r"""Lion's update rule (EvoLved Sign Momentum), with the learning rate left to :class:`LR`.

    .. math::
        u \leftarrow \alpha\, \operatorname{sign}\big(\beta_1 m_{t-1} + (1-\beta_1) g_t\big), \qquad
        m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t

    Every element moves by exactly :math:`\alpha \cdot \text{lr}`, so Lion usually wants a learning rate
    3-10x smaller than AdamW's.  Decoupled weight decay: add ``tz.m.WeightDecay`` after ``Lion``.

    Args:
        betas: :math:`(\beta_1, \beta_2)`: interpolation for the sign, and decay of the momentum.
        alpha: step size multiplier (use :class:`LR` for the learning rate).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Lion(), tz.m.LR(1e-4))

    Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023.
    """

    keeps_state = True
    fuses_lr = True
    schema = {"betas": BETAS, "alpha": ALPHA}

    modifies_update_inplace = False  # reads the update and emits a new one through the sink

    def __init__(self, betas: tuple[float, float] = (0.9, 0.99), alpha: float = 1.0) -> None:
        super().__init__({"betas": betas, "alpha": alpha})

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        s = seg.settings
        beta1, beta2 = s["betas"]
        update = seg.update
        (exp_avg,) = seg.state("exp_avg")
        direction = ops.mul(exp_avg, beta1)
        ops.add_(direction, update, alpha=1 - beta1)
        ops.sign_(direction)
        ops.mul_(exp_avg, beta2)
        ops.add_(exp_avg, update, alpha=1 - beta2)
        seg.emit(direction, s["alpha"] * seg.scale)
