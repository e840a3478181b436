"""RAdam: Adam with a rectified adaptive learning rate (Liu et al., 2020)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ...core.module import Transform
from ...core.schema import ALPHA, BETAS, EPS
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


class RAdam(Transform):
    r"""The update rule of ``torch.optim.RAdam``, with the learning rate left to :class:`LR`.

    .. math::
        \rho_\infty = \frac{2}{1-\beta_2} - 1, \quad \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1-\beta_2^t},
        \quad \hat m_t = \frac{m_t}{1-\beta_1^t},\\
        u \leftarrow \alpha \begin{cases}
            \hat m_t\, r_t\, \dfrac{\sqrt{1-\beta_2^t}}{\sqrt{v_t} + \epsilon}, \quad
            r_t = \sqrt{\dfrac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}
                & \rho_t > 5 \\
            \hat m_t & \text{otherwise}
        \end{cases}

    with :math:`m_t, v_t` Adam's running averages.

    Args:
        betas: :math:`(\beta_1, \beta_2)`.
        eps: term added to the denominator.
        alpha: step size multiplier (use :class:`LR` for the learning rate).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.RAdam(), tz.m.LR(1e-3))  # == torch.optim.RAdam()

    Reference: Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020.
    """

    keeps_state = True
    fuses_lr = True
    counts_steps = True
    schema = {"betas": BETAS, "eps": EPS, "alpha": ALPHA}

    modifies_update_inplace = False  # reads the update and emits a new one through the sink

    def __init__(self, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, alpha: float = 1.0) -> None:
        super().__init__({"betas": betas, "eps": eps, "alpha": alpha})

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        s = seg.settings
        beta1, beta2 = s["betas"]
        t = seg.step
        update = seg.update
        exp_avg, exp_avg_sq = seg.state("exp_avg", "exp_avg_sq")
        ops.lerp_(exp_avg, update, 1 - beta1)
        ops.mul_(exp_avg_sq, beta2)
        ops.addcmul_(exp_avg_sq, update, update, 1 - beta2)
        bc1, bc2 = 1 - beta1**t, 1 - beta2**t
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * t * beta2**t / bc2
        scale = s["alpha"] * seg.scale / bc1
        if rho_t > 5.0:
            rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            denom = ops.sqrt(exp_avg_sq)
            ops.add_(denom, s["eps"])
            seg.emit_div(exp_avg, denom, scale * rect * math.sqrt(bc2))
        else:
            seg.emit(exp_avg, scale)
