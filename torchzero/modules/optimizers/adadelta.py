"""Adadelta (Zeiler, 2012)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.module import Transform
from ...core.schema import ALPHA, EPS, Setting, in_range
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


class Adadelta(Transform):
    r"""The update rule of ``torch.optim.Adadelta``, with the learning rate left to :class:`LR`.

    .. math::
        v_t = \rho v_{t-1} + (1-\rho) g_t^2, \quad
        \Delta_t = \frac{\sqrt{a_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g_t, \quad
        a_t = \rho a_{t-1} + (1-\rho) \Delta_t^2, \quad u \leftarrow \alpha\, \Delta_t

    Args:
        rho: decay of the running averages.
        eps: term added inside the square roots.
        alpha: step size multiplier (use :class:`LR` for the learning rate; torch's default lr is 1.0).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Adadelta(), tz.m.LR(1.0))  # == torch.optim.Adadelta()

    Reference: Zeiler, "ADADELTA: An Adaptive Learning Rate Method", arXiv:1212.5701, 2012.
    """

    keeps_state = True
    fuses_lr = True
    schema = {"rho": Setting(in_range(0, 1), "Use a value such as 0.9."), "eps": EPS, "alpha": ALPHA}

    modifies_update_inplace = False  # reads the update and emits a new one through the sink

    def __init__(self, rho: float = 0.9, eps: float = 1e-6, alpha: float = 1.0) -> None:
        super().__init__({"rho": rho, "eps": eps, "alpha": alpha})

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        s = seg.settings
        rho, eps = s["rho"], s["eps"]
        update = seg.update
        square_avg, acc_delta = seg.state("square_avg", "acc_delta")
        ops.mul_(square_avg, rho)
        ops.addcmul_(square_avg, update, update, 1 - rho)
        std = ops.add(square_avg, eps)
        ops.sqrt_(std)
        delta = ops.add(acc_delta, eps)
        ops.sqrt_(delta)
        ops.div_(delta, std)
        ops.mul_(delta, update)
        ops.mul_(acc_delta, rho)
        ops.addcmul_(acc_delta, delta, delta, 1 - rho)
        seg.emit(delta, s["alpha"] * seg.scale)
