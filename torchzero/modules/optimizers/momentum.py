"""Momentum as a pure update transform: heavy-ball (Polyak) and Nesterov."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.module import Transform
from ...core.schema import ALPHA, DAMPENING, MOMENTUM
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


class HeavyBall(Transform):
    r"""Heavy-ball (Polyak) momentum on the incoming update.

    .. math::
        b_t = \mu\, b_{t-1} + (1 - \tau)\, u_t \quad (b_0 = 0), \qquad u \leftarrow \alpha\, b_t

    Unlike :class:`SGD`, the buffer starts at zero, so with ``dampening > 0`` the first step is
    :math:`(1-\tau) u_1` (with ``dampening=0`` both agree at every step).

    Args:
        momentum: momentum factor :math:`\mu`.
        dampening: dampening :math:`\tau`.
        alpha: step size multiplier (use :class:`LR` for the learning rate).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.HeavyBall(0.9), tz.m.LR(0.01))

    Reference: Polyak, "Some methods of speeding up the convergence of iteration methods", 1964.
    """

    keeps_state = True
    fuses_lr = True
    modifies_update_inplace = False  # reads the update and emits a new one through the sink
    schema = {"momentum": MOMENTUM, "dampening": DAMPENING, "alpha": ALPHA}

    def __init__(self, momentum: float = 0.9, dampening: float = 0.0, alpha: float = 1.0) -> None:
        super().__init__({"momentum": momentum, "dampening": dampening, "alpha": alpha})

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        s = seg.settings
        (buf,) = seg.state("momentum_buffer")
        ops.mul_(buf, s["momentum"])
        ops.add_(buf, seg.update, alpha=1 - s["dampening"])
        seg.emit(buf, s["alpha"] * seg.scale)


class NesterovMomentum(Transform):
    r"""Nesterov momentum on the incoming update (the form used by ``torch.optim.SGD(nesterov=True)``).

    .. math::
        b_t = \mu\, b_{t-1} + (1 - \tau)\, u_t \quad (b_0 = 0), \qquad u \leftarrow \alpha\,(u_t + \mu\, b_t)

    Args:
        momentum: momentum factor :math:`\mu`.
        dampening: dampening :math:`\tau`.
        alpha: step size multiplier (use :class:`LR` for the learning rate).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.NesterovMomentum(0.9), tz.m.LR(0.01))

    Reference: Sutskever et al., "On the importance of initialization and momentum in deep learning",
    ICML 2013.
    """

    keeps_state = True
    fuses_lr = True
    modifies_update_inplace = False  # reads the update and emits a new one through the sink
    schema = {"momentum": MOMENTUM, "dampening": DAMPENING, "alpha": ALPHA}

    def __init__(self, momentum: float = 0.9, dampening: float = 0.0, alpha: float = 1.0) -> None:
        super().__init__({"momentum": momentum, "dampening": dampening, "alpha": alpha})

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        s = seg.settings
        momentum = s["momentum"]
        (buf,) = seg.state("momentum_buffer")
        update = seg.update
        ops.mul_(buf, momentum)
        ops.add_(buf, update, alpha=1 - s["dampening"])
        seg.emit(ops.add(update, buf, alpha=momentum), s["alpha"] * seg.scale)  # out of place, as torch's SGD
