"""MARS: variance-reduced momentum with a scaled gradient correction (Yuan et al., 2024)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ...core.module import Transform
from ...core.schema import ALPHA, BETAS, EPS, FLAG, Setting, at_least, one_of
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext

SQ_EPS = 1e-15
"""added to the second moment before its square root (as in ``pytorch_optimizer``)"""


class MARS(Transform):
    r"""The update rule of MARS (``mars_type="adamw"`` or ``"lion"``), with the learning rate left to :class:`LR`.

    .. math::
        c_t = g_t + \gamma \frac{\beta_1}{1-\beta_1} (g_t - g_{t-1}), \quad
        \tilde c_t = c_t / \max(1, \lVert c_t \rVert_2), \quad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) \tilde c_t,\\
        \text{adamw:}\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) \tilde c_t^2, \quad
        u \leftarrow \alpha \frac{m_t}{(1-\beta_1^t)\,\big(\sqrt{v_t + 10^{-15}} + \epsilon\big) / \sqrt{1-\beta_2^t}}
        \qquad \text{lion:}\quad u \leftarrow \alpha \operatorname{sign}(m_t)

    :math:`g_{t-1}` is the update this module received at the previous step (zero at the first), kept in
    the state as ``last_grad``; the norm of :math:`c_t` is per tensor (a 0-dim tensor: no host sync).  With
    ``ams_bound=True`` the running maximum of :math:`v_t` replaces it in the denominator.

    Args:
        betas: :math:`(\beta_1, \beta_2)`.
        gamma: strength :math:`\gamma` of the gradient correction (0 gives Adam with a clipped gradient).
        mars_type: ``"adamw"`` or ``"lion"``.
        ams_bound: use the running maximum of the second moment.
        eps: term added to the root of the second moment.
        alpha: step size multiplier.

    ``tz.Modular(p, tz.m.MARS(), tz.m.LR(3e-3), tz.m.WeightDecay(wd, scale_by_lr=True))`` equals
    ``pytorch_optimizer.MARS(p, lr=3e-3, weight_decay=wd, optimize_1d=True)``.  The reference gives
    parameters with fewer than 2 dimensions an AdamW of their own by default (``optimize_1d=False``,
    ``lr_1d``, ``betas_1d``, ``weight_decay_1d``); here that is a composition:
    ``tz.m.Split(lambda p: p.ndim >= 2, true=[tz.m.MARS()], false=[tz.m.Adam(betas=(0.9, 0.95))])`` or a
    param group of its own.  ``mars_type="shampoo"`` (Newton-Schulz orthogonalisation of the momentum) is not
    part of this module.  The step count is per parameter (the reference counts per param group: the same
    while every parameter gets a gradient at every step).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.MARS(gamma=0.025), tz.m.LR(3e-3))

    Reference: Yuan et al., "MARS: Unleashing the Power of Variance Reduction for Training Large Models",
    2024 (arXiv:2411.10438).
    """

    keeps_state = True
    fuses_lr = True
    modifies_update_inplace = False
    counts_steps = True
    schema = {
        "betas": BETAS, "eps": EPS, "alpha": ALPHA, "ams_bound": FLAG,
        "gamma": Setting(at_least(0), "Use a small value such as 0.025 (0 turns the correction off)."),
        "mars_type": Setting(one_of("adamw", "lion"), "Use 'adamw' or 'lion'."),
    }  # fmt: skip

    def __init__(
        self,
        betas: tuple[float, float] = (0.95, 0.99),
        gamma: float = 0.025,
        mars_type: str = "adamw",
        ams_bound: bool = False,
        eps: float = 1e-8,
        alpha: float = 1.0,
    ) -> None:
        super().__init__(
            {"betas": betas, "gamma": gamma, "mars_type": mars_type, "ams_bound": ams_bound, "eps": eps, "alpha": alpha}
        )

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        s = seg.settings
        beta1, beta2 = s["betas"]
        t = seg.step
        update = seg.update
        exp_avg, last_grad = seg.state("exp_avg", "last_grad")
        correction = ops.sub(update, last_grad)
        ops.mul_(correction, s["gamma"] * (beta1 / (1.0 - beta1)))
        ops.add_(correction, update)
        norms = ops.norm(correction)
        ops.clamp_min_(norms, 1.0)
        ops.div_(correction, norms)
        ops.lerp_(exp_avg, correction, 1 - beta1)
        ops.copy_(last_grad, update)
        scale = s["alpha"] * seg.scale
        if s["mars_type"] == "lion":
            seg.emit(ops.sign(exp_avg), scale)
            return
        (exp_avg_sq,) = seg.state("exp_avg_sq")
        ops.mul_(exp_avg_sq, beta2)
        ops.addcmul_(exp_avg_sq, correction, correction, 1 - beta2)
        second = exp_avg_sq
        if s["ams_bound"]:
            (second,) = seg.state("max_exp_avg_sq")
            ops.maximum_(second, exp_avg_sq)
        denom = ops.add(second, SQ_EPS)
        ops.sqrt_(denom)
        ops.add_(denom, s["eps"])
        ops.div_(denom, math.sqrt(1 - beta2**t))
        ops.mul_(denom, 1 - beta1**t)
        seg.emit_div(exp_avg, denom, scale, scratch=True)
