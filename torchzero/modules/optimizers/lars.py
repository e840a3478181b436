"""LARS: SGD with a layer-wise trust ratio (You et al., 2017), as ``pytorch_optimizer.LARS``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ...core.module import Transform
from ...core.schema import ALPHA, DAMPENING, FLAG, Setting, at_least, in_range
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


class LARS(Transform):
    r"""The update rule of ``pytorch_optimizer.LARS`` (4.1.0), with the learning rate left to :class:`LR`.

    For a parameter with two or more dimensions (of the parameter itself: a complex vector is a vector):

    .. math::
        r = \frac{\kappa \lVert\theta\rVert}{\lVert g\rVert + \lambda \lVert\theta\rVert}
            \ \ (1 \text{ if } \lVert\theta\rVert = 0 \text{ or the denominator is } 0), \qquad
        g' = r\,(g + \lambda\theta);

    scalars and vectors keep :math:`g' = g` (no decay, no ratio).  Then SGD momentum, with a buffer that starts at 0:

    .. math::
        b_t = \mu b_{t-1} + (1-\tau) g', \qquad
        u \leftarrow \alpha \cdot \begin{cases} g' + \mu b_t & \text{nesterov} \\ b_t & \text{otherwise}\end{cases}

    ``tz.Modular(p, tz.m.LARS(), tz.m.LR(1e-3))`` equals ``pytorch_optimizer.LARS(p, lr=1e-3)``.  The weight
    decay :math:`\lambda` enters the trust ratio, so the rule takes it itself.  The ratios stay 0-dim tensors on
    the device (no host sync).

    Args:
        weight_decay: :math:`\lambda`, for parameters with two or more dimensions.
        momentum: :math:`\mu` (0 disables the buffer).
        dampening: :math:`\tau`.
        trust_coefficient: :math:`\kappa`.
        nesterov: use Nesterov momentum.
        alpha: step size multiplier (use :class:`LR` for the learning rate).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.LARS(weight_decay=1e-4), tz.m.LR(0.1))

    Reference: You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", arXiv:1708.03888, 2017.
    """

    keeps_state = True
    fuses_lr = True
    modifies_update_inplace = False  # emits new tensors through the sink
    schema = {
        "weight_decay": Setting(at_least(0), "Use e.g. 1e-4 (0 disables it)."),
        "momentum": Setting(in_range(0, 1), "Use a value such as 0.9 (0 disables momentum)."),
        "dampening": DAMPENING,
        "trust_coefficient": Setting(at_least(0), "Use e.g. 1e-3."),
        "nesterov": FLAG,
        "alpha": ALPHA,
    }

    def __init__(
        self,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        dampening: float = 0.0,
        trust_coefficient: float = 1e-3,
        nesterov: bool = False,
        alpha: float = 1.0,
    ) -> None:
        super().__init__(
            {
                "weight_decay": weight_decay, "momentum": momentum, "dampening": dampening,
                "trust_coefficient": trust_coefficient, "nesterov": nesterov, "alpha": alpha,
            }
        )  # fmt: skip

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        s = seg.settings
        wd, momentum = s["weight_decay"], s["momentum"]
        update, params = seg.update, seg.params
        originals = ctx.layout.originals[seg.start : seg.stop]
        direction: list[Tensor] = list(update)
        mats = [i for i, p in enumerate(originals) if p.ndim > 1]
        if mats:
            grads = [update[i] for i in mats]
            weights = [params[i] for i in mats]
            param_norms = torch.stack(ops.norm([w.detach() for w in weights]))
            grad_norms = torch.stack(ops.norm([g.detach() for g in grads]))
            denominator = grad_norms + wd * param_norms
            ratios = torch.where(
                param_norms > 0,
                torch.where(denominator > 0, s["trust_coefficient"] * param_norms / denominator, 1.0),
                1.0,
            )
            scaled = ops.add(grads, weights, alpha=wd)
            for i, x, r in zip(mats, scaled, ratios.unbind(), strict=True):
                direction[i] = x.mul_(r)
        if momentum > 0:
            (buf,) = seg.state("momentum_buffer")
            ops.mul_(buf, momentum)
            ops.add_(buf, direction, alpha=1 - s["dampening"])
            direction = ops.add(direction, buf, alpha=momentum) if s["nesterov"] else buf
        seg.emit(direction, s["alpha"] * seg.scale)
