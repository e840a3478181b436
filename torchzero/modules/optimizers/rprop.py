"""Rprop (Riedmiller & Braun, 1993): per-element step sizes driven by the sign of the gradient."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...core.module import Transform
from ...core.schema import Setting, at_least, greater_than, in_range, pair_of
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


class Rprop(Transform):
    r"""The update rule of ``torch.optim.Rprop``; ``alpha`` is the initial step size.

    With :math:`s = \operatorname{sign}(g_t\, g_{t-1})`:

    .. math::
        \Delta_t = \operatorname{clip}\big(\Delta_{t-1} \cdot
            \{\eta_+ \text{ if } s>0;\ \eta_- \text{ if } s<0;\ 1 \text{ otherwise}\},\ \Delta_{\min}, \Delta_{\max}\big),
        \quad \Delta_0 = \alpha,\\
        g_t \leftarrow 0 \text{ where } s<0, \qquad u \leftarrow \operatorname{sign}(g_t)\, \Delta_t

    Only the sign of the incoming update matters.  ``tz.Modular(p, tz.m.Rprop(alpha=lr))`` equals
    ``torch.optim.Rprop(p, lr=lr)``.  Followed by ``LR(lr)``, the whole rule is scaled by ``lr``
    (so the bounds ``step_sizes`` are then relative to ``lr``).

    Args:
        etas: :math:`(\eta_-, \eta_+)`, with :math:`0 < \eta_- < 1 < \eta_+`.
        step_sizes: :math:`(\Delta_{\min}, \Delta_{\max})`.
        alpha: initial step size :math:`\Delta_0`.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Rprop(alpha=1e-2))  # == torch.optim.Rprop(lr=1e-2)

    Reference: Riedmiller & Braun, "A direct adaptive method for faster backpropagation learning: the
    RPROP algorithm", ICNN 1993.
    """

    keeps_state = True
    fuses_lr = True
    schema = {
        "etas": Setting(
            pair_of(in_range(0, 1, closed="neither"), greater_than(1), names="(eta_minus, eta_plus)"),
            "Use e.g. (0.5, 1.2).",
            expected="etas = (eta_minus, eta_plus) with 0 < eta_minus < 1 < eta_plus",
        ),
        "step_sizes": Setting(
            pair_of(at_least(0), names="(min, max)", ascending=True),
            "Use e.g. (1e-6, 50).",
            expected="step_sizes = (min, max) with 0 <= min <= max",
        ),
        "alpha": Setting(at_least(0), "alpha is the initial step size (torch's lr), e.g. 1e-2."),
    }

    modifies_update_inplace = False  # reads the update and emits a new one through the sink

    def __init__(
        self, etas: tuple[float, float] = (0.5, 1.2), step_sizes: tuple[float, float] = (1e-6, 50.0), alpha: float = 1.0
    ) -> None:
        super().__init__({"etas": etas, "step_sizes": step_sizes, "alpha": alpha})

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        s = seg.settings
        eta_minus, eta_plus = s["etas"]
        lo, hi = s["step_sizes"]
        start = s["alpha"]

        def init_size(v: Tensor) -> Tensor:
            return torch.full_like(v, start, memory_format=torch.preserve_format)

        # prev holds sign(g_{t-1}) after the zeroing (what torch keeps as the previous gradient, up to scale)
        prev, size = seg.state("prev", "step_size", init={"step_size": init_size})
        update = seg.update
        factor = ops.mul(update, prev)
        ops.sign_(factor)
        # {-1, 0, 1} -> {eta_minus, 1, eta_plus} exactly: clip(s * eta_plus + 1, eta_minus, eta_plus)
        ops.mul_(factor, eta_plus)
        ops.add_(factor, 1)
        ops.clamp_min_(factor, eta_minus)
        ops.clamp_max_(factor, eta_plus)
        ops.mul_(size, factor)
        ops.clamp_min_(size, lo)
        ops.clamp_max_(size, hi)
        # keep = 0 where the sign flipped (factor == eta_minus), 1 elsewhere
        ops.sub_(factor, eta_minus)
        ops.sign_(factor)
        ops.copy_(prev, update)
        ops.sign_(prev)
        ops.mul_(prev, factor)
        scale: Any = seg.scale
        seg.emit_mul(prev, size, scale)
