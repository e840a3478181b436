"""Adam (Kingma & Ba, 2015), with AMSGrad, and a fused path for ``Adam`` followed by ``LR``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from ...core.module import Transform
from ...core.schema import ALPHA, BETAS, EPS, FLAG, Setting, boolean, optional
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext

_FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class Adam(Transform):
    r"""Adam's update rule, with the learning rate left to :class:`LR` (``alpha`` multiplies the step).

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\\
        u \leftarrow \alpha \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}

    With ``amsgrad=True``, :math:`v_t` in the denominator is replaced by :math:`\max_{\tau\le t} v_\tau`.

    Args:
        betas: coefficients :math:`(\beta_1, \beta_2)` of the running averages.
        eps: term added to the denominator.
        amsgrad: use the AMSGrad variant (Reddi et al., 2018).
        alpha: step size multiplier.
        fused: when ``Adam`` + ``LR`` end the chain, use torch's fused Adam kernel where the device and
            dtype support it (``None``: yes; ``False``: always the foreach path).

    ``tz.Modular(p, tz.m.Adam(), tz.m.LR(1e-3))`` equals ``torch.optim.Adam(p, lr=1e-3)``.  The step
    count is per parameter, as in torch (a parameter that first gets a gradient later starts at step 1).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Adam(betas=(0.9, 0.99)), tz.m.LR(1e-3))  # == torch.optim.Adam

    Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    """

    keeps_state = True
    fuses_lr = True
    modifies_update_inplace = False
    counts_steps = True
    schema = {
        "betas": BETAS, "eps": EPS, "amsgrad": FLAG, "alpha": ALPHA,
        "fused": Setting(optional(boolean()), "None uses the fused kernel where it applies, False never."),
    }  # fmt: skip

    def __init__(
        self,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        amsgrad: bool = False,
        alpha: float = 1.0,
        fused: bool | None = None,
    ) -> None:
        super().__init__({"betas": betas, "eps": eps, "amsgrad": amsgrad, "alpha": alpha}, options={"fused": fused})
        self.fused = fused

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        s = seg.settings
        beta1, beta2 = s["betas"]
        t = seg.step
        names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if s["amsgrad"] else ("exp_avg", "exp_avg_sq")
        states = seg.state(*names)
        exp_avg, exp_avg_sq = states[0], states[1]
        update = seg.update
        lr = s["alpha"] * seg.scale

        if self.fused is not False and seg.fused_ok(lr, _FUSED_DTYPES):
            # torch's fused kernel does the whole rule in one pass (the sink gives it the parameters, or a zero
            # buffer that it leaves holding lr * m_hat / (sqrt(v_hat) + eps))
            step_t = torch.full((), float(t), dtype=torch.float32, device=seg.device)

            def kernel(target: list[torch.Tensor], step_lr: Any) -> None:
                torch._fused_adam_(
                    target, update, exp_avg, exp_avg_sq, states[2] if s["amsgrad"] else [], [step_t] * len(seg),
                    lr=step_lr, beta1=beta1, beta2=beta2, weight_decay=0.0, eps=s["eps"], amsgrad=s["amsgrad"],
                    maximize=False,
                )  # fmt: skip

            seg.emit_kernel(lr, kernel)
            return

        ops.lerp_(exp_avg, update, 1 - beta1)
        ops.mul_(exp_avg_sq, beta2)
        ops.addcmul_(exp_avg_sq, update, update, 1 - beta2)
        second = exp_avg_sq
        if s["amsgrad"]:
            ops.maximum_(states[2], exp_avg_sq)
            second = states[2]
        step_size = lr / (1 - beta1**t)
        denom = ops.sqrt(second)
        ops.div_(denom, math.sqrt(1 - beta2**t))
        ops.add_(denom, s["eps"])
        seg.emit_div(exp_avg, denom, step_size, scratch=True)  # handed on, the update is built in denom
