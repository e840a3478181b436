"""Line search for the strong Wolfe conditions: bracketing, then zoom by cubic interpolation."""

from __future__ import annotations

import math
from typing import Any

from ...core.schema import Rule, Setting, at_least, in_range
from ...foreach.reduce import max_abs
from .base import SEARCH_SCHEMA, Line, LineSearch


def cubic_minimizer(
    t1: float, f1: float, d1: float, t2: float, f2: float, d2: float, lo: float | None = None, hi: float | None = None
) -> float:
    """Minimizer of the cubic through (t1, f1, slope d1) and (t2, f2, slope d2), clipped to [lo, hi].

    Falls back to the middle of [lo, hi] when the cubic has no minimizer or a value is not finite.
    """
    if lo is None or hi is None:
        lo, hi = min(t1, t2), max(t1, t2)
    values = (t1, f1, d1, t2, f2, d2)
    if not all(math.isfinite(v) for v in values) or t1 == t2:
        return (lo + hi) / 2
    theta = d1 + d2 - 3 * (f1 - f2) / (t1 - t2)
    disc = theta * theta - d1 * d2
    if disc < 0:
        return (lo + hi) / 2
    root = math.sqrt(disc)
    if t1 <= t2:
        denom = d2 - d1 + 2 * root
        t = t2 - (t2 - t1) * ((d2 + root - theta) / denom) if denom != 0 else math.nan
    else:
        denom = d1 - d2 + 2 * root
        t = t1 - (t1 - t2) * ((d1 + root - theta) / denom) if denom != 0 else math.nan
    if not math.isfinite(t):
        return (lo + hi) / 2
    return min(max(t, lo), hi)


