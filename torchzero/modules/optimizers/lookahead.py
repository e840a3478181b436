"""Lookahead (Zhang et al., 2019): every k steps, pull slow weights toward the fast ones."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...core.module import Transform
from ...core.schema import Setting, in_range, integer
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext
    from ...core.modular import Modular


class Lookahead(Transform):
    r"""Lookahead around the rest of the chain: put it last, after the rule and its ``LR``.

    The chain before it takes the fast steps; ``Lookahead`` keeps the slow weights :math:`\phi` (the
    parameters when it first sees them) and, on every ``k``-th step of a parameter, lands the parameters on

    .. math::
        \theta_{t} = \phi + \alpha\,(\tilde\theta_t - \phi), \qquad \phi \leftarrow \theta_t,

    where :math:`\tilde\theta_t = \theta_{t-1} - u_t` is the fast step of the update :math:`u_t` it receives.
    On the other steps it hands on :math:`u_t` unchanged.  It emits :math:`\theta_{t-1} - \theta_t` through the
    write sink, so only the core writes the parameters.

    ``tz.Modular(p, tz.m.Adam(), tz.m.LR(1e-3), tz.m.Lookahead(k=5, alpha=0.5))`` equals
    ``pytorch_optimizer.Lookahead(torch.optim.Adam(p, lr=1e-3), k=5, alpha=0.5)`` (``pullback_momentum='none'``;
    the base optimizer's momentum is not touched).  The count is per parameter (the reference counts per param
    group; they agree when every parameter steps every time).

    Args:
        k: number of fast steps between synchronisations.
        alpha: :math:`\alpha`, how far the slow weights move toward the fast ones.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Adam(), tz.m.LR(1e-3), tz.m.Lookahead(k=5, alpha=0.5))

    Reference: Zhang, Lucas, Hinton, Ba, "Lookahead Optimizer: k steps forward, 1 step back", NeurIPS 2019.
    """

    keeps_state = True
    exact_state = frozenset({"slow"})  # kept in the compute dtype whatever state_dtype says
    counts_steps = True
    modifies_update_inplace = False
    schema = {
        "k": Setting(integer(1), "k is a whole number of steps, at least 1 (e.g. 5)."),
        "alpha": Setting(in_range(0, 1), "alpha is a fraction in [0, 1], e.g. 0.5."),
    }

    def __init__(self, k: int = 5, alpha: float = 0.5) -> None:
        super().__init__({"k": k, "alpha": alpha})

    def bind(self, opt: Modular) -> None:
        if opt.modules[-1] is not self:
            raise ValueError(
                "Lookahead moves the parameters toward its slow weights, so it must be the last module of the "
                "chain (after the rule and its LR): tz.Modular(params, tz.m.Adam(), tz.m.LR(1e-3), tz.m.Lookahead())"
            )

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        s = seg.settings
        theta = seg.params
        (slow,) = seg.state("slow", init=lambda p: p.detach().clone(memory_format=torch.preserve_format))
        update = seg.update
        if seg.step % s["k"] != 0:
            seg.emit(update, 1.0)
            return
        fast = ops.sub(theta, update)
        ops.lerp_(fast, slow, 1.0 - s["alpha"])  # the new point, computed as the reference computes it
        ops.copy_(slow, fast)
        ops.sub_(fast, theta)  # theta_new - theta: exact when theta_new is within a factor 2 of theta
        seg.emit(fast, -1.0)
