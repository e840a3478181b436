"""ExactNewton and NewtonCG: written-out Newton steps, damping, saddles, CG truncation, the closure contract."""

from __future__ import annotations

import pytest
import torch

import torchzero as tz

from ._problems import (
    DTYPES,
    Counter,
    Record,
    assert_resumes_exactly,
    mlp,
    quadratic,
    rosenbrock,
    rosenbrock_start,
)


def _newton_update(module, f, x):
    rec = Record()
    opt = tz.Modular([x], module, rec, tz.m.LR(0.0))
    counter = Counter(lambda: f(x), [x])
    loss = opt.step(counter.closure)
    return rec.updates[0][0], rec.grads[0][0], counter, loss


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", [lambda: tz.m.ExactNewton(), lambda: tz.m.NewtonCG(max_iters=8, tol=1e-12)])
def test_one_newton_step_solves_a_quadratic(make, dtype):
    f, x, x_star, a, b = quadratic(n=6, cond=50, dtype=dtype)
    opt = tz.Modular([x], make(), tz.m.LR(1.0))
    counter = Counter(lambda: f(x), [x])
    opt.step(counter.closure)
    tol = {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-3, "atol": 1e-3}
    torch.testing.assert_close(x.detach(), x_star, **tol)
    assert counter.calls == 1 and counter.backwards == 0


def test_exact_newton_damping_matches_written_out_solve():
    f, x, _, a, b = quadratic(n=5)
    g = a @ x.detach() - b
    u, grad, *_ = _newton_update(tz.m.ExactNewton(damping=0.5), f, x)
    torch.testing.assert_close(u, torch.linalg.solve(a + 0.5 * torch.eye(5, dtype=torch.float64), g))
    torch.testing.assert_close(grad, g)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("damping", [7.0, 0.0])  # 7: H + 7I is positive definite (Cholesky); 0: eigh
def test_exact_newton_on_half_precision_solves_in_float32(dtype, damping):
    """bf16/fp16 have no Cholesky/eigh kernels: the solve runs in fp32 on the half-precision H and g."""
    x = torch.tensor([0.7, -0.4, 1.5], dtype=dtype, requires_grad=True)
    w = torch.tensor([2.0, -3.0, 1.0], dtype=dtype)
    f = lambda x: (w * x**2).sum() + x[0] * x[2]  # noqa: E731
    u, grad, *_ = _newton_update(tz.m.ExactNewton(damping=damping), f, x)
    assert u.dtype == dtype and grad.dtype == dtype
    xd = x.detach()
    g = (2 * w * xd + torch.stack([xd[2], torch.zeros((), dtype=dtype), xd[0]])).float()
    h = torch.diag(2 * w.float()) + torch.tensor([[0, 0, 1], [0, 0, 0], [1, 0, 0]], dtype=torch.float32)
    if damping:
        expected = torch.linalg.solve(h + damping * torch.eye(3), g)
    else:  # indefinite: |H|^-1 g
        evals, evecs = torch.linalg.eigh(h)
        expected = evecs @ ((evecs.T @ g) / evals.abs())
    torch.testing.assert_close(grad, g.to(dtype))
    torch.testing.assert_close(u, expected.to(dtype))


def test_exact_newton_on_a_saddle_uses_absolute_eigenvalues():
    x = torch.tensor([0.7, -0.4], dtype=torch.float64, requires_grad=True)
    u, grad, *_ = _newton_update(tz.m.ExactNewton(), lambda x: x[0] ** 2 - 3 * x[1] ** 2, x)
    # H = diag(2, -6): |H|^-1 g
    torch.testing.assert_close(u, grad / torch.tensor([2.0, 6.0], dtype=torch.float64))
    assert float(u @ grad) > 0


def test_newton_cg_one_iteration_is_the_exact_steepest_descent_step():
    f, x, _, a, b = quadratic(n=5)
    g = a @ x.detach() - b
    u, *_ = _newton_update(tz.m.NewtonCG(max_iters=1), f, x)
    torch.testing.assert_close(u, float(g @ g) / float(g @ a @ g) * g)


def test_newton_cg_returns_the_gradient_at_negative_curvature():
    x = torch.tensor([0.0, 0.5], dtype=torch.float64, requires_grad=True)  # g points along the -6 curvature
    u, grad, *_ = _newton_update(tz.m.NewtonCG(), lambda x: x[0] ** 2 - 3 * x[1] ** 2, x)
    torch.testing.assert_close(u, grad)


def test_newton_cg_uses_hessian_vector_products_only():
    """50,000 parameters: a dense Hessian would need 20 GB; three Hessian-vector products are cheap."""
    n = 50_000
    d = torch.linspace(1.0, 10.0, n, dtype=torch.float64)
    x = torch.ones(n, dtype=torch.float64, requires_grad=True)
    opt = tz.Modular([x], tz.m.NewtonCG(max_iters=3), tz.m.LR(1.0))
    before = opt.step(Counter(lambda: 0.5 * (d * x * x).sum(), [x]).closure)
    assert opt.last_info["cg_iters"] == 3
    assert float(0.5 * (d * x.detach() ** 2).sum()) < 0.2 * float(before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", [tz.m.ExactNewton, tz.m.NewtonCG])
def test_converge_on_rosenbrock_and_mlp(make, dtype):
    x = rosenbrock_start(dtype)
    opt = tz.Modular([x], make(), tz.m.Backtracking())
    c = Counter(lambda: rosenbrock(x), [x])
    for _ in range(25):
        opt.step(c.closure)
    torch.testing.assert_close(x.detach(), torch.ones(2, dtype=dtype), atol=1e-4, rtol=0)

    model, X, Y = mlp(dtype)
    extra = {"max_iters": 6} if make is tz.m.NewtonCG else {}
    opt = tz.Modular(model.parameters(), make(damping=1e-3, **extra), tz.m.Backtracking())
    cm = Counter(lambda: ((model(X) - Y) ** 2).mean(), list(model.parameters()))
    first = float(opt.step(cm.closure))
    for _ in range(15):
        last = float(opt.step(cm.closure))
    assert last < 0.2 * first


@pytest.mark.parametrize("make", [tz.m.ExactNewton, tz.m.NewtonCG])
def test_no_argument_closure_is_refused_before_any_change(make):
    x = torch.tensor([0.3, 0.2], dtype=torch.float64, requires_grad=True)
    opt = tz.Modular([x], make(), tz.m.LR(1.0))

    def closure():
        opt.zero_grad()
        loss = rosenbrock(x)
        loss.backward()
        return loss

    with pytest.raises(TypeError, match="backward argument"):
        opt.step(closure)
    assert torch.equal(x.detach(), torch.tensor([0.3, 0.2], dtype=torch.float64))


def test_detached_loss_is_explained():
    x = torch.tensor([0.3, 0.2], dtype=torch.float64, requires_grad=True)
    opt = tz.Modular([x], tz.m.ExactNewton(), tz.m.LR(1.0))
    with pytest.raises(RuntimeError, match="no autograd graph"):
        opt.step(lambda backward=True: rosenbrock(x).detach())


def test_state_and_settings_round_trip():
    f, x, *_ = quadratic(n=4)
    chain = lambda: [tz.m.NewtonCG(max_iters=2), tz.m.StrongWolfe(adaptive=True)]  # noqa: E731
    assert_resumes_exactly(f, x, chain, before=2, after=2)
