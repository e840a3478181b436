"""D-Adaptation for Adam: a learning rate estimated from a lower bound on the distance to the solution (Defazio & Mishchenko, 2023)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from ...core.module import Module
from ...core.schema import BETAS, EPS, FLAG, Setting, at_least, greater_than
from ...foreach import ops
from . import _distance as D

if TYPE_CHECKING:
    from ...core.context import StepContext

_SCALARS = ("d", "numerator_weighted")


class DAdaptAdam(Module):
    r"""D-Adapted Adam: Adam whose step size :math:`d_k \eta` is estimated on the fly.

    With :math:`\hat\eta_k = d_k\,\eta\,\rho_k` (:math:`\rho_k = \sqrt{1-\beta_2^{k+1}}/(1-\beta_1^{k+1})` with
    ``use_bias_correction``, else 1), :math:`\sqrt{\beta_2}` written :math:`b`, and :math:`r` a param group's
    ``layer_scale``:

    .. math::
        n_{k+1} = b\, n_k + (1-b)\, \hat\eta_k \sum r \Big\langle g_k, \frac{s_k}{\sqrt{v_k} + \epsilon} \Big\rangle,
        \quad m_{k+1} = \beta_1 m_k + (1-\beta_1)\, r\, \hat\eta_k g_k,\\
        v_{k+1} = \beta_2 v_k + (1-\beta_2) g_k^2, \quad s_{k+1} = b\, s_k + (1-b)\, \hat\eta_k g_k,\\
        d_{k+1} = \max\Big(d_k,\ \min\Big(\frac{n_{k+1}}{(1-b) \sum r \lVert s_{k+1}\rVert_1},\ \gamma d_k\Big)\Big),
        \quad x_{k+1} = x_k - \frac{m_{k+1}}{\sqrt{v_{k+1}} + \epsilon} - \lambda \hat\eta_k x_k

    The step size is inside :math:`m`.  :math:`d` and :math:`n` are one 0-dim tensor each over all parameters
    of the optimizer (as in the reference, which estimates one :math:`d` across param groups): the dot
    products and l1 norms are reduced on the device, no step reads them back to the host.  Until some
    gradient is non-zero (:math:`\lVert s\rVert_1 = 0`) the estimate stays, as in the reference.

    **Why the learning rate and the weight decay are settings of the rule.**  The estimate of :math:`d` is
    built from :math:`\hat\eta_k = d_k\eta\rho_k`, the step the rule itself takes (it is accumulated into
    :math:`m` and :math:`s`), and decoupled weight decay is scaled by that same on-device :math:`\hat\eta_k`;
    neither can come from a ``tz.m.LR`` or ``tz.m.WeightDecay`` placed after the rule.  So ``DAdaptAdam``
    hands on the whole step and is used without ``LR``: it owns the groups' ``lr`` (schedulers reach it) and
    ``weight_decay``, coupled (added to the gradient, the reference's default) or, with ``decouple=True``,
    decoupled.

    Args:
        lr: the multiplier :math:`\eta` of the estimated step size (1.0 is the method's choice).
        betas: :math:`(\beta_1, \beta_2)`.
        eps: term added to the denominator.
        weight_decay: weight decay :math:`\lambda`.
        decouple: decoupled weight decay (AdamW style, scaled by :math:`\hat\eta_k`) instead of coupled.
        use_bias_correction: Adam's bias correction in :math:`\rho_k`.
        d0: initial estimate :math:`d_0`.
        growth_rate: the most :math:`d` may grow per step, :math:`\gamma`.
        layer_scale: the weight :math:`r` of a param group in the estimate and in its step.

    ``tz.Modular(p, tz.m.DAdaptAdam())`` equals ``dadaptation.DAdaptAdam(p)`` (3.2).  ``eps``,
    ``weight_decay`` and ``layer_scale`` may differ per param group; the other settings must agree in all of
    them (one :math:`d`); the reference's groups with ``lr=0`` (frozen) are not supported: leave those
    parameters out.  The FSDP all-reduce and logging of the reference are not part of this module.  The step
    count is the first parameter's.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.DAdaptAdam(weight_decay=0.01, decouple=True))

    Reference: Defazio & Mishchenko, "Learning-Rate-Free Learning by D-Adaptation", ICML 2023.
    """

    keeps_state = True
    exact_state = frozenset(_SCALARS)  # kept in the compute dtype whatever state_dtype says
    modifies_update_inplace = False
    counts_steps = True
    schema = {
        "lr": Setting(greater_than(0), "DAdaptAdam's lr multiplies the estimated step size; use 1.0."),
        "betas": BETAS, "eps": EPS, "use_bias_correction": FLAG, "decouple": FLAG,
        "weight_decay": Setting(at_least(0), "Use 0 or a small value such as 0.01."),
        "d0": Setting(greater_than(0), "Use a small value such as 1e-6."),
        "growth_rate": Setting(greater_than(0), "Use float('inf') (no limit) or a value such as 1.02."),
        "layer_scale": Setting(at_least(0), "Use 1.0, or a group's relative step size."),
    }  # fmt: skip

    UNIFORM = ("lr", "betas", "use_bias_correction", "decouple", "d0", "growth_rate")
    """settings that must agree in every param group (they define the one estimate of d)"""

    def __init__(
        self,
        lr: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decouple: bool = False,
        use_bias_correction: bool = False,
        d0: float = 1e-6,
        growth_rate: float = math.inf,
        layer_scale: float = 1.0,
    ) -> None:
        super().__init__(
            {
                "lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "decouple": decouple,
                "use_bias_correction": use_bias_correction, "d0": d0, "growth_rate": growth_rate,
                "layer_scale": layer_scale,
            }
        )  # fmt: skip

    def step(self, ctx: StepContext) -> None:
        segs = ctx.segments(self)
        if not segs:
            return
        s = D.check_uniform(self, segs, self.UNIFORM)
        beta1, beta2 = s["betas"]
        b = beta2**0.5
        k = segs[0].step - 1
        bias_correction = ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1)) if s["use_bias_correction"] else 1.0
        scalars, copies = D.shared_scalars(ctx, self, segs, {"d": s["d0"], "numerator_weighted": 0.0})
        d = scalars["d"]
        device = d.device
        dlr = d * D.as_scalar(s["lr"], d) * bias_correction
        ctx.report(self, "d", d)
        ctx.report(self, "d_lr", dlr)  # this step's d * lr (times the bias correction, if used)

        # pass 1: the numerator with the previous s and v, then the moments and s, over every segment.  Both
        # moments' coefficients carry dlr (a tensor: foreach scales take Python numbers), so the gradient is
        # scaled by it once and the moments take Python-number coefficients of it
        acc = d.new_zeros(())
        l1 = d.new_zeros(())
        for seg in segs:
            g, x, st = seg.update, seg.params, seg.settings
            r, wd = st["layer_scale"], st["weight_decay"]
            if wd != 0 and not s["decouple"]:
                g = ops.add(g, x, alpha=wd)
            exp_avg, exp_avg_sq, s_sum = seg.state("exp_avg", "exp_avg_sq", "s")
            # temporaries in one reused buffer (a new parameter-sized tensor each step costs its page faults)
            buf = ops.into(seg.scratch, "sqrt", exp_avg_sq)
            ops.add_(buf, st["eps"])
            # s / (sqrt(v) + eps) written over its denominator, which the next line overwrites anyway
            acc = acc + r * D.dot(g, ops.into(buf, "div", s_sum, buf), device)
            gd = buf = ops.into(buf, "mul", g, D.on(dlr, seg))
            if r == 1:
                ops.lerp_(exp_avg, gd, 1 - beta1)  # beta1 m + (1 - beta1) dlr g
            else:
                ops.mul_(exp_avg, beta1)
                ops.add_(exp_avg, gd, alpha=r * (1 - beta1))
            ops.mul_(exp_avg_sq, beta2)
            ops.addcmul_(exp_avg_sq, g, g, 1 - beta2)
            ops.mul_(s_sum, b)
            ops.add_(s_sum, gd, alpha=1 - b)
            l1 = l1 + r * D.l1(s_sum, device, scratch=buf)

        # the new estimate, kept where nothing moved yet (no gradient so far: the reference returns early)
        numerator = b * scalars["numerator_weighted"] + (1 - b) * (dlr * acc)
        moved = l1 > 0
        d_hat = numerator / ((1 - b) * torch.where(moved, l1, torch.ones_like(l1)))
        d_new = torch.maximum(d, torch.minimum(d_hat, d * s["growth_rate"]))
        new = {
            "d": torch.where(moved, d_new, d),
            "numerator_weighted": torch.where(moved, numerator, scalars["numerator_weighted"]),
        }

        # pass 2: the step (its size is inside m; m is zero while nothing moved)
        for seg in segs:
            exp_avg, exp_avg_sq = seg.state("exp_avg", "exp_avg_sq")
            denom = ops.into(seg.scratch, "sqrt", exp_avg_sq)
            ops.add_(denom, seg.settings["eps"])
            wd = seg.settings["weight_decay"]
            decay: Any = 0.0
            if wd != 0 and s["decouple"]:
                decay = D.on(torch.where(moved, dlr, torch.zeros_like(dlr)) * wd, seg)
            seg.emit_div(exp_avg, denom, 1.0, scratch=True, decay=decay)
        D.store(copies, _SCALARS, new)
