"""The line-search base class: trial points along the incoming update, an exact restore, one accepted step."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ...core.module import Module
from ...core.probe import Probe
from ...core.schema import FLAG, Setting, greater_than, in_range, integer
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import StepContext


class Line:
    r"""The restriction :math:`\phi(t) = f(x_0 - t\,u)` of the loss to the search line.

    ``phi(t)`` moves the parameters to the trial point and evaluates the closure; ``phi(t, True)`` also
    returns the slope :math:`\phi'(t) = -\langle \nabla f(x_0 - t u), u\rangle`.  A non-finite loss is
    returned as ``inf`` (so every acceptance test rejects it) with a slope of ``nan``.
    """

    def __init__(self, ctx: StepContext, probe: Probe, direction: list[Tensor]) -> None:
        self.ctx = ctx
        self.probe = probe
        self.direction = direction
        self.evals = 0
        self.last: tuple[float, bool, Tensor] | None = None
        """step size, whether it had a backward pass, and the loss of the latest trial"""

    def __call__(self, t: float, backward: bool = False) -> tuple[float, float]:
        self.probe.move(self.direction, -t)
        value = self.ctx.evaluate(backward)
        loss = float(value)  # the closure's value decides: all-reduce it when distributed
        self.evals += 1
        self.last = (t, backward, value)
        if not math.isfinite(loss):
            return math.inf, math.nan
        if not backward:
            return loss, math.nan
        return loss, -self.probe.dot(self.ctx.get_grad(), self.direction)


class LineSearch(Module):
    r"""Base class: choose a step size :math:`t` along the incoming update :math:`u`.

    The update is a descent step to subtract, so trial points are :math:`x_0 - t u`.  Trials move the
    parameters in place; when the search ends they are restored exactly (copied back from a saved
    :math:`x_0`), and the update becomes :math:`t\,u`, so the optimizer lands on the accepted point,
    never on the last trial.  A step size of 0 (no acceptable point, or :math:`u` is not a descent
    direction) leaves the parameters where they are.

    Every decision compares values returned by the closure.  In a distributed run, return the loss
    averaged over processes (the Lightning and Accelerate adapters do) and every process accepts the
    same step.  After the search ``ctx.get_grad()`` and ``.grad`` are again the gradient at :math:`x_0`.

    Full batch: for a fixed objective pass ``reuse_evaluation=True`` to :class:`~torchzero.Modular` to save
    about one closure call per step with a search whose trials compute the gradient (``StrongWolfe``); never
    with a closure that reads changing data, such as the next minibatch.

    With ``reuse_evaluation=True``, when the accepted step is the last trial and that trial had a backward
    pass, the parameters stay at the trial point (instead of being restored and moved there again, which may
    differ in the last bit) and the next ``step`` with the same closure object starts from that loss and
    gradient instead of calling the closure.  Searches whose trials are loss-only (``Backtracking``,
    ``ArmijoTrials``) leave no gradient to reuse and gain nothing.  It is off by default because a closure
    that reads the next minibatch through a variable is the same object at every step.

    Subclasses implement :meth:`search`.  They report the step size (``opt.metrics()`` and ``opt.last_info["step_size"]``)
    and keep the last accepted one in ``global_state["step_size"]`` (saved in ``state_dict``).

    Example (a search that tries 1, then 0.1, and keeps the better)::

        class TwoTrials(tz.m.LineSearch):
            def search(self, line, loss0, slope0, settings):
                losses = {t: line(t)[0] for t in (1.0, 0.1)}
                best = min(losses, key=losses.get)
                return best if losses[best] < loss0 else 0.0

        opt = tz.Modular(params, tz.m.LBFGS(), TwoTrials())
    """

    needs_closure = True
    needs_raw_grad = True  # the slope at x0 uses the gradient, not the (transformed) update
    modifies_update_inplace = False  # it searches along a copy of the update
    uniform_settings = True
    backward_trials = False
    """True when trials need the gradient (the slope); the gradient at x0 is then kept aside"""

    def step(self, ctx: StepContext) -> None:
        settings = ctx.settings(self)
        # the update may be the .grad tensors themselves, which a backward trial overwrites
        direction = ops.clone(ctx.update)
        grad0 = ctx.get_grad()
        if self.backward_trials:
            grad0 = ops.clone(grad0)
        loss0 = ctx.loss if ctx.loss is not None else ctx.evaluate(False, check=True)
        probe = Probe(ctx)
        line = Line(ctx, probe, direction)
        slope0 = -probe.dot(grad0, direction)
        t = 0.0
        try:
            t = self.search(line, float(loss0), slope0, settings)
        finally:
            # the parameters already sit at the accepted point and .grad holds its gradient: offer both to the sink,
            # which keeps them when the next step may reuse this evaluation (else they are put back)
            if not (_ends_at_last_trial(line, t) and ctx.keep_trial_point(line.last[2])):  # type: ignore[index]
                probe.restore()
                if self.backward_trials and line.evals:
                    _restore_grad(ctx, grad0)
        if t != 0.0:
            self.global_state["step_size"] = t
        for a, b in ctx.layout.buckets:
            if t == 0.0:
                ops.zero_(direction[a:b])  # not 0 * direction: a non-finite direction must not leak
            else:
                ops.mul_(direction[a:b], t)
        ctx.update = direction
        ctx.report(self, "step_size", t)
        ctx.report(self, "line_search_evals", line.evals)
        ctx.report(self, "accepted", float(t != 0.0))

    def search(self, line: Line, loss0: float, slope0: float, settings: dict[str, Any]) -> float:
        """Return the accepted step size (0.0 for no step) using ``line(t)`` evaluations."""
        raise NotImplementedError

    def initial_step(self, settings: dict[str, Any]) -> float:
        """``init``, or the last accepted step times ``grow`` when ``adaptive`` is set."""
        previous = self.global_state.get("step_size")
        if settings.get("adaptive") and previous:
            return previous * settings["grow"]
        return float(settings["init"])


def _ends_at_last_trial(line: Line, t: float) -> bool:
    last = line.last
    return t != 0.0 and last is not None and last[0] == t and last[1] and math.isfinite(float(last[2]))


def _restore_grad(ctx: StepContext, grad0: list[Tensor]) -> None:
    """Make ``ctx.get_grad()`` and ``.grad`` the gradient at the starting point again after backward trials."""
    ctx.set_grad(grad0)
    grads = ctx.layout.grads()
    for a, b in ctx.layout.buckets:
        pairs = [(g, g0) for g, g0 in zip(grads[a:b], grad0[a:b], strict=True) if g is not None]
        if pairs:
            ops.copy_([g for g, _ in pairs], [g0 for _, g0 in pairs])


SEARCH_SCHEMA = {
    "init": Setting(greater_than(0), "init must be positive: it is the first trial step size, e.g. 1.0."),
    "c1": Setting(in_range(0, 1, closed="neither"), "c1 is the sufficient-decrease constant; a typical value is 1e-4."),
    "max_evals": Setting(integer(1), "It is the most closure evaluations per step: a positive integer such as 20."),
    "adaptive": FLAG,
    "grow": Setting(greater_than(0), "grow multiplies the previous step size, e.g. 2.0."),
}
"""settings the line searches share"""
