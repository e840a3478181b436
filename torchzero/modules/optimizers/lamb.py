"""LAMB: Adam with a layer-wise trust ratio (You et al., 2020), as ``pytorch_optimizer.Lamb``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...core.module import Transform
from ...core.schema import ALPHA, BETAS, EPS, FLAG, Setting, at_least
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext

CLAMP = 10.0
"""the parameter norm in the trust ratio is clamped to at most this (as in pytorch_optimizer)"""


class Lamb(Transform):
    r"""The update rule of ``pytorch_optimizer.Lamb`` (4.1.0), with the learning rate read from the :class:`LR` after it.

    With :math:`\eta = \alpha \cdot \mathrm{lr}` (``alpha`` times the learning rate of the ``LR`` after it),
    :math:`\beta_3 = 1-\beta_1` (``grad_averaging``, else 1) and :math:`c` the decoupled decay
    (:math:`\lambda\eta`, or :math:`\lambda` with ``fixed_decay``; 0 when coupled):

    .. math::
        m_t = \beta_1 m_{t-1} + \beta_3 g_t, \quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
        u = \frac{m_t}{\sqrt{v_t} + \epsilon}\ \big(+\, \lambda\theta \text{ when coupled}\big),\\
        r = \frac{\min(\lVert (1-c)\theta \rVert, 10)}{\lVert u \rVert + \epsilon}
            \ \ (1 \text{ if either norm is } 0), \qquad
        \theta \leftarrow (1-c)\,\theta - \frac{\eta}{1-\beta_1^t}\, r\, u

    per parameter tensor (``adam=True``: :math:`r = 1`).  The trust ratio depends on the decayed parameters and the
    decay on the learning rate, so the rule takes the weight decay itself and reads the lr of the ``LR`` that
    follows it (per param group; with no ``LR`` after it, :math:`\eta = \alpha`).  It hands on
    :math:`\alpha r u / (1-\beta_1^t) + (c/\mathrm{lr})\,\theta`, which ``LR`` multiplies by the learning rate:
    ``tz.Modular(p, tz.m.Lamb(weight_decay=0.01), tz.m.LR(1e-3))`` equals
    ``pytorch_optimizer.Lamb(p, lr=1e-3, weight_decay=0.01)``.  With ``fixed_decay=True`` the term is
    :math:`(\lambda/\mathrm{lr})\,\theta`, so the lr must not be 0.

    The reference's defaults are kept (version 3 of the paper, with the first-moment bias correction, no
    rectification, no gradient pre-normalisation).  Its ``pre_norm=True`` (scale the gradient by
    ``min(1, max_grad_norm / (||g|| + eps))`` over all parameters) is :class:`ClipNorm` before the rule; its
    ``rectify`` and ``adam_debias`` variants are not provided.  The trust ratio stays a 0-dim tensor per parameter
    (no host sync).

    Args:
        betas: :math:`(\beta_1, \beta_2)`.
        eps: :math:`\epsilon`, in the denominator and in the trust ratio.
        weight_decay: :math:`\lambda`.
        weight_decouple: decoupled decay (as AdamW) instead of :math:`\lambda\theta` added to the Adam direction.
        fixed_decay: decoupled decay not scaled by the learning rate.
        grad_averaging: :math:`\beta_3 = 1 - \beta_1` instead of 1.
        adam: a trust ratio of 1 (Adam without the second-moment bias correction).
        alpha: step size multiplier (use :class:`LR` for the learning rate).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Lamb(weight_decay=1e-2), tz.m.LR(1e-3))

    Reference: You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", ICLR 2020.
    """

    keeps_state = True
    counts_steps = True
    fuses_lr = True  # fused with the LR after it, the sink writes theta (1 - c) - lr r u in one pass
    modifies_update_inplace = False  # emits new tensors through the sink
    schema = {
        "betas": BETAS, "eps": EPS, "weight_decay": Setting(at_least(0), "Use e.g. 1e-2 (0 disables it)."),
        "weight_decouple": FLAG, "fixed_decay": FLAG, "grad_averaging": FLAG, "adam": FLAG, "alpha": ALPHA,
    }  # fmt: skip

    def __init__(
        self,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        weight_decouple: bool = True,
        fixed_decay: bool = False,
        grad_averaging: bool = True,
        adam: bool = False,
        alpha: float = 1.0,
    ) -> None:
        super().__init__(
            {
                "betas": betas, "eps": eps, "weight_decay": weight_decay, "weight_decouple": weight_decouple,
                "fixed_decay": fixed_decay, "grad_averaging": grad_averaging, "adam": adam, "alpha": alpha,
            }
        )  # fmt: skip

    def step(self, ctx: StepContext) -> None:
        # seg.scale is the learning rate of the LR after this rule, which the decay needs: fused with that LR the
        # rule applies it too (the sink writes the parameters in one pass), else the LR scales the update afterwards
        segs, fused = ctx.segments_with_lr(self)
        for seg in segs:
            self.apply(ctx, seg, fused)

    def apply(self, ctx: StepContext, seg: Segment, fused: bool = False) -> None:
        s = seg.settings
        beta1, beta2 = s["betas"]
        eps, wd, alpha, t = s["eps"], s["weight_decay"], s["alpha"], seg.step
        lr = seg.scale
        update, params = seg.update, seg.params
        exp_avg, exp_avg_sq = seg.state("exp_avg", "exp_avg_sq")
        ops.mul_(exp_avg, beta1)
        ops.add_(exp_avg, update, alpha=1 - beta1 if s["grad_averaging"] else 1.0)
        ops.mul_(exp_avg_sq, beta2)
        ops.addcmul_(exp_avg_sq, update, update, 1 - beta2)
        direction = ops.sqrt(exp_avg_sq)
        ops.add_(direction, eps)
        ops.reciprocal_(direction)
        ops.mul_(direction, exp_avg)

        decoupled = s["weight_decouple"] and wd != 0
        decay: Any = 0.0  # c: the parameters are multiplied by 1 - c
        if decoupled:
            decay = wd if s["fixed_decay"] else wd * alpha * lr
        elif wd > 0:
            ops.add_(direction, params, alpha=wd)

        step_size = alpha / (1 - beta1**t)
        if s["adam"]:
            ops.mul_(direction, step_size)
        else:
            weight_norms = torch.stack(ops.norm([p.detach() for p in params]))
            if decoupled:
                weight_norms = weight_norms * abs(1 - decay)
            weight_norms = weight_norms.clamp(max=CLAMP)
            update_norms = torch.stack(ops.norm([d.detach() for d in direction]))
            ratios = (
                torch.where((weight_norms != 0) & (update_norms != 0), weight_norms / (update_norms + eps), 1.0)
                * step_size
            )
            ops.mul_(direction, list(ratios.unbind()))
        if fused:  # eta r u / (1 - beta1^t), with theta decayed by c
            seg.emit(direction, lr, decay=decay if decoupled else 0.0)
            return
        # LR multiplies this by lr: eta r u / (1 - beta1^t) + c theta
        coefficient: Any = 0.0
        if decoupled:
            coefficient = (
                wd * alpha if not s["fixed_decay"] else (wd / lr if isinstance(lr, Tensor) or lr != 0 else 0.0)
            )
        seg.emit(direction, 1.0, decay=coefficient)
