"""Adamax: Adam with the infinity norm (Kingma & Ba, 2015, section 7)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.module import Transform
from ...core.schema import ALPHA, BETAS, EPS
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


class Adamax(Transform):
    r"""The update rule of ``torch.optim.Adamax``, with the learning rate left to :class:`LR`.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        u_t^{\infty} = \max(\beta_2 u_{t-1}^{\infty},\ |g_t| + \epsilon), \quad
        u \leftarrow \frac{\alpha}{1-\beta_1^t}\, \frac{m_t}{u_t^{\infty}}

    Args:
        betas: :math:`(\beta_1, \beta_2)`.
        eps: term added to :math:`|g_t|`.
        alpha: step size multiplier (use :class:`LR` for the learning rate; torch's default lr is 2e-3).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Adamax(), tz.m.LR(2e-3))  # == torch.optim.Adamax()

    Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, section 7.1.
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
        exp_avg, exp_inf = seg.state("exp_avg", "exp_inf")
        ops.lerp_(exp_avg, update, 1 - beta1)
        ops.mul_(exp_inf, beta2)
        norm = ops.abs(update)
        ops.add_(norm, s["eps"])
        ops.maximum_(exp_inf, norm)
        seg.emit_div(exp_avg, exp_inf, s["alpha"] * seg.scale / (1 - beta1**t))
