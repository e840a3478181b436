"""Armijo line searches: backtracking, and a variant that always tries a fixed set of step sizes."""

from __future__ import annotations

from typing import Any

from ...core.schema import Setting, in_range
from .base import SEARCH_SCHEMA, Line, LineSearch

BETA = Setting(in_range(0, 1, closed="neither"), "beta is the shrink factor between trials; a typical value is 0.5.")


class Backtracking(LineSearch):
    r"""Backtracking line search with the Armijo (sufficient decrease) condition.

    Starting from :math:`t_0`, try :math:`t = t_0, \beta t_0, \beta^2 t_0, \dots` and accept the first

    .. math::  f(x_0 - t u) \le f(x_0) - c_1\, t\, \langle g, u\rangle .

    Trials only evaluate the loss (``closure(False)``), so ``.grad`` is left as it was.  A trial whose
    loss is NaN or infinite is rejected.  If ``max_evals`` trials fail, or :math:`u` is not a descent
    direction (:math:`\langle g,u\rangle \le 0`), the step size is 0 and the parameters stay put.
    The decision uses the closure's return value: return an all-reduced loss in distributed runs.

    Full batch: ``reuse_evaluation=True`` saves nothing here, since the trials are loss-only and the next step
    needs a gradient; for a fixed objective use ``StrongWolfe`` and pass ``reuse_evaluation=True`` to
    :class:`~torchzero.Modular` to save about one closure call per step, never with a closure that reads
    changing data.

    Args:
        init: first trial step size :math:`t_0`.
        beta: shrink factor between trials.
        c1: sufficient-decrease constant.
        max_evals: most closure evaluations per step.
        adaptive: start from the previous accepted step times ``grow`` instead of ``init``.
        grow: growth of the previous step size when ``adaptive``.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.LBFGS(), tz.m.Backtracking())
        opt.step(closure)

    Reference: Armijo, "Minimization of functions having Lipschitz continuous first partial
    derivatives", Pacific J. Math. 16 (1966); Nocedal & Wright, *Numerical Optimization*, Alg. 3.1.
    """

    schema = {**SEARCH_SCHEMA, "beta": BETA}

    def __init__(
        self,
        init: float = 1.0,
        beta: float = 0.5,
        c1: float = 1e-4,
        max_evals: int = 20,
        adaptive: bool = False,
        grow: float = 2.0,
    ) -> None:
        super().__init__(
            {"init": init, "beta": beta, "c1": c1, "max_evals": max_evals, "adaptive": adaptive, "grow": grow}
        )

    def search(self, line: Line, loss0: float, slope0: float, settings: dict[str, Any]) -> float:
        if not slope0 < 0:
            return 0.0
        t = self.initial_step(settings)
        for _ in range(int(settings["max_evals"])):
            loss, _ = line(t)
            if loss <= loss0 + settings["c1"] * t * slope0:
                return t
            t *= settings["beta"]
        return 0.0


class ArmijoTrials(LineSearch):
    r"""Armijo line search over a fixed set of trial step sizes, all of them evaluated every step.

    Tries :math:`t_i = t_0 \beta^i` for :math:`i = 0, \dots, n-1` and accepts the largest one that
    satisfies :math:`f(x_0 - t u) \le f(x_0) - c_1 t \langle g, u\rangle`; if none does, the trial with the
    lowest loss if it is below :math:`f(x_0)`, else no step.  Every step costs exactly ``n_trials``
    loss-only closure calls, which keeps the cost predictable (and the same on every process).

    Args:
        n_trials: number of trial step sizes.
        init: largest trial step size :math:`t_0`.
        beta: ratio between consecutive trials.
        c1: sufficient-decrease constant.

    Example::

        opt = tz.Modular(params, tz.m.SGD(momentum=0.9), tz.m.ArmijoTrials(n_trials=6))

    Reference: Armijo (1966), as for :class:`Backtracking`; the fixed grid of trials is this library's variant.
    """

    schema = {
        "n_trials": Setting(SEARCH_SCHEMA["max_evals"].constraint, "It is the number of trial step sizes, e.g. 8."),
        "init": SEARCH_SCHEMA["init"],
        "beta": BETA,
        "c1": SEARCH_SCHEMA["c1"],
    }

    def __init__(self, n_trials: int = 8, init: float = 1.0, beta: float = 0.5, c1: float = 1e-4) -> None:
        super().__init__({"n_trials": n_trials, "init": init, "beta": beta, "c1": c1})

    def search(self, line: Line, loss0: float, slope0: float, settings: dict[str, Any]) -> float:
        steps = [settings["init"] * settings["beta"] ** i for i in range(int(settings["n_trials"]))]
        losses = [line(t)[0] for t in steps]
        if slope0 < 0:
            for t, loss in zip(steps, losses, strict=True):
                if loss <= loss0 + settings["c1"] * t * slope0:
                    return t
        best = min(range(len(steps)), key=losses.__getitem__)
        return steps[best] if losses[best] < loss0 else 0.0
