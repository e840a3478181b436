"""Forward gradient: directional derivatives by forward-mode AD, no backward pass."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.autograd.forward_ad as fwAD

from ...core.probe import Probe, raw_loss
from ...foreach import ops
from ...foreach.ops import add_scaled_
from ._common import SAMPLING_SCHEMA, GradApprox, draw, generators

if TYPE_CHECKING:
    from ...core.context import StepContext


class ForwardGradient(GradApprox):
    r"""Forward gradient: an unbiased gradient estimate from Jacobian-vector products.

    .. math::  \hat g = \frac{1}{n}\sum_{k=1}^n \langle \nabla f(x), v_k\rangle\, v_k

    Each :math:`\langle \nabla f, v\rangle` is exact, computed by forward-mode AD (``torch.autograd.forward_ad``,
    the machinery behind ``torch.func.jvp``) in the same forward pass as the loss: the parameters are made
    dual tensors with tangent :math:`v` (in place, inside a ``dual_level``), the closure is called as
    ``closure(False)``, and the loss's tangent is read.  No backward pass runs; ``n_samples`` closure calls
    per step.  The closure must take the ``backward`` argument and must return the loss without detaching
    it (forward-mode AD works under ``torch.no_grad()``).  The operations in the model must support forward
    AD (all common layers do).

    Directions are Gaussian or Rademacher, drawn from a generator seeded with ``seed`` and the step
    counter (saved in ``state_dict``), identical on every process.  Must be first in the chain; the
    estimate is the update and the gradient for later modules.

    Args:
        n_samples: number of directions per step.
        distribution: ``"gaussian"`` or ``"rademacher"``.
        seed: seed of the direction generator.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.ForwardGradient(), tz.m.SGD(momentum=0.9), tz.m.LR(1e-3))

    Reference: Baydin et al., "Gradients without Backpropagation" (2022).
    """

    schema = SAMPLING_SCHEMA
    supports_sharding = False
    sharding_note = "forward-mode AD (torch.autograd.forward_ad.make_dual) does not support DTensors"

    def __init__(self, n_samples: int = 1, distribution: str = "gaussian", seed: int = 0) -> None:
        super().__init__({"n_samples": n_samples, "distribution": distribution, "seed": seed})

    def step(self, ctx: StepContext) -> None:
        s = ctx.settings(self)
        n = s["n_samples"]
        params = ctx.params
        step = self.global_state.get("step", 0) + 1
        gens = generators(s["seed"], step, [p.device for p in params])
        estimate = ops.zeros_like(params)
        probe = Probe(ctx)
        try:
            for _ in range(n):
                v = [draw(p, s["distribution"], gens[p.device]) for p in params]
                with fwAD.dual_level():
                    with torch.no_grad():
                        for p, x0, t in zip(params, probe.x0, v, strict=True):
                            p.copy_(fwAD.make_dual(x0, t))
                    probe.moved = True
                    loss = raw_loss(ctx, "ForwardGradient", grad=False)
                    tangent = fwAD.unpack_dual(loss).tangent
                if tangent is None:
                    raise RuntimeError(
                        "ForwardGradient: the loss carries no tangent; the closure must compute it from the "
                        "parameters without detaching it."
                    )
                add_scaled_(ctx.layout.buckets, estimate, v, tangent.detach().reshape(()) / n)
        finally:
            probe.restore()
        self.global_state["step"] = step
        self.hand_on(ctx, estimate)
