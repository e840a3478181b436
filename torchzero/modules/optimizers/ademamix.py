"""AdEMAMix: Adam with a mixture of a fast and a slow momentum (Pagliardini et al., 2024)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ...core.module import Transform
from ...core.schema import EPS, Rule, Setting, at_least, greater_than, in_range, optional, tuple_of
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


def warm_alpha(t: int, alpha: float, t_warmup: float | None) -> float:
    """The linear warm-up of the slow momentum's weight: :math:`\\min(t\\alpha/T, \\alpha)`."""
    return alpha if t_warmup is None else min(t * alpha / t_warmup, alpha)


def warm_beta3(t: int, beta1: float, beta3: float, t_warmup: float | None) -> float:
    """The warm-up of the slow momentum's decay, linear in the half-life: from :math:`\\beta_1` to :math:`\\beta_3`."""
    if t_warmup is None:
        return beta3
    frac = t / t_warmup
    l1, l3 = math.log(beta1), math.log(beta3)
    return min(math.exp(l1 * l3 / ((1.0 - frac) * l3 + frac * l1)), beta3)


class AdEMAMix(Transform):
    r"""AdEMAMix's update rule, with the learning rate left to :class:`LR`.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,
        \quad s_t = \beta_{3,t} s_{t-1} + (1-\beta_{3,t}) g_t,\\
        u \leftarrow \frac{m_t/(1-\beta_1^t) + \alpha_t s_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    The slow momentum :math:`s_t` is not bias-corrected.  With ``t_alpha_beta3`` :math:`= T`, its weight and
    decay warm up over :math:`T` steps: :math:`\alpha_t = \min(t\alpha/T, \alpha)` and
    :math:`\beta_{3,t} = \min\big(\exp\frac{\ln\beta_1 \ln\beta_3}{(1-t/T)\ln\beta_3 + (t/T)\ln\beta_1}, \beta_3\big)`
    (the half-life grows linearly from :math:`\beta_1`'s to :math:`\beta_3`'s); ``None`` uses
    :math:`\alpha, \beta_3` from the first step.  Both are Python numbers of the step count: no state.

    Here ``alpha`` is the paper's weight of the slow momentum, not a step multiplier (use :class:`LR`).

    Args:
        betas: :math:`(\beta_1, \beta_2, \beta_3)`: the fast momentum, the second moment, the slow momentum.
        alpha: weight :math:`\alpha` of the slow momentum.
        t_alpha_beta3: warm-up length :math:`T` of :math:`\alpha` and :math:`\beta_3`, or None.
        eps: term added to the denominator.

    ``tz.Modular(p, tz.m.AdEMAMix(), tz.m.LR(1e-3))`` equals ``pytorch_optimizer.AdEMAMix(p, lr=1e-3)``; its
    ``weight_decay`` is ``tz.m.WeightDecay`` before the rule (coupled) or after ``LR`` with
    ``scale_by_lr=True`` (``weight_decouple=True``).  The step count is per parameter (the reference counts
    per param group: the same while every parameter gets a gradient at every step).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.AdEMAMix(alpha=5.0, t_alpha_beta3=10_000), tz.m.LR(1e-3))

    Reference: Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older", ICLR 2025.
    """

    keeps_state = True
    fuses_lr = True
    modifies_update_inplace = False
    counts_steps = True
    schema = {
        "betas": Setting(tuple_of(in_range(0, 1, closed="left"), 3, "(beta1, beta2, beta3)"),
                         "Each beta must be in [0, 1), e.g. (0.9, 0.999, 0.9999)."),
        "alpha": Setting(at_least(0), "The slow momentum's weight, e.g. 5.0 (0 gives Adam)."),
        "t_alpha_beta3": Setting(optional(greater_than(0)), "A number of steps such as 10_000, or None for no warm-up."),
        "eps": EPS,
    }  # fmt: skip
    cross_checks = (
        Rule(("betas", "t_alpha_beta3"), lambda b, t: t is None or (b[0] > 0 and b[2] > 0),
             "beta1 > 0 and beta3 > 0 when t_alpha_beta3 is set", "The warm-up interpolates log(beta1) and log(beta3)."),
    )  # fmt: skip

    def __init__(
        self,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha_beta3: float | None = None,
        eps: float = 1e-8,
    ) -> None:
        super().__init__({"betas": betas, "alpha": alpha, "t_alpha_beta3": t_alpha_beta3, "eps": eps})

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        s = seg.settings
        beta1, beta2, beta3 = s["betas"]
        t = seg.step
        warmup = s["t_alpha_beta3"]
        alpha_t = warm_alpha(t, s["alpha"], warmup)
        beta3_t = warm_beta3(t, beta1, beta3, warmup)
        update = seg.update
        exp_avg, exp_avg_sq, exp_avg_slow = seg.state("exp_avg", "exp_avg_sq", "exp_avg_slow")
        ops.lerp_(exp_avg, update, 1 - beta1)
        ops.mul_(exp_avg_sq, beta2)
        ops.addcmul_(exp_avg_sq, update, update, 1 - beta2)
        ops.lerp_(exp_avg_slow, update, 1 - beta3_t)
        denom = ops.sqrt(exp_avg_sq)
        ops.div_(denom, math.sqrt(1 - beta2**t))
        ops.add_(denom, s["eps"])
        num = ops.div(exp_avg, 1 - beta1**t)
        ops.add_(num, exp_avg_slow, alpha=alpha_t)
        seg.emit_div(num, denom, seg.scale)
