"""Prodigy: Adam with a learning rate estimated from the distance to the solution (Mishchenko & Defazio, 2024)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from ...core.module import Module
from ...core.schema import BETAS, EPS, FLAG, Setting, at_least, greater_than, in_range, optional
from ...foreach import ops
from . import _distance as D

if TYPE_CHECKING:
    from ...core.context import StepContext

_SCALARS = ("d", "d_max", "d_numerator")


class Prodigy(Module):
    r"""Prodigy: Adam whose step size :math:`d_k \eta` is estimated on the fly.

    With :math:`x_0` the starting point, :math:`\hat\eta_k = d_k\,\eta\,\rho_k` (:math:`\rho_k` Adam's bias
    correction :math:`\sqrt{1-\beta_2^{k+1}}/(1-\beta_1^{k+1})` with ``use_bias_correction``, else 1):

    .. math::
        m_{k+1} = \beta_1 m_k + (1-\beta_1) d_k g_k, \quad v_{k+1} = \beta_2 v_k + (1-\beta_2) d_k^2 g_k^2,\\
        r_{k+1} = \beta_3 r_k + \tfrac{d_k}{d_0} \hat\eta_k \langle g_k, x_0 - x_k\rangle, \quad
        s_{k+1} = \beta_3 s_k + \tfrac{d_k}{d_0} \hat\eta_k g_k,\\
        \hat d_{k+1} = c\, \frac{r_{k+1}}{\lVert s_{k+1} \rVert_1}, \quad
        d_{k+1} = \min\big(\max_{i \le k+1} \hat d_i,\; \gamma\, d_k\big)
            \ \ (\text{and } d_{k+1} \ge \hat d_{k+1} \text{ while } d_k = d_0),\\
        x_{k+1} = x_k - \hat\eta_k \Big(\frac{m_{k+1}}{\sqrt{v_{k+1}} + d_{k+1}\epsilon} + \lambda x_k\Big)

    (with ``safeguard_warmup``, :math:`s` accumulates :math:`\tfrac{d_k}{d_0} d_k g_k`; with :math:`\beta_1 = 0`
    the numerator is :math:`d_{k+1} g_k`).  :math:`d`, its running maximum and :math:`r` are one 0-dim tensor
    each, over all parameters of the optimizer (as in the reference, which estimates one :math:`d` across
    param groups): the dot products and l1 norms are reduced on the device, no step reads them back to the
    host.  Until some gradient is non-zero (:math:`\lVert s\rVert_1 = 0`) nothing moves, as in the reference.

    **Why the learning rate and the weight decay are settings of the rule.**  The estimate of :math:`d` is
    built from :math:`\hat\eta_k = d_k\eta\rho_k`, the step the rule itself takes, and decoupled weight decay
    is scaled by that same on-device :math:`\hat\eta_k`; neither can come from a ``tz.m.LR`` or
    ``tz.m.WeightDecay`` placed after the rule.  So ``Prodigy`` hands on the whole step and is used without
    ``LR``: it owns the groups' ``lr`` (schedulers reach it) and ``weight_decay`` (decoupled, the reference's
    default ``decouple=True``).  Coupled decay (``decouple=False``) is ``tz.m.WeightDecay(wd)`` before it.

    Args:
        lr: the multiplier :math:`\eta` of the estimated step size (1.0 in the paper's experiments).
        betas: :math:`(\beta_1, \beta_2)`.
        beta3: decay :math:`\beta_3` of :math:`r` and :math:`s` (None: :math:`\sqrt{\beta_2}`).
        eps: term added to the denominator (scaled by :math:`d`).
        weight_decay: decoupled weight decay :math:`\lambda`, scaled by :math:`\hat\eta_k`.
        use_bias_correction: Adam's bias correction in :math:`\rho_k`.
        safeguard_warmup: leave :math:`\eta\rho_k` out of :math:`s` (for warm-up schedules).
        d0: initial estimate :math:`d_0`.
        d_coef: multiplier :math:`c` of the estimate.
        growth_rate: the most :math:`d` may grow per step, :math:`\gamma`.

    ``tz.Modular(p, tz.m.Prodigy())`` equals ``prodigyopt.Prodigy(p)`` (1.1.2).  Every setting but ``eps``
    and ``weight_decay`` must be the same in all param groups (one :math:`d`); the reference's groups with
    ``lr=0`` (frozen) are not supported: leave those parameters out.  The FSDP all-reduce and ``slice_p`` of
    the reference are not part of this module.  The step count is the first parameter's.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Prodigy(lr=1.0, weight_decay=0.01))

    Reference: Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner", ICML 2024.
    """

    keeps_state = True
    exact_state = frozenset({"p0", *_SCALARS})  # kept in the compute dtype whatever state_dtype says
    modifies_update_inplace = False
    counts_steps = True
    schema = {
        "lr": Setting(greater_than(0), "Prodigy's lr multiplies the estimated step size; use 1.0."),
        "betas": BETAS, "eps": EPS, "use_bias_correction": FLAG, "safeguard_warmup": FLAG,
        "beta3": Setting(optional(in_range(0, 1, closed="left")), "Use None (sqrt(beta2)) or a value in [0, 1)."),
        "weight_decay": Setting(at_least(0), "Use 0 or a small value such as 0.01 (decoupled)."),
        "d0": Setting(greater_than(0), "Use a small value such as 1e-6."),
        "d_coef": Setting(greater_than(0), "Use 1.0 (larger values give larger steps)."),
        "growth_rate": Setting(greater_than(0), "Use float('inf') (no limit) or a value such as 1.02."),
    }  # fmt: skip

    UNIFORM = ("lr", "betas", "beta3", "use_bias_correction", "safeguard_warmup", "d0", "d_coef", "growth_rate")
    """settings that must agree in every param group (they define the one estimate of d)"""

    def __init__(
        self,
        lr: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        beta3: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        use_bias_correction: bool = False,
        safeguard_warmup: bool = False,
        d0: float = 1e-6,
        d_coef: float = 1.0,
        growth_rate: float = math.inf,
    ) -> None:
        super().__init__(
            {
                "lr": lr, "betas": betas, "beta3": beta3, "eps": eps, "weight_decay": weight_decay,
                "use_bias_correction": use_bias_correction, "safeguard_warmup": safeguard_warmup,
                "d0": d0, "d_coef": d_coef, "growth_rate": growth_rate,
            }
        )  # fmt: skip

    def step(self, ctx: StepContext) -> None:
        segs = ctx.segments(self)
        if not segs:
            return
        s = D.check_uniform(self, segs, self.UNIFORM)
        beta1, beta2 = s["betas"]
        beta3 = math.sqrt(beta2) if s["beta3"] is None else s["beta3"]
        d0 = s["d0"]
        k = segs[0].step - 1
        bias_correction = math.sqrt(1 - beta2 ** (k + 1)) / (1 - beta1 ** (k + 1)) if s["use_bias_correction"] else 1.0
        scalars, copies = D.shared_scalars(ctx, self, segs, {"d": d0, "d_max": d0, "d_numerator": 0.0})
        d, d_max = scalars["d"], scalars["d_max"]
        device = d.device
        dlr = d * D.as_scalar(s["lr"], d) * bias_correction
        ctx.report(self, "d", d)
        ctx.report(self, "d_lr", dlr)  # this step's d * lr (times the bias correction, if used)
        ratio = d / d0

        # pass 1: the moments and the running sums, and the two reductions, over every segment.  The three
        # coefficients all carry d (a tensor: foreach scales take Python numbers), so the gradient is scaled
        # by d once and the moments take Python-number coefficients of it; s's coefficient over d is ratio * lr
        # (ratio with safeguard_warmup), applied to the same buffer once the moments are done
        s_over_d = ratio if s["safeguard_warmup"] else ratio * D.as_scalar(s["lr"], d) * bias_correction
        delta = torch.zeros((), dtype=d.dtype, device=device)
        l1 = torch.zeros((), dtype=d.dtype, device=device)
        for seg in segs:
            g, x = seg.update, seg.params
            names = ("exp_avg_sq", "s", "p0", "exp_avg") if beta1 > 0 else ("exp_avg_sq", "s", "p0")
            states = seg.state(*names, init={"p0": lambda v: v.detach().clone()})
            exp_avg_sq, s_sum, p0 = states[0], states[1], states[2]
            # temporaries in one reused buffer (a new parameter-sized tensor each step costs its page faults)
            buf = ops.into(seg.scratch, "sub", p0, x)
            delta = delta + D.dot(g, buf, device)
            gd = buf = ops.into(buf, "mul", g, D.on(d, seg))
            if beta1 > 0:
                ops.lerp_(states[3], gd, 1 - beta1)  # beta1 m + (1 - beta1) d g
            ops.mul_(exp_avg_sq, beta2)
            ops.addcmul_(exp_avg_sq, gd, gd, value=1 - beta2)
            ops.mul_(gd, D.on(s_over_d, seg))
            ops.mul_(s_sum, beta3)
            ops.add_(s_sum, gd)
            l1 = l1 + D.l1(s_sum, device, scratch=buf)

        # the new estimate, kept where nothing moved yet (no gradient so far: the reference returns early)
        numerator = scalars["d_numerator"] * beta3 + ratio * dlr * delta
        moved = l1 > 0
        d_hat = s["d_coef"] * numerator / torch.where(moved, l1, torch.ones_like(l1))
        d_new = torch.where(d == d0, torch.maximum(d, d_hat), d)
        d_max_new = torch.maximum(d_max, d_hat)
        d_new = torch.minimum(d_max_new, d_new * s["growth_rate"])
        new = {
            "d": torch.where(moved, d_new, d),
            "d_max": torch.where(moved, d_max_new, d_max),
            "d_numerator": torch.where(moved, numerator, scalars["d_numerator"]),
        }
        step_size = torch.where(moved, dlr, torch.zeros_like(dlr))
        # the step size divides the denominator (one pass, no host sync): the parameters are then written with
        # one addcdiv (torch Adam's capturable form); 0 while nothing moved, where the numerator is 0 too
        den_scale = step_size if beta1 > 0 else step_size * new["d"]

        # pass 2: the step, with the new d in the denominator and the step size of this step's d
        for seg in segs:
            states = seg.state(*(("exp_avg_sq", "exp_avg") if beta1 > 0 else ("exp_avg_sq",)))
            denom = ops.into(seg.scratch, "sqrt", states[0])
            D.add_(denom, D.on(new["d"] * seg.settings["eps"], seg))
            ops.div_(denom, D.on(den_scale, seg))
            wd = seg.settings["weight_decay"]
            decay: Any = D.on(step_size * wd, seg) if wd != 0 else 0.0
            seg.emit_div(states[1] if beta1 > 0 else seg.update, denom, 1.0, scratch=True, decay=decay)
        D.store(copies, _SCALARS, new)
