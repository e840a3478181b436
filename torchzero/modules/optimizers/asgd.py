"""ASGD: averaged stochastic gradient descent (Polyak & Juditsky, 1992), as ``torch.optim.ASGD``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...core.module import Transform
from ...core.schema import ALPHA, Setting, at_least, real
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext
    from ...core.modular import Modular


class ASGD(Transform):
    r"""The update rule of ``torch.optim.ASGD``, with its decaying step size and the averaged parameters.

    With :math:`\eta = \alpha \cdot \mathrm{lr}` (``alpha`` times the learning rate of the :class:`LR` after it)
    and :math:`t` the parameter's step count:

    .. math::
        \eta_t = \frac{\eta}{(1 + \lambda \eta (t-1))^{p}}, \qquad
        \theta \leftarrow \theta - \eta_t\,(g_t + \lambda \theta),\\
        \mu_t = \frac{1}{\max(1,\, t - 1 - t_0)}, \qquad
        \bar\theta_t = \bar\theta_{t-1} + \mu_t(\theta_t - \bar\theta_{t-1})

    The rule hands on :math:`\alpha (1 + \lambda \eta (t-1))^{-p}\,(g_t + \lambda \theta)`, and ``LR`` multiplies
    it by the learning rate, so ``tz.Modular(p, tz.m.ASGD(), tz.m.LR(1e-2))`` equals
    ``torch.optim.ASGD(p, lr=1e-2)``.  Since the schedule depends on the learning rate itself, the rule reads the
    lr of the ``LR`` that follows it (per param group; with no ``LR`` after it, :math:`\eta = \alpha`).  torch's
    ``weight_decay`` (an L2 term) is :class:`WeightDecay` placed before the rule.

    **Averaged parameters.**  :math:`\bar\theta` (torch's ``ax``) is kept in the optimizer's state, under
    ``opt.state[p][asgd.key]["ax"]``, and is updated after the parameters were written (the average of the
    parameters the whole chain produced).  ``asgd.averaged(opt)`` returns it for every parameter of ``opt``, in
    the order of ``opt.param_groups`` (the parameter itself where it has not been stepped yet); for evaluation,
    copy it into the model, e.g. ``for p, a in zip(params, asgd.averaged(opt)): p.data.copy_(a)``.  With the
    default ``t0=1e6`` the average is a copy of the parameters until step :math:`10^6`.

    Differences from torch: torch computes :math:`\eta_t` at the end of the previous step (so a scheduler's new lr
    reaches the schedule one step later) and stores :math:`\eta_t` and :math:`\mu_t` as float32 numbers; here
    they are computed in double precision from the current lr.  With a constant lr the trajectories agree to the
    last digits of float32 (float64 runs: to about 1e-8 relative).

    Args:
        lambd: decay term :math:`\lambda` (torch's ``lambd``).
        power: the power :math:`p` of the step-size decay (torch's ``alpha``).
        t0: the step :math:`t_0` after which averaging starts.
        alpha: step size multiplier (use :class:`LR` for the learning rate).

    Example::

        asgd = tz.m.ASGD(t0=100)
        opt = tz.Modular(model.parameters(), asgd, tz.m.LR(1e-2))  # == torch.optim.ASGD(lr=1e-2, t0=100)
        averaged = asgd.averaged(opt)  # the averaged parameters, in the order of opt.param_groups

    Reference: Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging", SIAM J. Control
    Optim. 30(4), 1992.
    """

    keeps_state = True
    exact_state = frozenset({"ax"})  # kept in the compute dtype whatever state_dtype says
    counts_steps = True
    fuses_lr = True  # fused with the LR after it, the rule writes theta (1 - lambda eta_t) - eta_t g as torch does
    modifies_update_inplace = False  # emits new tensors through the sink
    schema = {
        "lambd": Setting(at_least(0), "Use a small decay such as 1e-4 (0 disables it)."),
        "power": Setting(real(), "Use e.g. 0.75 (torch's alpha)."),
        "t0": Setting(at_least(0), "The step after which averaging starts, e.g. 1e6."),
        "alpha": ALPHA,
    }

    def __init__(self, lambd: float = 1e-4, power: float = 0.75, t0: float = 1e6, alpha: float = 1.0) -> None:
        super().__init__({"lambd": lambd, "power": power, "t0": t0, "alpha": alpha})
        self._pending: tuple[Any, list[tuple[int, int, float, list[Tensor]]]] | None = None

    def step(self, ctx: StepContext) -> None:
        # seg.scale is the learning rate of the LR after this rule, which the schedule needs: fused with it, the
        # rule applies it (one pass over the parameters); otherwise it hands on an lr-free update that LR scales
        segs, fused = ctx.segments_with_lr(self)
        for seg in segs:
            self._apply(ctx, seg, fused)

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        self._apply(ctx, seg, False)

    def _apply(self, ctx: StepContext, seg: Segment, fused: bool) -> None:
        s = seg.settings
        lambd, alpha, t = s["lambd"], s["alpha"], seg.step
        eta = alpha * seg.scale  # torch's lr
        step = alpha * (1 + lambd * eta * (t - 1)) ** (-s["power"])  # eta_t / lr
        if fused:
            step = step * seg.scale  # eta_t
        (ax,) = seg.state("ax")
        mu = 1.0 / max(1.0, t - 1 - s["t0"])
        if self._pending is None or self._pending[0] is not ctx:
            self._pending = (ctx, [])
        self._pending[1].append((seg.start, seg.stop, mu, ax))
        # step (g + lambda theta) as a decay term: written as theta (1 - lambda step) - step g (torch's two passes)
        seg.emit(seg.update, step, decay=lambd * step if lambd != 0 else 0.0)

    def after_step(self, ctx: StepContext) -> None:
        pending, self._pending = self._pending, None
        if pending is None or pending[0] is not ctx:
            return
        with torch.no_grad():  # the average never feeds back into the trajectory
            for start, stop, mu, ax in pending[1]:
                params = [p.detach() for p in ctx.params[start:stop]]
                if mu == 1:
                    ops.copy_(ax, params)
                else:
                    diff = ops.sub(params, ax)
                    ops.mul_(diff, mu)
                    ops.add_(ax, diff)

    def averaged(self, opt: Modular) -> list[Tensor]:
        """The averaged parameters (torch's ``ax``) of every parameter of ``opt``, in the order of its param groups.

        A parameter this module has not stepped yet is returned as it is (a detached view of it); a complex
        parameter's average is a complex view of its state.
        """
        out = []
        for group in opt.param_groups:
            for p in group["params"]:
                ms = opt.state[p].get(self.key) if p in opt.state else None
                ax = ms.get("ax") if ms else None
                if ax is None:
                    out.append(p.detach())
                else:  # complex parameters keep their state as real views
                    out.append(torch.view_as_complex(ax) if p.is_complex() and not ax.is_complex() else ax)
        return out
