"""Convergence of the closure-driven chains on Rosenbrock, an ill-conditioned quadratic and a small MLP, in
fp32 and fp64 (LBFGS, BFGS/SR1 and the Newton modules have their own convergence tests beside their exactness
tests).  Bounds: the remaining gap to the minimum as a fraction of the starting gap, each about ten times what
the chain reaches on this machine, so a broken estimate or a search that stops early fails."""

from __future__ import annotations

import pytest
import torch

import torchzero as tz

from ._problems import DTYPES, Counter, mlp, quadratic, rosenbrock, rosenbrock_start

# name: (chain, steps, {problem: bound on the remaining relative gap})
CHAINS = {
    "fdm_lbfgs_wolfe": (lambda: [tz.m.FDM(), tz.m.LBFGS(), tz.m.StrongWolfe()], 40,
                        {"rosenbrock": 1e-6, "quadratic": 1e-5, "mlp": 0.1}),
    "rfdm_adam": (lambda: [tz.m.RandomizedFDM(n_samples=4, seed=0), tz.m.Adam(), tz.m.LR(0.05)], 300,
                  {"rosenbrock": 0.6, "quadratic": 1e-4, "mlp": 0.9}),
    "forward_gradient_adam": (lambda: [tz.m.ForwardGradient(seed=0), tz.m.Adam(), tz.m.LR(0.05)], 300,
                              {"rosenbrock": 0.8, "quadratic": 1e-2, "mlp": 0.7}),
    "sam_adam": (lambda: [tz.m.SAM(rho=0.01), tz.m.Adam(), tz.m.LR(0.05)], 300,
                 {"rosenbrock": 0.5, "quadratic": 1e-5, "mlp": 0.05}),
    "lbfgs_armijo_trials": (lambda: [tz.m.LBFGS(), tz.m.ArmijoTrials()], 60,
                            {"rosenbrock": 1e-6, "quadratic": 1e-5, "mlp": 0.1}),
}  # fmt: skip


def _problem(name: str, dtype: torch.dtype):
    """(params, loss function, minimum value)."""
    if name == "rosenbrock":
        x = rosenbrock_start(dtype)
        return [x], lambda: rosenbrock(x), 0.0
    if name == "quadratic":
        f, x, x_star, *_ = quadratic(dtype=dtype)
        return [x], lambda: f(x), float(f(x_star))
    model, X, Y = mlp(dtype)
    return list(model.parameters()), lambda: ((model(X) - Y) ** 2).mean(), 0.0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("problem", ["rosenbrock", "quadratic", "mlp"])
@pytest.mark.parametrize("name", list(CHAINS))
def test_converges(name, problem, dtype):
    chain, steps, bounds = CHAINS[name]
    params, f, f_min = _problem(problem, dtype)
    opt = tz.Modular(params, *chain())
    closure = Counter(f, params).closure
    with torch.no_grad():
        start = float(f()) - f_min
    for _ in range(steps):
        opt.step(closure)
    with torch.no_grad():
        gap = abs(float(f()) - f_min) / start
    assert all(torch.isfinite(p).all() for p in params)
    assert gap < bounds[problem], f"{name} on {problem} ({dtype}): remaining gap {gap:.2e} of the start"
