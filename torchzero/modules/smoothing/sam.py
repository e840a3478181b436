"""Sharpness-aware minimization: the gradient at the worst nearby point."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.module import Module
from ...core.probe import Probe
from ...core.schema import FLAG, Setting, at_least, greater_than
from ...foreach import ops
from ...foreach.ops import scaled
from ...foreach.reduce import dot_tensor

if TYPE_CHECKING:
    from ...core.context import StepContext


class SAM(Module):
    r"""Sharpness-aware minimization (SAM), and adaptive SAM (ASAM) with ``adaptive=True``.

    With :math:`g` the incoming update (the gradient at :math:`x`):

    .. math::
        \epsilon = \rho \frac{g}{\lVert g\rVert} \;\text{(SAM)}, \qquad
        \epsilon = \rho \frac{T^2 g}{\lVert T g\rVert},\; T = |x| + \eta \;\text{(ASAM)}, \qquad
        u \leftarrow \nabla f(x + \epsilon)

    The closure is evaluated once more per step, with backward, at :math:`x + \epsilon`; the parameters
    are then restored exactly (copied back) and the perturbed-point gradient is handed on as both the
    update and the gradient.  ``.grad`` holds it too.  The step's loss stays the loss at :math:`x`.
    A non-finite loss at the perturbed point raises :class:`~torchzero.NonFiniteLossError` after the
    restore.  In distributed runs, the closure's backward must all-reduce gradients as usual (DDP
    does) so :math:`\epsilon` is the same on every process.

    Args:
        rho: radius of the neighbourhood.
        adaptive: use ASAM's scale-invariant neighbourhood.
        eta: ASAM's offset :math:`\eta` (ignored unless ``adaptive``).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.SAM(rho=0.05), tz.m.SGD(momentum=0.9), tz.m.LR(0.1))
        opt.step(closure)

    References: Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization",
    ICLR 2021; Kwon et al., "ASAM: Adaptive Sharpness-Aware Minimization ...", ICML 2021.
    """

    needs_closure = True
    needs_raw_grad = True
    uniform_settings = True
    schema = {
        "rho": Setting(greater_than(0), "rho is the neighbourhood radius: SAM uses ~0.05, ASAM ~0.5."),
        "adaptive": FLAG,
        "eta": Setting(at_least(0), "eta is ASAM's offset, e.g. 0.01."),
    }

    def __init__(self, rho: float = 0.05, adaptive: bool = False, eta: float = 0.01) -> None:
        super().__init__({"rho": rho, "adaptive": adaptive, "eta": eta})

    def step(self, ctx: StepContext) -> None:
        s = ctx.settings(self)
        buckets = ctx.layout.buckets
        grad = ctx.update
        if s["adaptive"]:
            weight = ops.abs(ctx.params)
            for a, b in buckets:
                ops.add_(weight[a:b], s["eta"])
            tg = ops.mul(grad, weight)
            norm = dot_tensor(buckets, tg, tg).sqrt()
            ops.mul_(tg, weight)  # T^2 g
            direction = tg
        else:
            norm = dot_tensor(buckets, grad, grad).sqrt()
            direction = list(grad)
        factor = s["rho"] / (norm + 1e-12)  # a zero gradient gives a zero perturbation
        perturbation = scaled(buckets, direction, factor)
        probe = Probe(ctx)
        try:
            probe.move(perturbation, 1.0)
            ctx.evaluate(True, check=True)
        finally:
            probe.restore()
        sharp = ctx.get_grad()
        ctx.update = ops.clone(sharp)
