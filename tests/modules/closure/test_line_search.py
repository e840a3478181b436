"""Line searches: exact against torch's strong-Wolfe search and written-out Armijo loops; safety rules."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.lbfgs import _cubic_interpolate, _strong_wolfe

import torchzero as tz
from torchzero.modules.line_search.strong_wolfe import cubic_minimizer

from ._problems import DTYPES, Counter, Negate, Record, grad_at, quadratic, rosenbrock, rosenbrock_start, roundtrip


def _one_step(module, x, f, style="backward", record=False):
    opt = tz.Modular([x], module)
    counter = Counter(lambda: f(x), [x], style=style, record=record)
    loss = opt.step(counter.closure)
    return opt, counter, loss


# ----------------------------------------------------------------------------------- StrongWolfe
@pytest.mark.parametrize(
    "t1,f1,d1,t2,f2,d2,bounds",
    [
        (0.0, 1.0, -2.0, 1.0, 0.5, 1.0, None),
        (1.0, 0.3, 0.5, 0.0, 1.0, -1.0, None),
        (0.0, 1.0, -1.0, 1.0, 0.2, -0.5, (1.01, 10.0)),
        (0.0, 1.0, -1.0, 2.0, 5.0, -3.0, None),  # no real minimizer: middle of the bounds
    ],
)
def test_cubic_minimizer_matches_torch(t1, f1, d1, t2, f2, d2, bounds):
    tt = [torch.tensor(v, dtype=torch.float64) for v in (f1, d1, f2, d2)]
    expected = float(_cubic_interpolate(t1, tt[0], tt[1], t2, tt[2], tt[3], bounds=bounds))
    lo, hi = bounds if bounds else (None, None)
    assert cubic_minimizer(t1, f1, d1, t2, f2, d2, lo, hi) == pytest.approx(expected, rel=1e-12, abs=1e-14)


def test_cubic_minimizer_non_finite_bisects():
    assert cubic_minimizer(0.0, 1.0, -1.0, 2.0, math.inf, math.nan) == 1.0


@pytest.mark.parametrize("init", [1e-3, 0.05, 1.0, 30.0])  # extrapolation, zoom, both
@pytest.mark.parametrize("start", [(-1.5, 2.0), (0.3, -0.4), (1.2, 1.0)])
def test_strong_wolfe_matches_torch_search(init, start):
    """Steepest descent + StrongWolfe takes torch's step size with torch's number of evaluations."""
    x = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    g = grad_at(lambda: rosenbrock(x), [x])[0]
    f0 = float(rosenbrock(x.detach()))
    x0 = x.detach().clone()

    def obj(_x, t, d):
        with torch.enable_grad():
            y = (x0 + t * d).requires_grad_()
            loss = rosenbrock(y)
            (gy,) = torch.autograd.grad(loss, y)
        return float(loss.detach()), gy

    _, _, t_ref, evals_ref = _strong_wolfe(obj, x0, init, -g, f0, g, g.dot(-g), max_ls=24)

    opt, counter, _ = _one_step(tz.m.StrongWolfe(init=init, max_evals=25), x, rosenbrock)
    assert opt.last_info["step_size"] == pytest.approx(float(t_ref), rel=1e-9)
    assert opt.last_info["line_search_evals"] == evals_ref
    assert counter.calls == evals_ref + 1  # plus the optimizer's own evaluation at x0
    torch.testing.assert_close(x.detach(), x0 - opt.last_info["step_size"] * g)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strong_wolfe_conditions_hold(dtype):
    f, x, *_ = quadratic(dtype=dtype)
    g = grad_at(lambda: f(x), [x])[0]
    x0 = x.detach().clone()
    opt, _, _ = _one_step(tz.m.StrongWolfe(c1=1e-4, c2=0.5, init=1e-3), x, f)
    t = opt.last_info["step_size"]
    assert t > 0
    xt = (x0 - t * g).requires_grad_()
    gt = grad_at(lambda: f(xt), [xt])[0]
    slope0 = float(-(g @ g))
    assert float(f(xt.detach())) <= float(f(x0)) + 1e-4 * t * slope0 + 1e-6
    assert abs(float(-(gt @ g))) <= 0.5 * abs(slope0) * (1 + 1e-4)


def test_strong_wolfe_params_end_at_accepted_point_not_last_trial():
    # from this start the zoom phase ends on a trial that is not the accepted one
    x = torch.tensor([0.3, -0.4], dtype=torch.float64, requires_grad=True)
    x0 = x.detach().clone()
    g = grad_at(lambda: rosenbrock(x), [x])[0]
    opt, counter, _ = _one_step(tz.m.StrongWolfe(init=5.0), x, rosenbrock, record=True)
    t = opt.last_info["step_size"]
    accepted = x0 - t * g
    torch.testing.assert_close(x.detach(), accepted, rtol=0, atol=1e-15)
    assert not torch.equal(counter.points[-1][0], x.detach()), "test setup: the last trial should not be accepted"


def test_strong_wolfe_restores_gradient_for_next_module():
    x = rosenbrock_start()
    g0 = grad_at(lambda: rosenbrock(x), [x])[0]
    rec = Record()
    opt = tz.Modular([x], tz.m.StrongWolfe(init=30.0), rec)
    counter = Counter(lambda: rosenbrock(x), [x])
    opt.step(counter.closure)
    assert counter.backwards > 1
    torch.testing.assert_close(rec.grads[0][0], g0)
    torch.testing.assert_close(x.grad, g0)  # .grad too, not the last trial's gradient


# ----------------------------------------------------------------------------------- Armijo searches
def _armijo_reference(f, x0, g, init, beta, c1, max_evals):
    f0, slope = float(f(x0)), float(-(g @ g))
    t = init
    for k in range(max_evals):
        if float(f(x0 - t * g)) <= f0 + c1 * t * slope:
            return t, k + 1
        t *= beta
    return 0.0, max_evals


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("init", [1.0, 0.01, 50.0])
def test_backtracking_matches_written_out_loop(dtype, init):
    f, x, *_ = quadratic(dtype=dtype, cond=50)
    x0 = x.detach().clone()
    g = grad_at(lambda: f(x), [x])[0]
    t_ref, evals = _armijo_reference(f, x0, g, init, 0.5, 1e-4, 20)
    opt, counter, _ = _one_step(tz.m.Backtracking(init=init), x, f)
    assert opt.last_info["step_size"] == t_ref
    assert counter.calls == evals + 1 and counter.backwards == 1
    torch.testing.assert_close(x.detach(), x0 - t_ref * g)


def test_backtracking_adaptive_starts_from_previous_step_and_round_trips():
    f, x, *_ = quadratic(cond=50)
    y = x.detach().clone().requires_grad_()
    opt = tz.Modular([x], tz.m.Backtracking(init=64.0, adaptive=True, grow=2.0))
    c = Counter(lambda: f(x), [x])
    opt.step(c.closure)
    t1 = opt.last_info["step_size"]
    opt.step(c.closure)
    ref = tz.Modular([y], tz.m.Backtracking(init=64.0, adaptive=True, grow=2.0))
    roundtrip(opt, ref)
    y.data.copy_(x.detach())
    assert ref.modules[0].global_state["step_size"] == opt.modules[0].global_state["step_size"]
    cy = Counter(lambda: f(y), [y])
    for _ in range(3):
        opt.step(c.closure)
        ref.step(cy.closure)
        assert opt.last_info["step_size"] == ref.last_info["step_size"]
    torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert t1 <= 64.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_armijo_trials_evaluates_every_trial_and_takes_largest_armijo(dtype):
    f, x, *_ = quadratic(dtype=dtype, cond=50)
    x0 = x.detach().clone()
    g = grad_at(lambda: f(x), [x])[0]
    f0, slope = float(f(x0)), float(-(g @ g))
    steps = [0.5 * 0.5**i for i in range(6)]
    ok = [t for t in steps if float(f(x0 - t * g)) <= f0 + 1e-4 * t * slope]
    opt, counter, _ = _one_step(tz.m.ArmijoTrials(n_trials=6, init=0.5), x, f)
    assert counter.calls == 1 + 6
    assert ok and ok[0] != steps[-1], "test setup: an intermediate trial should be accepted"
    assert opt.last_info["step_size"] == ok[0]
    torch.testing.assert_close(x.detach(), x0 - ok[0] * g)


# ----------------------------------------------------------------------------------- safety rules
SEARCHES = [
    pytest.param(lambda: tz.m.StrongWolfe(init=100.0, max_evals=10), id="StrongWolfe"),
    pytest.param(lambda: tz.m.Backtracking(init=100.0, max_evals=10), id="Backtracking"),
    pytest.param(lambda: tz.m.ArmijoTrials(n_trials=10, init=100.0), id="ArmijoTrials"),
]


@pytest.mark.parametrize("bad", [math.nan, -math.inf, math.inf], ids=["nan", "-inf", "inf"])
@pytest.mark.parametrize("make", SEARCHES)
def test_non_finite_trials_are_rejected(make, bad):
    """Far trials return NaN or an infinite loss; -inf would look like the best decrease if accepted."""
    f, x, *_ = quadratic(cond=10)

    def guarded():
        loss = f(x)
        return loss if float(x.detach().abs().max()) < 5 else loss * 0 + bad

    opt = tz.Modular([x], make())
    before = float(f(x.detach()))
    opt.step(Counter(guarded, [x]).closure)
    assert torch.isfinite(x).all()
    assert opt.last_info["step_size"] > 0 and float(f(x.detach())) < before


@pytest.mark.parametrize("make", SEARCHES)
def test_bounded_evaluations_and_no_step_when_nothing_decreases(make):
    x = torch.tensor([0.5, -0.3], dtype=torch.float64, requires_grad=True)
    x0 = x.detach().clone()
    state = {"first": True}

    def loss_fn():
        loss = (x**2).sum()
        if state["first"]:
            state["first"] = False
            return loss
        return loss + 1.0  # every trial point is worse than x0

    opt = tz.Modular([x], make())
    counter = Counter(loss_fn, [x])
    opt.step(counter.closure)
    assert counter.calls <= 1 + 10
    assert opt.last_info["step_size"] == 0.0
    assert torch.equal(x.detach(), x0)


@pytest.mark.parametrize("make", SEARCHES[:2])
def test_ascent_direction_takes_no_step_without_evaluating(make):
    x = torch.tensor([0.5, -0.3], dtype=torch.float64, requires_grad=True)
    x0 = x.detach().clone()
    opt = tz.Modular([x], Negate(), make())
    counter = Counter(lambda: (x**2).sum(), [x])
    opt.step(counter.closure)
    assert counter.calls == 1 and opt.last_info["step_size"] == 0.0
    assert torch.equal(x.detach(), x0)


@pytest.mark.parametrize("style", ["backward", "noarg"])
@pytest.mark.parametrize("make", [SEARCHES[1], SEARCHES[2]])
def test_loss_only_trials_leave_grad_alone(make, style):
    f, x, *_ = quadratic(cond=10)
    g0 = grad_at(lambda: f(x), [x])[0]
    rec = Record()
    opt = tz.Modular([x], make(), rec)
    counter = Counter(lambda: f(x), [x], style=style)
    opt.step(counter.closure)
    assert counter.calls > 2
    torch.testing.assert_close(x.grad, g0)  # .grad is from the one backward evaluation at x0
    torch.testing.assert_close(rec.grads[0][0], g0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", [lambda: tz.m.StrongWolfe(), lambda: tz.m.Backtracking()])
def test_steepest_descent_with_line_search_converges_on_quadratic(dtype, make):
    f, x, x_star, *_ = quadratic(dtype=dtype, cond=10)
    opt = tz.Modular([x], make())
    c = Counter(lambda: f(x), [x])
    for _ in range(60):
        opt.step(c.closure)
    torch.testing.assert_close(x.detach(), x_star, atol=1e-3, rtol=0)


def test_settings_must_agree_across_groups():
    a = torch.zeros(2, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    ls = tz.m.Backtracking()
    with pytest.raises(ValueError, match="same in every param group"):  # refused when the optimizer is built
        tz.Modular([a, b], ls.set_params([{"params": [a], "c1": 0.1}]))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: tz.m.StrongWolfe(c1=0.5, c2=0.1), "0 < c1 < c2 < 1"),
        (lambda: tz.m.Backtracking(beta=1.5), "beta"),
        (lambda: tz.m.Backtracking(max_evals=0), "positive integer"),
        (lambda: tz.m.ArmijoTrials(init=-1.0), "init must be positive"),
    ],
)
def test_invalid_settings_say_what_to_do(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_step_without_closure_is_refused():
    x = torch.zeros(2, requires_grad=True)
    x.grad = torch.ones(2)
    opt = tz.Modular([x], tz.m.StrongWolfe())
    with pytest.raises(RuntimeError, match="needs a closure|needs a closure|closure"):
        opt.step()
    assert torch.equal(x.detach(), torch.zeros(2))


class Poison(tz.Module):
    """Test helper: puts an infinite entry into the update."""

    def step(self, ctx) -> None:  # type: ignore[no-untyped-def]
        u = ctx.update[0].clone()
        u[0] = math.inf
        ctx.update = [u]


@pytest.mark.parametrize("make", SEARCHES)
def test_rejected_non_finite_direction_leaves_params_untouched(make):
    x = torch.tensor([0.5, -0.3], dtype=torch.float64, requires_grad=True)
    x0 = x.detach().clone()
    opt = tz.Modular([x], Poison(), make())
    opt.step(Counter(lambda: (x**2).sum(), [x]).closure)
    assert opt.last_info["step_size"] == 0.0
    assert torch.equal(x.detach(), x0)


@pytest.mark.parametrize(
    "make", [lambda: tz.m.StrongWolfe(), lambda: tz.m.Backtracking(), lambda: tz.m.ArmijoTrials(n_trials=3)]
)
def test_a_parameter_without_elements_changes_nothing(make):
    """An empty tensor (an empty FSDP shard, a zero-width layer) next to the others: the same steps as without it
    (the infinity norm of the strong-Wolfe bracket scale has no identity, so it must be left out)."""
    f, x, *_ = quadratic(n=4, cond=10)
    y = x.detach().clone().requires_grad_()
    empty = torch.zeros(0, 2, dtype=x.dtype, requires_grad=True)
    opt_x = tz.Modular([x], tz.m.LBFGS(3), make())
    opt_y = tz.Modular([y, empty], tz.m.LBFGS(3), make())
    cx = Counter(lambda: f(x), [x])
    cy = Counter(lambda: f(y) + empty.sum(), [y, empty])
    for _ in range(3):
        opt_x.step(cx.closure)
        opt_y.step(cy.closure)
    torch.testing.assert_close(y.detach(), x.detach(), rtol=0, atol=0)
    assert empty.shape == (0, 2)


def test_slope_uses_the_gradient_after_a_module_that_writes_the_update_in_place():
    # SGD(momentum) and Mul write into the update, which starts as .grad; the line search must still see the
    # gradient (needs_raw_grad), so its sufficient-decrease test uses <g, d>, not <d, d>
    torch.manual_seed(0)
    A = torch.randn(5, 5, dtype=torch.float64)
    A = A @ A.T + torch.eye(5, dtype=torch.float64)
    slopes = []

    class Spy(tz.m.Backtracking):
        def search(self, line, loss0, slope0, settings):
            slopes.append(slope0)
            return super().search(line, loss0, slope0, settings)

    x = torch.ones(5, dtype=torch.float64, requires_grad=True)
    opt = tz.Modular([x], tz.m.Mul(2.0), Spy())

    def closure(backward=True):
        loss = 0.5 * x @ A @ x
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    opt.step(closure)
    g = (A @ torch.ones(5, dtype=torch.float64)).detach()
    assert slopes[0] == pytest.approx(-float(g @ (2 * g)))
