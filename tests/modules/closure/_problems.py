"""Small test problems and counting closures shared by the closure-module tests."""

from __future__ import annotations

import io
from collections.abc import Callable

import torch
from torch import Tensor

import torchzero as tz


def rosenbrock(x: Tensor) -> Tensor:
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def rosenbrock_start(dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.tensor([-1.5, 2.0], dtype=dtype, requires_grad=True)


def quadratic(n: int = 8, cond: float = 100.0, dtype: torch.dtype = torch.float64, seed: int = 0):
    """An ill-conditioned quadratic ``0.5 x'Ax - b'x`` (eigenvalues 1..cond), its start and its minimum."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    a = (q * eig) @ q.T
    b = torch.randn(n, generator=g, dtype=torch.float64)
    x_star = torch.linalg.solve(a, b)
    a, b = a.to(dtype), b.to(dtype)

    def f(x: Tensor) -> Tensor:
        return 0.5 * x @ (a @ x) - b @ x

    start = torch.randn(n, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    return f, start, x_star.to(dtype), a, b


def logistic_data(n: int = 64, d: int = 5, dtype: torch.dtype = torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=dtype)
    w = torch.randn(d, generator=g, dtype=dtype)
    y = ((X @ w + 0.5 * torch.randn(n, generator=g, dtype=dtype)) > 0).to(dtype)
    return X, y


def logistic_loss(w: Tensor, X: Tensor, y: Tensor, l2: float = 1e-2) -> Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(X @ w, y) + 0.5 * l2 * (w @ w)


def mlp(dtype: torch.dtype = torch.float64, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(48, 4, generator=g, dtype=torch.float64).to(dtype)
    Y = torch.sin(X.sum(1, keepdim=True)).to(dtype)
    return model, X, Y


class Counter:
    """A closure in either style that counts its calls (and backward passes) and records trial points."""

    def __init__(
        self,
        loss_fn: Callable[[], Tensor],
        params: list[Tensor],
        style: str = "backward",
        record: bool = False,
    ) -> None:
        self.loss_fn = loss_fn
        self.params = params
        self.calls = 0
        self.backwards = 0
        self.points: list[list[Tensor]] = []
        self.record = record
        self.style = style

    def _zero(self) -> None:
        for p in self.params:
            p.grad = None

    def _run(self, backward: bool) -> Tensor:
        self.calls += 1
        if self.record:
            self.points.append([p.detach().clone() for p in self.params])
        loss = self.loss_fn()
        if backward:
            self.backwards += 1
            self._zero()
            loss.backward()
        return loss

    @property
    def closure(self) -> Callable[..., Tensor]:
        if self.style == "backward":

            def closure(backward: bool = True) -> Tensor:
                return self._run(backward)

            return closure

        def closure_noarg() -> Tensor:
            return self._run(True)

        return closure_noarg


def roundtrip(opt: torch.optim.Optimizer, fresh: torch.optim.Optimizer) -> None:
    """Save ``opt`` with torch.save, load with ``weights_only=True`` into ``fresh``."""
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))


def assert_resumes_exactly(
    f: Callable[[Tensor], Tensor], x: Tensor, chain: Callable[[], list[tz.Module]], before: int, after: int
) -> None:
    """``before`` steps on ``f(x)``, a weights-only save/load into a fresh optimizer on a copy of ``x``, then
    ``after`` steps of both: the resumed run must equal the uninterrupted one bit for bit."""
    y = x.detach().clone().requires_grad_()
    opt, opt2 = tz.Modular([x], *chain()), tz.Modular([y], *chain())
    cx, cy = Counter(lambda: f(x), [x]), Counter(lambda: f(y), [y])
    for _ in range(before):
        opt.step(cx.closure)
    roundtrip(opt, opt2)
    y.data.copy_(x.detach())
    for _ in range(after):
        opt.step(cx.closure)
        opt2.step(cy.closure)
    assert torch.equal(x, y)


def grad_at(loss_fn: Callable[[], Tensor], params: list[Tensor]) -> list[Tensor]:
    with torch.enable_grad():
        return list(torch.autograd.grad(loss_fn(), params))


class Record(tz.Module):
    """Test helper: remembers ``ctx.get_grad()`` and ``ctx.update`` as seen at its place in the chain."""

    def __init__(self) -> None:
        super().__init__()
        self.grads: list[list[Tensor]] = []
        self.updates: list[list[Tensor]] = []

    def step(self, ctx) -> None:  # type: ignore[no-untyped-def]
        self.grads.append([g.clone() for g in ctx.get_grad()])
        self.updates.append([u.clone() for u in ctx.update])


class Negate(tz.Module):
    """Test helper: flips the update (turns a descent direction into an ascent one)."""

    def step(self, ctx) -> None:  # type: ignore[no-untyped-def]
        ctx.update = [-u for u in ctx.update]


DTYPES = [torch.float32, torch.float64]
