"""RMSprop (Tieleman & Hinton, 2012), centered and with momentum."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.module import Transform
from ...core.schema import ALPHA, EPS, FLAG, Setting, at_least, in_range
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


class RMSprop(Transform):
    r"""The update rule of ``torch.optim.RMSprop``, with the learning rate left to :class:`LR`.

    .. math::
        v_t = \rho\, v_{t-1} + (1-\rho)\, g_t^2, \qquad
        d_t = \sqrt{v_t - \bar g_t^2} + \epsilon \ \text{(centered, } \bar g_t = \rho \bar g_{t-1} + (1-\rho) g_t)
        \ \text{ or } \ \sqrt{v_t} + \epsilon,\\
        u \leftarrow \alpha\, g_t / d_t, \quad\text{or with momentum } \mu:\quad
        b_t = \mu b_{t-1} + g_t / d_t,\ u \leftarrow \alpha\, b_t

    Args:
        smoothing: :math:`\rho`, the decay of the running averages (torch calls it ``alpha``; here
            ``alpha`` is the step size multiplier, as in every torchzero module).
        eps: term added to the denominator.
        centered: divide by an estimate of the variance instead of the second moment.
        momentum: momentum factor :math:`\mu` (0 disables the buffer).
        alpha: step size multiplier (use :class:`LR` for the learning rate).

    Example::

        # == torch.optim.RMSprop(lr=1e-2, alpha=0.99, momentum=0.9, centered=True)
        opt = tz.Modular(model.parameters(), tz.m.RMSprop(smoothing=0.99, momentum=0.9, centered=True), tz.m.LR(1e-2))

    Reference: Tieleman & Hinton, Lecture 6.5 of "Neural Networks for Machine Learning", 2012;
    Graves, "Generating Sequences With Recurrent Neural Networks", 2013 (centered form).
    """

    keeps_state = True
    fuses_lr = True
    schema = {
        "smoothing": Setting(in_range(0, 1), "Use a value such as 0.99."),
        "eps": EPS,
        "centered": FLAG,
        "momentum": Setting(at_least(0), "Use 0 to disable momentum."),
        "alpha": ALPHA,
    }

    modifies_update_inplace = False  # reads the update and emits a new one through the sink

    def __init__(
        self,
        smoothing: float = 0.99,
        eps: float = 1e-8,
        centered: bool = False,
        momentum: float = 0.0,
        alpha: float = 1.0,
    ) -> None:
        super().__init__(
            {"smoothing": smoothing, "eps": eps, "centered": centered, "momentum": momentum, "alpha": alpha}
        )

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        s = seg.settings
        rho, momentum = s["smoothing"], s["momentum"]
        update = seg.update
        (square_avg,) = seg.state("square_avg")
        ops.mul_(square_avg, rho)
        ops.addcmul_(square_avg, update, update, 1 - rho)
        if s["centered"]:
            (grad_avg,) = seg.state("grad_avg")
            ops.lerp_(grad_avg, update, 1 - rho)
            denom = ops.addcmul(square_avg, grad_avg, grad_avg, -1)
            ops.sqrt_(denom)
        else:
            denom = ops.sqrt(square_avg)
        ops.add_(denom, s["eps"])
        scale = s["alpha"] * seg.scale
        if momentum > 0:
            (buf,) = seg.state("momentum_buffer")
            ops.mul_(buf, momentum)
            ops.addcdiv_(buf, update, denom)
            seg.emit(buf, scale)
        else:
            seg.emit_div(update, denom, scale)