class StrongWolfe(LineSearch):
    r"""Line search for a step size that satisfies the strong Wolfe conditions.

    With :math:`\phi(t) = f(x_0 - t u)`, accept :math:`t` when

    .. math::
        \phi(t) \le \phi(0) + c_1 t \phi'(0) \quad\text{and}\quad |\phi'(t)| \le c_2 |\phi'(0)| .

    First a bracket is grown from ``init`` by cubic extrapolation (up to 10x per trial), then shrunk by
    cubic interpolation ("zoom"), moving trials away from the bracket ends when progress stalls.  This
    is the algorithm of ``torch.optim.LBFGS(line_search_fn="strong_wolfe")`` (minFunc's), so
    ``tz.Modular(p, tz.m.LBFGS(), tz.m.StrongWolfe())`` takes the same steps as
    ``torch.optim.LBFGS(p, max_iter=1, max_eval=max_evals + 1, line_search_fn="strong_wolfe")``.

    Each trial evaluates the closure with backward (the slope needs the gradient).  A NaN or infinite
    loss rejects the trial (it becomes the far end of the bracket).  The search stops after
    ``max_evals`` evaluations and then takes the lowest point found, or no step if nothing beat
    :math:`\phi(0)`.  Because trials need the gradient, this search is not for gradient-free chains: after
    ``FDM`` or ``RandomizedFDM`` use ``Backtracking`` or ``ArmijoTrials``.  When :math:`u` is not a descent direction (:math:`\phi'(0) > -\text{tol}`) no step is
    taken and the closure is not called.  Every decision uses the closure's return value: return an
    all-reduced loss in distributed runs.

    Full batch: for a fixed objective pass ``reuse_evaluation=True`` to :class:`~torchzero.Modular` to save
    about one closure call per step (the accepted trial is usually the last, and its loss and gradient start
    the next step); never with a closure that reads changing data, such as the next minibatch.

    Args:
        c1: sufficient-decrease constant.
        c2: curvature constant (0.9 for quasi-Newton directions, 0.1 for conjugate gradients).
        init: first trial step size.
        max_evals: most closure evaluations per step.
        tol: bracket-width tolerance (in parameter units) and the slope below which nothing is tried.
        adaptive: start from the previous accepted step times ``grow`` instead of ``init``.
        grow: growth of the previous step size when ``adaptive``.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.LBFGS(), tz.m.StrongWolfe())
        for _ in range(100):
            opt.step(closure)

    Reference: Nocedal & Wright, *Numerical Optimization* (2nd ed.), Algorithms 3.5 and 3.6;
    M. Schmidt, minFunc.
    """

    backward_trials = True
    schema = {
        **SEARCH_SCHEMA,
        "c2": Setting(in_range(0, 1, closed="neither"), "c2 is the curvature constant, e.g. 0.9."),
        "tol": Setting(at_least(0), "tol is the bracket-width tolerance, e.g. 1e-9."),
    }
    cross_checks = (Rule(("c1", "c2"), lambda c1, c2: c1 < c2, "0 < c1 < c2 < 1", "Typical values: c1=1e-4, c2=0.9."),)

    def __init__(
        self,
        c1: float = 1e-4,
        c2: float = 0.9,
        init: float = 1.0,
        max_evals: int = 25,
        tol: float = 1e-9,
        adaptive: bool = False,
        grow: float = 2.0,
    ) -> None:
        super().__init__(
            {"c1": c1, "c2": c2, "init": init, "max_evals": max_evals, "tol": tol, "adaptive": adaptive, "grow": grow}
        )

    def search(self, line: Line, loss0: float, slope0: float, settings: dict[str, Any]) -> float:
        c1, c2, tol = settings["c1"], settings["c2"], settings["tol"]
        if not slope0 < -tol:
            return 0.0
        max_more = int(settings["max_evals"]) - 1  # trials after the first
        # largest |u_i|: converts the bracket width into parameter units (one host sync per bucket)
        scale = max_abs(line.probe.buckets, line.direction)

        t = self.initial_step(settings)
        f, d = line(t, True)
        t_prev, f_prev, d_prev = 0.0, loss0, slope0
        more = 0
        done = False
        bracket: list[list[float]] = []  # [t, f, slope] of both ends
        while more < max_more:
            if f > loss0 + c1 * t * slope0 or (more > 1 and f >= f_prev):
                bracket = [[t_prev, f_prev, d_prev], [t, f, d]]
                break
            if abs(d) <= -c2 * slope0:
                bracket, done = [[t, f, d]], True
                break
            if d >= 0:
                bracket = [[t_prev, f_prev, d_prev], [t, f, d]]
                break
            # extrapolate: somewhere between a little and 10x beyond the current point
            t_next = cubic_minimizer(t_prev, f_prev, d_prev, t, f, d, t + 0.01 * (t - t_prev), 10 * t)
            t_prev, f_prev, d_prev = t, f, d
            t = t_next
            f, d = line(t, True)
            more += 1
        if more == max_more:
            bracket = [[0.0, loss0, slope0], [t, f, d]]

        low, high = (0, 1) if len(bracket) == 1 or bracket[0][1] <= bracket[-1][1] else (1, 0)
        stalled = False
        while not done and more < max_more:
            (ta, fa, da), (tb, fb, db) = bracket
            if abs(tb - ta) * scale < tol:
                break
            t = cubic_minimizer(ta, fa, da, tb, fb, db)
            lo, hi = min(ta, tb), max(ta, tb)
            margin = 0.1 * (hi - lo)
            if min(hi - t, t - lo) < margin:  # too close to an end of the bracket
                if stalled or t >= hi or t <= lo:
                    t = hi - margin if abs(t - hi) < abs(t - lo) else lo + margin
                    stalled = False
                else:
                    stalled = True
            else:
                stalled = False
            f, d = line(t, True)
            more += 1
            if f > loss0 + c1 * t * slope0 or f >= bracket[low][1]:
                bracket[high] = [t, f, d]
                low, high = (0, 1) if bracket[0][1] <= bracket[1][1] else (1, 0)
            else:
                if abs(d) <= -c2 * slope0:
                    done = True
                elif d * (bracket[high][0] - bracket[low][0]) >= 0:
                    bracket[high] = list(bracket[low])
                bracket[low] = [t, f, d]

        t, f, _ = bracket[low]
        if not (math.isfinite(f) and f <= loss0):
            return 0.0
        return t
