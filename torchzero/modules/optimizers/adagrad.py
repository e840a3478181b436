"""Adagrad (Duchi et al., 2011)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ...core.module import Transform
from ...core.schema import ALPHA, EPS, Setting, at_least
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


class Adagrad(Transform):
    r"""The update rule of ``torch.optim.Adagrad``, with the learning rate left to :class:`LR`.

    .. math::
        s_t = s_{t-1} + g_t^2 \quad (s_0 = a_0), \qquad
        u \leftarrow \frac{\alpha}{1 + (t-1)\,\delta}\; \frac{g_t}{\sqrt{s_t} + \epsilon}

    Args:
        lr_decay: :math:`\delta`, decay of the step size with the step count.
        initial_accumulator_value: :math:`a_0`, the starting value of the sum of squares (both halves
            of a complex parameter start at :math:`a_0`, as in torch).  It can be set per param group;
            ``torch.optim.Adagrad`` only reads its constructor value.
        eps: term added to the denominator.
        alpha: step size multiplier (use :class:`LR` for the learning rate).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Adagrad(), tz.m.LR(1e-2))  # == torch.optim.Adagrad(lr=1e-2)

    Reference: Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning and Stochastic
    Optimization", JMLR 2011.
    """

    keeps_state = True
    fuses_lr = True
    counts_steps = True
    schema = {
        "lr_decay": Setting(at_least(0), "Use 0 to disable the decay."),
        "initial_accumulator_value": Setting(
            at_least(0), "The accumulator is a sum of squares; start it at 0 or a positive value."
        ),
        "eps": EPS,
        "alpha": ALPHA,
    }

    modifies_update_inplace = False  # reads the update and emits a new one through the sink

    def __init__(
        self, lr_decay: float = 0.0, initial_accumulator_value: float = 0.0, eps: float = 1e-10, alpha: float = 1.0
    ) -> None:
        super().__init__(
            {"lr_decay": lr_decay, "initial_accumulator_value": initial_accumulator_value, "eps": eps, "alpha": alpha}
        )

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        s = seg.settings
        t = seg.step
        start = s["initial_accumulator_value"]

        def init(v: Tensor) -> Tensor:
            return torch.full_like(v, start, memory_format=torch.preserve_format)

        (acc,) = seg.state("sum", init=init)
        update = seg.update
        ops.addcmul_(acc, update, update)
        std = ops.sqrt(acc)
        ops.add_(std, s["eps"])
        seg.emit_div(update, std, s["alpha"] * seg.scale / (1 + (t - 1) * s["lr_decay"]))
