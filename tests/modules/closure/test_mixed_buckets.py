"""Closure modules on parameters of two dtypes (two foreach buckets): reductions span both buckets."""

from __future__ import annotations

import pytest
import torch

import torchzero as tz

from ._problems import Counter

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

CHAINS = {
    "LBFGS+StrongWolfe": lambda: [tz.m.LBFGS(), tz.m.StrongWolfe()],
    "BFGS+Backtracking": lambda: [tz.m.BFGS(), tz.m.Backtracking()],
    "NewtonCG+StrongWolfe": lambda: [tz.m.NewtonCG(), tz.m.StrongWolfe()],
    "ExactNewton+LR": lambda: [tz.m.ExactNewton(), tz.m.LR(1.0)],
    "FDM+LBFGS+Backtracking": lambda: [tz.m.FDM(), tz.m.LBFGS(), tz.m.Backtracking()],
    "RandomizedFDM+LBFGS+ArmijoTrials": lambda: [tz.m.RandomizedFDM(n_samples=4), tz.m.LBFGS(), tz.m.ArmijoTrials()],
    "ForwardGradient+LBFGS+Backtracking": lambda: [
        tz.m.ForwardGradient(n_samples=4),
        tz.m.LBFGS(),
        tz.m.Backtracking(),
    ],
    "SAM+LBFGS+Backtracking": lambda: [tz.m.SAM(rho=1e-3), tz.m.LBFGS(), tz.m.Backtracking()],
}


@pytest.mark.parametrize("name", list(CHAINS))
def test_two_dtypes_in_one_optimizer(name):
    """A coupled quadratic over an fp32 and an fp64 tensor: the chain must treat them as one vector."""
    a = torch.tensor([1.0, -2.0], dtype=torch.float32, requires_grad=True)
    b = torch.tensor([0.5, 1.5, -1.0], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0.3, -0.2, 0.1, 0.4, -0.5], dtype=torch.float64)
    mix = torch.eye(5, dtype=torch.float64) + 0.3 * torch.ones(5, 5, dtype=torch.float64)

    def f():
        z = torch.cat([a.double(), b]) - target
        return z @ (mix @ z)

    opt = tz.Modular([a, b], *CHAINS[name]())
    assert len(opt._layout(lambda p: True).buckets) == 2
    c = Counter(f, [a, b])
    first = float(opt.step(c.closure))
    for _ in range(15):
        last = float(opt.step(c.closure))
    assert a.dtype == torch.float32 and b.dtype == torch.float64
    factor = 5e-2 if name.startswith(("Randomized", "Forward")) else 1e-3  # random directions: slower
    assert last < factor * first, f"{name}: {first} -> {last}"
