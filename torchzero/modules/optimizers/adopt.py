"""ADOPT: Adam with the second moment of the previous step and a clipped normalised gradient (Taniguchi et al., 2024)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ...core.module import Transform
from ...core.schema import ALPHA, BETAS, EPS, Setting, a_callable, optional
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


def quarter_power(step: int) -> float:
    """The default clip bound of ADOPT: :math:`t^{1/4}`."""
    return step**0.25


class ADOPT(Transform):
    r"""ADOPT's update rule, with the learning rate left to :class:`LR` (``alpha`` multiplies the step).

    .. math::
        t = 1:\quad v_1 = g_1^2, \quad u \leftarrow 0\\
        t > 1:\quad n_t = \operatorname{clip}\Big(\frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)}, c(t)\Big),
        \quad m_t = \beta_1 m_{t-1} + (1-\beta_1) n_t, \quad u \leftarrow \alpha\, m_t,
        \quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

    The gradient is normalised by the second moment of the *previous* steps (it does not contain
    :math:`g_t`), which is what makes ADOPT converge for any :math:`\beta_2`; the first step only builds
    :math:`v_1` and leaves the parameters where they are.  :math:`\operatorname{clip}(x, c)` clamps each
    element to :math:`[-c, c]` with :math:`c(t) = ` ``clip_lambda(t)`` (default :math:`t^{1/4}`; ``None``
    disables the clipping).

    Args:
        betas: :math:`(\beta_1, \beta_2)`.
        eps: lower bound of the denominator :math:`\sqrt{v_{t-1}}`.
        clip_lambda: the clip bound as a function of the step count, or None for no clipping.
        alpha: step size multiplier.

    ``tz.Modular(p, tz.m.ADOPT(), tz.m.LR(1e-3))`` equals ``pytorch_optimizer.ADOPT(p, lr=1e-3)``; its
    ``weight_decay`` is ``tz.m.WeightDecay`` before the rule (coupled) or after ``LR`` with
    ``scale_by_lr=True`` (``weight_decouple=True``).  The step count is per parameter (the reference counts
    per param group: the same while every parameter gets a gradient at every step).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.ADOPT(), tz.m.LR(1e-3))

    Reference: Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any beta_2 with the Optimal Rate",
    NeurIPS 2024.
    """

    keeps_state = True
    fuses_lr = True
    modifies_update_inplace = False
    counts_steps = True
    schema = {
        "betas": BETAS, "eps": EPS, "alpha": ALPHA,
        "clip_lambda": Setting(optional(a_callable()), "Pass a function of the step count, e.g. lambda t: t ** 0.25, or None."),
    }  # fmt: skip

    def __init__(
        self,
        betas: tuple[float, float] = (0.9, 0.9999),
        eps: float = 1e-6,
        clip_lambda: Callable[[int], float] | None = quarter_power,
        alpha: float = 1.0,
    ) -> None:
        super().__init__({"betas": betas, "eps": eps, "alpha": alpha}, options={"clip_lambda": clip_lambda})
        self.clip_lambda = clip_lambda

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        s = seg.settings
        beta1, beta2 = s["betas"]
        t = seg.step
        update = seg.update
        exp_avg, exp_avg_sq = seg.state("exp_avg", "exp_avg_sq")
        scale = s["alpha"] * seg.scale
        if t == 1:
            ops.addcmul_(exp_avg_sq, update, update)
            seg.emit(exp_avg, scale)  # m is still zero: the first step moves nothing
            return
        denom = ops.sqrt(exp_avg_sq)
        ops.clamp_min_(denom, s["eps"])
        normed = ops.div(update, denom)
        if self.clip_lambda is not None:
            c = float(self.clip_lambda(t))
            ops.clamp_min_(normed, -c)
            ops.clamp_max_(normed, c)
        ops.lerp_(exp_avg, normed, 1 - beta1)
        seg.emit(exp_avg, scale)
        ops.mul_(exp_avg_sq, beta2)
        ops.addcmul_(exp_avg_sq, update, update, 1 - beta2)
