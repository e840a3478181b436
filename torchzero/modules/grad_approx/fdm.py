"""Finite-difference gradient estimates: coordinate-wise (FDM) and along random directions (RandomizedFDM)."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from torch import Tensor

from ...core.probe import Probe
from ...core.schema import Setting, greater_than, one_of
from ...foreach import ops, shard
from ...foreach.ops import add_scaled_
from ._common import SAMPLING_SCHEMA, GradApprox, draw, generators

if TYPE_CHECKING:
    from ...core.context import StepContext

FORMULAS = ("forward", "backward", "central")

FD_SCHEMA = {
    "eps": Setting(greater_than(0), "eps is the finite-difference step: typical 1e-3 (fp32), 1e-6 (fp64)."),
    "formula": Setting(one_of(*FORMULAS), "'central' is the most accurate, 'forward' the cheapest."),
}


def _difference(formula: str, eps: float, f0: Tensor, plus: Tensor | None, minus: Tensor | None) -> Tensor:
    if formula == "forward":
        assert plus is not None
        return (plus - f0) / eps
    if formula == "backward":
        assert minus is not None
        return (f0 - minus) / eps
    assert plus is not None and minus is not None
    return (plus - minus) / (2 * eps)


class FDM(GradApprox):
    r"""Gradient by finite differences, one coordinate at a time.

    .. math::
        \hat g_i = \frac{f(x + h e_i) - f(x)}{h} \;\text{(forward)},\quad
        \frac{f(x) - f(x - h e_i)}{h} \;\text{(backward)},\quad
        \frac{f(x + h e_i) - f(x - h e_i)}{2h} \;\text{(central)}

    Calls ``closure(False)`` only: ``1 + n`` times (forward, backward) or ``1 + 2n`` times (central) for
    ``n`` parameters, so it is for small problems.  The first call is at :math:`x`; it is the step's
    loss.  Must be first in the chain; the estimate is both the update and the gradient seen by later
    modules.  Each coordinate is put back exactly (copied, not subtracted).  A non-finite loss raises
    :class:`~torchzero.NonFiniteLossError` with the parameters restored.  Loss values decide everything,
    so an all-reduced loss keeps distributed processes identical.

    Args:
        eps: the step :math:`h` (``eps`` here is unrelated to Adam's ``eps``; scope per-group values
            with ``set_params``).
        formula: ``"forward"``, ``"backward"`` or ``"central"``.

    Example::

        opt = tz.Modular(params, tz.m.FDM(eps=1e-4), tz.m.LBFGS(), tz.m.Backtracking())

    Reference: Nocedal & Wright, *Numerical Optimization* (2nd ed.), Section 8.1.
    """

    schema = FD_SCHEMA

    def __init__(self, eps: float = 1e-3, formula: str = "central") -> None:
        super().__init__({"eps": eps, "formula": formula})

    def step(self, ctx: StepContext) -> None:
        s = ctx.settings(self)
        eps, formula = s["eps"], s["formula"]
        f0 = ctx.evaluate(False, check=True)
        estimate = ops.zeros_like(ctx.params)
        for p, g in zip(ctx.params, estimate, strict=True):
            # every rank walks every element of the whole tensor (each evaluation is collective under FSDP2); the
            # rank whose shard holds it moves it, the others only evaluate (shard.local_index is None there)
            mine, out = shard.local(p), shard.local(g)
            for idx in itertools.product(*map(range, p.shape)):
                at = shard.local_index(p, idx)
                x = mine[at] if at is not None else mine.new_zeros(())
                original = x.clone()
                plus = minus = None
                try:
                    if formula != "backward":
                        x.add_(eps)
                        plus = ctx.evaluate(False, check=True)
                        x.copy_(original)
                    if formula != "forward":
                        x.sub_(eps)
                        minus = ctx.evaluate(False, check=True)
                finally:
                    x.copy_(original)
                if at is not None:
                    out[at] = _difference(formula, eps, f0, plus, minus)
        self.hand_on(ctx, estimate)


class RandomizedFDM(GradApprox):
    r"""Gradient estimate from finite differences along random directions (SPSA and relatives).

    .. math::
        \hat g = \frac{1}{n} \sum_{k=1}^{n} \frac{f(x + h v_k) - f(x - h v_k)}{2h}\, v_k

    (central; ``forward`` and ``backward`` use one side and :math:`f(x)`), with :math:`v_k` Rademacher
    (:math:`\pm 1` entries; with the central formula this is SPSA) or standard Gaussian, so that
    :math:`\mathbb E[\hat g] \approx \nabla f(x)`.  Calls ``closure(False)`` only: ``1 + n`` times
    (forward, backward) or ``1 + 2n`` times (central); the first call, at :math:`x`, gives the step's
    loss.  No backward pass ever runs.

    Directions come from a ``torch.Generator`` seeded with ``seed`` and the module's step counter (saved
    in ``state_dict``), never from the global RNG: every process of a distributed run draws the same
    directions, and the only thing that must agree across processes is the loss the closure returns
    (return an all-reduced loss).  Must be first in the chain; the estimate is both the update and the
    gradient seen by later modules.

    Args:
        eps: the finite-difference step :math:`h`.  ``Adam`` also has an ``eps``: a per-group ``eps`` in
            the optimizer's groups reaches both, so give this one its own groups with ``set_params``.
        n_samples: number of directions averaged per step.
        distribution: ``"rademacher"``, ``"spsa"`` (the same) or ``"gaussian"``.
        formula: ``"central"``, ``"forward"`` or ``"backward"``.
        seed: seed of the direction generator.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.RandomizedFDM(), tz.m.Adam(), tz.m.LR(1e-2))
        def closure(backward=True):  # backward is never requested
            return loss_fn(model(x), y)
        opt.step(closure)

    Reference: Spall, "Multivariate stochastic approximation using a simultaneous perturbation gradient
    approximation", IEEE TAC 37 (1992); Nesterov & Spokoiny, "Random gradient-free minimization of
    convex functions" (2017).
    """

    schema = {**FD_SCHEMA, **SAMPLING_SCHEMA}

    def __init__(
        self,
        eps: float = 1e-3,
        n_samples: int = 1,
        distribution: str = "rademacher",
        formula: str = "central",
        seed: int = 0,
    ) -> None:
        super().__init__(
            {"eps": eps, "n_samples": n_samples, "distribution": distribution, "formula": formula, "seed": seed}
        )

    def step(self, ctx: StepContext) -> None:
        s = ctx.settings(self)
        eps, formula, n = s["eps"], s["formula"], s["n_samples"]
        step = self.global_state.get("step", 0) + 1
        params = ctx.params
        gens = generators(s["seed"], step, [p.device for p in params])
        f0 = ctx.evaluate(False, check=True)
        estimate = ops.zeros_like(params)
        probe = Probe(ctx)
        try:
            for _ in range(n):
                v = [draw(p, s["distribution"], gens[p.device]) for p in params]
                plus = minus = None
                if formula != "backward":
                    probe.move(v, eps)
                    plus = ctx.evaluate(False, check=True)
                if formula != "forward":
                    probe.move(v, -eps)
                    minus = ctx.evaluate(False, check=True)
                add_scaled_(ctx.layout.buckets, estimate, v, _difference(formula, eps, f0, plus, minus) / n)
        finally:
            probe.restore()
        self.global_state["step"] = step
        self.hand_on(ctx, estimate)
