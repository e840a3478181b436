"""Closure calls and wall time of the closure-driven modules, beside torch.optim.LBFGS.

Each method minimises Rosenbrock (2-D, from (-1.5, 2)) and an L2-regularised logistic regression
(512 samples, 20 features), in float64, until the loss is within ``tol`` of the best loss known (found
first by a long torch.optim.LBFGS run), or its budget of closure calls or steps runs out.  Reported:
closure calls and steps (``step()`` calls) to reach the target, the final gap to the best loss, and the
wall time.  A closure call is any evaluation of the closure (with or without backward; for ExactNewton,
NewtonCG and ForwardGradient, the one graph-keeping call per step counts as one).

    python benchmarks/closure_modules.py            # the full table
    python benchmarks/closure_modules.py --quick    # a smoke run (fewer methods, smaller budgets)

torch.optim.LBFGS appears twice: with its defaults (20 iterations per ``step()``, each iteration reusing
the line search's last evaluation) and with ``max_iter=1`` (one iteration per ``step()``, as every
``tz.Modular`` step is).  ``tz.Modular`` evaluates the closure once at the start of every step, so a chain
doing one iteration per step costs one extra evaluation per iteration compared with torch's default.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torchzero as tz  # noqa: E402

Problem = tuple[Callable[[], list[torch.Tensor]], Callable[[list[torch.Tensor]], torch.Tensor]]


def rosenbrock() -> Problem:
    def init() -> list[torch.Tensor]:
        return [torch.tensor([-1.5, 2.0], dtype=torch.float64, requires_grad=True)]

    def loss(p: list[torch.Tensor]) -> torch.Tensor:
        x = p[0]
        return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2

    return init, loss


def logistic() -> Problem:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 20, generator=g, dtype=torch.float64)
    w_true = torch.randn(20, generator=g, dtype=torch.float64)
    y = ((X @ w_true + torch.randn(512, generator=g, dtype=torch.float64)) > 0).to(torch.float64)

    def init() -> list[torch.Tensor]:
        return [torch.zeros(20, dtype=torch.float64, requires_grad=True)]

    def loss(p: list[torch.Tensor]) -> torch.Tensor:
        w = p[0]
        return torch.nn.functional.binary_cross_entropy_with_logits(X @ w, y) + 5e-3 * (w @ w)

    return init, loss


PROBLEMS: dict[str, Problem] = {"rosenbrock": rosenbrock(), "logistic": logistic()}


class Counting:
    """A closure in the torchzero style (``backward`` argument) that counts its calls."""

    def __init__(self, params: list[torch.Tensor], loss: Callable[[list[torch.Tensor]], torch.Tensor]) -> None:
        self.params, self.loss, self.calls = params, loss, 0

    def __call__(self, backward: bool = True) -> torch.Tensor:
        self.calls += 1
        value = self.loss(self.params)
        if backward:
            for p in self.params:
                p.grad = None
            value.backward()
        return value


def torch_lbfgs(**kwargs: object) -> Callable[[list[torch.Tensor]], torch.optim.Optimizer]:
    return lambda p: torch.optim.LBFGS(p, line_search_fn="strong_wolfe", **kwargs)  # type: ignore[arg-type]


def chain(*make: Callable[[], tz.Module]) -> Callable[[list[torch.Tensor]], torch.optim.Optimizer]:
    return lambda p: tz.Modular(p, *(m() for m in make))


METHODS: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
    "torch LBFGS (defaults, 20 it/step)": torch_lbfgs(),
    "torch LBFGS (max_iter=1)": torch_lbfgs(max_iter=1, max_eval=26),
    "LBFGS + StrongWolfe": chain(tz.m.LBFGS, tz.m.StrongWolfe),
    "LBFGS + StrongWolfe (reuse_evaluation)": lambda p: tz.Modular(
        p, tz.m.LBFGS(), tz.m.StrongWolfe(), reuse_evaluation=True
    ),
    "LBFGS + Backtracking": chain(tz.m.LBFGS, tz.m.Backtracking),
    "LBFGS + ArmijoTrials(6)": chain(tz.m.LBFGS, lambda: tz.m.ArmijoTrials(n_trials=6)),
    "BFGS + StrongWolfe": chain(tz.m.BFGS, tz.m.StrongWolfe),
    "SR1 + StrongWolfe": chain(tz.m.SR1, tz.m.StrongWolfe),
    "ExactNewton + Backtracking": chain(tz.m.ExactNewton, tz.m.Backtracking),
    "NewtonCG + StrongWolfe": chain(tz.m.NewtonCG, tz.m.StrongWolfe),
    "StrongWolfe (steepest descent)": chain(lambda: tz.m.StrongWolfe(adaptive=True)),
    "Backtracking (steepest descent)": chain(lambda: tz.m.Backtracking(adaptive=True)),
    "FDM + LBFGS + Backtracking": chain(lambda: tz.m.FDM(eps=1e-6), tz.m.LBFGS, tz.m.Backtracking),
    "RandomizedFDM + LBFGS + Backtracking": chain(
        lambda: tz.m.RandomizedFDM(eps=1e-6, n_samples=4), tz.m.LBFGS, tz.m.Backtracking
    ),
    "RandomizedFDM + Adam + LR(1e-2)": chain(tz.m.RandomizedFDM, tz.m.Adam, lambda: tz.m.LR(1e-2)),
    "ForwardGradient + Adam + LR(1e-2)": chain(tz.m.ForwardGradient, tz.m.Adam, lambda: tz.m.LR(1e-2)),
    "SAM + LBFGS + Backtracking": chain(lambda: tz.m.SAM(rho=1e-4), tz.m.LBFGS, tz.m.Backtracking),
}
QUICK = [
    "torch LBFGS (defaults, 20 it/step)",
    "torch LBFGS (max_iter=1)",
    "LBFGS + StrongWolfe",
    "LBFGS + StrongWolfe (reuse_evaluation)",
    "NewtonCG + StrongWolfe",
    "RandomizedFDM + Adam + LR(1e-2)",
]


def best_loss(problem: Problem) -> float:
    init, loss = problem
    params = init()
    opt = torch.optim.LBFGS(params, line_search_fn="strong_wolfe", max_iter=500, tolerance_grad=0, tolerance_change=0)
    closure = Counting(params, loss)
    for _ in range(4):
        opt.step(closure)
    return float(loss(params).detach())


def run(
    make: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    problem: Problem,
    target: float,
    max_calls: int,
    max_steps: int,
) -> dict[str, object]:
    init, loss = problem
    params = init()
    opt = make(params)
    closure = Counting(params, loss)
    reached_calls = reached_steps = None
    steps = 0
    start = time.perf_counter()
    while closure.calls < max_calls and steps < max_steps:
        opt.step(closure)
        steps += 1
        if float(loss(params).detach()) <= target:
            reached_calls, reached_steps = closure.calls, steps
            break
    elapsed = time.perf_counter() - start
    return {
        "calls": reached_calls,
        "steps": reached_steps,
        "total_calls": closure.calls,
        "gap": float(loss(params).detach()) - (target - TOL),
        "time": elapsed,
    }


TOL = 1e-8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer methods, smaller budgets")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    max_calls, max_steps = (800, 400) if args.quick else (3000, 2000)
    names = QUICK if args.quick else list(METHODS)

    print(f"target: loss <= best + {TOL:g}; budget {max_calls} closure calls / {max_steps} steps; float64, CPU")
    for pname, problem in PROBLEMS.items():
        best = best_loss(problem)
        print(f"\n{pname} (best loss {best:.10g})")
        header = f"{'method':<40} {'calls':>7} {'steps':>6} {'final gap':>11} {'time [ms]':>10}"
        print(header)
        print("-" * len(header))
        for name in names:
            r = run(METHODS[name], problem, best + TOL, max_calls, max_steps)
            calls = "-" if r["calls"] is None else str(r["calls"])
            steps = "-" if r["steps"] is None else str(r["steps"])
            print(f"{name:<40} {calls:>7} {steps:>6} {r['gap']:>11.2e} {1000 * r['time']:>10.1f}")
    print("\ncalls/steps: to reach the target ('-': not reached within the budget); time: the whole run.")


if __name__ == "__main__":
    main()
