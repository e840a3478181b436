"""Dense BFGS and SR1: written-out inverse updates, secant equation, SR1's exact inverse on quadratics."""

from __future__ import annotations

import copy

import pytest
import torch

import torchzero as tz

from ._problems import DTYPES, Counter, assert_resumes_exactly, mlp, quadratic, rosenbrock, rosenbrock_start


def _run_fixed_steps(module, f, x, steps, lr=0.02):
    """Drive the module with .grad and LR (no line search) and record x, g and the update of each step."""
    opt = tz.Modular([x], module, tz.m.LR(lr))
    xs, gs, us = [], [], []
    for _ in range(steps):
        x.grad = torch.autograd.grad(f(x), [x])[0]
        xs.append(x.detach().clone())
        gs.append(x.grad.clone())
        opt.step()
        us.append((xs[-1] - x.detach()) / lr)
    return opt, xs, gs, us


def _inverse_hessian_state(opt):
    module = opt.modules[0]
    p = opt.param_groups[0]["params"][0]
    return opt.state[p][module.key]["inverse_hessian"]


def test_bfgs_matches_written_out_product_form():
    f, x, *_ = quadratic(n=5, cond=20)
    _, xs, gs, us = _run_fixed_steps(tz.m.BFGS(), f, x, 6)
    n = 5
    eye = torch.eye(n, dtype=torch.float64)
    torch.testing.assert_close(us[0], gs[0] * min(1.0, 1.0 / float(gs[0].abs().sum())))
    h = eye.clone()
    for k in range(1, len(xs)):
        s, y = xs[k] - xs[k - 1], gs[k] - gs[k - 1]
        rho = 1.0 / float(y @ s)
        if k == 1:
            h = eye * float(s @ y) / float(y @ y)
        h = (eye - rho * torch.outer(s, y)) @ h @ (eye - rho * torch.outer(y, s)) + rho * torch.outer(s, s)
        torch.testing.assert_close(us[k], h @ gs[k], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bfgs_satisfies_the_secant_equation(dtype):
    f, x, *_ = quadratic(n=6, cond=50, dtype=dtype)
    opt, xs, gs, _ = _run_fixed_steps(tz.m.BFGS(), f, x, 4)
    # H after the last step was built from the pair (xs[-1] - xs[-2], gs[-1] - gs[-2])
    h = _inverse_hessian_state(opt)
    s, y = xs[-1] - xs[-2], gs[-1] - gs[-2]
    tol = {"rtol": 1e-8, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-3, "atol": 1e-5}
    torch.testing.assert_close(h @ y, s, **tol)


def test_sr1_recovers_the_exact_inverse_hessian_of_a_quadratic():
    """SR1 with n linearly independent steps on a quadratic gives H = A^-1 (Nocedal & Wright, Thm 6.1)."""
    f, x, _, a, _ = quadratic(n=5, cond=20)
    opt, *_ = _run_fixed_steps(tz.m.SR1(), f, x, 7, lr=0.05)
    torch.testing.assert_close(_inverse_hessian_state(opt), torch.linalg.inv(a), rtol=1e-6, atol=1e-8)


def test_sr1_matches_written_out_update():
    f, x, *_ = quadratic(n=4, cond=10)
    _, xs, gs, us = _run_fixed_steps(tz.m.SR1(), f, x, 5, lr=0.05)
    h = torch.eye(4, dtype=torch.float64)
    for k in range(1, len(xs)):
        s, y = xs[k] - xs[k - 1], gs[k] - gs[k - 1]
        v = s - h @ y
        h = h + torch.outer(v, v) / float(v @ y)
        u = h @ gs[k]
        expected = u if float(gs[k] @ u) > 0 else gs[k]
        torch.testing.assert_close(us[k], expected, rtol=1e-8, atol=1e-10)


def test_sr1_hands_on_the_gradient_when_its_direction_is_not_descent():
    g = torch.tensor([1.0, 2.0], dtype=torch.float64)
    module = tz.m.SR1()
    torch.testing.assert_close(module.direction(-torch.eye(2, dtype=torch.float64), g, {}), g)
    h = torch.diag(torch.tensor([2.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(module.direction(h, g, {}), h @ g)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", [tz.m.BFGS, tz.m.SR1])
def test_converge_on_rosenbrock_quadratic_and_mlp(make, dtype):
    x = rosenbrock_start(dtype)
    opt = tz.Modular([x], make(), tz.m.StrongWolfe())
    c = Counter(lambda: rosenbrock(x), [x])
    for _ in range(60):
        opt.step(c.closure)
    tol = 1e-6 if dtype == torch.float64 else 1e-3
    torch.testing.assert_close(x.detach(), torch.ones(2, dtype=dtype), atol=tol, rtol=0)

    f, q, q_star, *_ = quadratic(n=6, cond=100, dtype=dtype)
    opt = tz.Modular([q], make(), tz.m.StrongWolfe())
    c = Counter(lambda: f(q), [q])
    for _ in range(25):
        opt.step(c.closure)
    torch.testing.assert_close(q.detach(), q_star, atol=1e-4, rtol=0)

    model, X, Y = mlp(dtype)
    opt = tz.Modular(model.parameters(), make(), tz.m.Backtracking())
    cm = Counter(lambda: ((model(X) - Y) ** 2).mean(), list(model.parameters()))
    first = float(opt.step(cm.closure))
    for _ in range(25):
        last = float(opt.step(cm.closure))
    assert last < 0.2 * first


@pytest.mark.parametrize("make", [tz.m.BFGS, tz.m.SR1])
def test_state_round_trip_mid_run(make):
    f, x, *_ = quadratic(n=5)
    assert_resumes_exactly(f, x, lambda: [make(), tz.m.Backtracking()], before=3, after=3)


def test_parameter_count_change_is_explained():
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = tz.Modular([x], tz.m.BFGS(), tz.m.LR(0.1))
    x.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    y = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt2 = tz.Modular([y], tz.m.BFGS(), tz.m.LR(0.1))
    sd = opt.state_dict()
    opt2.load_state_dict(sd)
    y.grad = torch.ones(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="inverse Hessian"):
        opt2.step()
    assert torch.equal(y.detach(), torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("make", [lambda: tz.m.SR1(scale_first=False), lambda: tz.m.BFGS(scale_init=False)])
def test_reset_starts_again_from_the_identity(make):
    """After reset() the next steps equal a fresh module's: H is the identity again, not the old estimate."""
    f, x, *_ = quadratic(n=4, cond=10)
    y = x.detach().clone().requires_grad_()
    opt = tz.Modular([x], make(), tz.m.LR(0.05))
    cx, cy = Counter(lambda: f(x), [x]), Counter(lambda: f(y), [y])
    for _ in range(3):
        opt.step(cx.closure)
    opt.modules[0].reset()
    y.data.copy_(x.detach())
    fresh = tz.Modular([y], make(), tz.m.LR(0.05))
    for _ in range(3):
        opt.step(cx.closure)
        fresh.step(cy.closure)
    torch.testing.assert_close(x.detach(), y.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("missing", [0, 1])
def test_parameter_without_grad_names_that_parameter(missing):
    """A whole-vector method cannot skip a parameter: the error names it and how to freeze it, before any change."""
    ps = [
        torch.randn(3, dtype=torch.float64, requires_grad=True),
        torch.randn(2, dtype=torch.float64, requires_grad=True),
    ]
    opt = tz.Modular([{"params": [ps[0]]}, {"params": [ps[1]]}], tz.m.BFGS(), tz.m.LR(0.1))
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    ps[missing].grad = None
    ps[1 - missing].grad = torch.ones_like(ps[1 - missing])
    before, sd = [p.detach().clone() for p in ps], copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=rf"parameter 0 of group {missing} .* has no gradient.*requires_grad=False"):
        opt.step()
    for p, b in zip(ps, before, strict=True):
        assert torch.equal(p.detach(), b)
    after = opt.state_dict()
    assert after["param_groups"] == sd["param_groups"] and sorted(after["state"]) == sorted(sd["state"])
    for k, st in sd["state"].items():
        for name, t in st.items():
            if isinstance(t, torch.Tensor):
                assert torch.equal(after["state"][k][name], t), name


def test_new_param_group_is_explained():
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    opt = tz.Modular([x], tz.m.BFGS(), tz.m.LR(0.1))
    x.grad = torch.ones_like(x)
    opt.step()
    y = torch.randn(2, dtype=torch.float64, requires_grad=True)
    opt.add_param_group({"params": [y]})
    y.grad = torch.ones_like(y)
    with pytest.raises(ValueError, match="parameters changed since the state was made"):
        opt.step()
