"""SGD with momentum, dampening and Nesterov momentum (torch.optim.SGD without the lr)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...core.module import Transform
from ...core.schema import ALPHA, DAMPENING, FLAG, MOMENTUM, Rule, Setting, boolean, optional
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext

_FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class SGD(Transform):
    r"""The update rule of ``torch.optim.SGD``, with the learning rate left to :class:`LR`.

    .. math::
        b_t = \mu b_{t-1} + (1 - \tau) u_t \quad (b_1 = u_1), \qquad
        u \leftarrow \alpha \cdot \begin{cases} u_t + \mu b_t & \text{nesterov} \\ b_t & \text{otherwise}\end{cases}

    Args:
        momentum: momentum factor :math:`\mu` (0 disables the buffer).
        dampening: dampening :math:`\tau` for momentum.
        nesterov: use Nesterov momentum.
        alpha: step size multiplier (use :class:`LR` for the learning rate).
        fused: use torch's fused SGD kernel (the whole rule and the parameter write in one pass) where the
            device, dtype and settings allow it (``foreach.policy.fused_ok``); None (default) wherever it applies,
            False never.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.SGD(momentum=0.9), tz.m.LR(0.1))  # == torch.optim.SGD(lr=0.1, momentum=0.9)
    """

    keeps_state = True
    fuses_lr = True
    schema = {
        "momentum": MOMENTUM, "dampening": DAMPENING, "nesterov": FLAG, "alpha": ALPHA,
        "fused": Setting(optional(boolean()), "None uses the fused kernel where it applies, False never."),
    }  # fmt: skip
    cross_checks = (
        Rule(
            ("nesterov", "momentum", "dampening"),
            lambda nesterov, momentum, dampening: not nesterov or (momentum > 0 and dampening == 0),
            "momentum > 0 and dampening = 0 with nesterov=True",
            "Nesterov momentum requires momentum > 0 and dampening = 0: set momentum (e.g. 0.9) and dampening=0, "
            "or nesterov=False.",
        ),
    )

    modifies_update_inplace = False  # reads the update and emits a new one through the sink

    def __init__(
        self,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        alpha: float = 1.0,
        fused: bool | None = None,
    ) -> None:
        defaults = {"momentum": momentum, "dampening": dampening, "nesterov": nesterov, "alpha": alpha}
        super().__init__(defaults, options={"fused": fused})
        self.fused = fused

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        s = seg.settings
        momentum, scale = s["momentum"], s["alpha"] * seg.scale
        update = seg.update
        direction = update
        if momentum != 0:
            new: list[Tensor] = []

            def fresh(v: Tensor) -> Tensor:  # in the dtype the segment computes in (see state_dtype)
                new.append(torch.empty_like(v, dtype=seg.precision.compute, memory_format=torch.preserve_format))
                return new[-1]

            (buf,) = seg.state("momentum_buffer", init=fresh)
            if self._fused(seg, scale, buf, new):
                return
            if new:  # first step of these tensors: the buffer starts at the update (torch.optim.SGD semantics)
                fresh_ids = {id(t) for t in new}
                old = [(b, u) for b, u in zip(buf, update, strict=True) if id(b) not in fresh_ids]
                for b, u in zip(buf, update, strict=True):
                    if id(b) in fresh_ids:
                        b.copy_(u)
                if old:
                    _momentum_(momentum, s["dampening"], [b for b, _ in old], [u for _, u in old])
            else:
                _momentum_(momentum, s["dampening"], buf, update)
            direction = ops.add(update, buf, alpha=momentum) if s["nesterov"] else buf
        elif self._fused(seg, scale, [], []):
            return
        seg.emit(direction, scale)

    def _fused(self, seg: Segment, scale: Any, buf: list[Tensor], new: list[Tensor]) -> bool:
        """Run torch's fused SGD kernel through the sink when the policy allows it; False to take the foreach path.

        A segment whose buffers are all new starts them at the update (``is_first_step``), as torch does; one
        mixing new and old buffers (a parameter that joined later) takes the foreach path.
        """
        s = seg.settings
        momentum, dampening = s["momentum"], s["dampening"]
        if (
            self.fused is False
            or isinstance(momentum, Tensor)
            or isinstance(dampening, Tensor)
            or (new and len(new) != len(buf))
            or not seg.fused_ok(scale, _FUSED_DTYPES, sharded_ok=False)  # torch has no DTensor rule for it
        ):
            return False
        update = seg.update

        def kernel(target: list[Tensor], lr: Any) -> None:
            torch._fused_sgd_(
                target, update, buf, weight_decay=0.0, momentum=momentum, lr=lr, dampening=dampening,
                nesterov=s["nesterov"], maximize=False, is_first_step=bool(new),
            )  # fmt: skip

        seg.emit_kernel(scale, kernel)
        return True


def _momentum_(momentum: Any, dampening: Any, buf: list[Tensor], update: list[Tensor]) -> None:
    ops.mul_(buf, momentum)
    ops.add_(buf, update, alpha=1 - dampening)
