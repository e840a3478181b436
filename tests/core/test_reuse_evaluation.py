"""Modular(reuse_evaluation=True): a line search that ends on its last trial spares the next closure call."""

import pytest
import torch

import torchzero as tz


def _rosenbrock(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def _logistic():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 10, generator=g, dtype=torch.float64)
    w_true = torch.randn(10, generator=g, dtype=torch.float64)
    y = (X @ w_true + 0.5 * torch.randn(200, generator=g, dtype=torch.float64) > 0).to(torch.float64)
    return lambda w: torch.nn.functional.binary_cross_entropy_with_logits(X @ w, y) + 1e-3 * w.square().sum()


PROBLEMS = {
    "rosenbrock": (lambda: torch.tensor([-1.5, 2.0], dtype=torch.float64), _rosenbrock),
    "logistic": (lambda: torch.zeros(10, dtype=torch.float64), _logistic()),
}


def _count_to(make_opt, x0, f, target, torch_style, max_steps=300):
    x = x0.clone().requires_grad_()
    opt = make_opt([x])
    calls = 0

    def closure(backward=True):
        nonlocal calls
        calls += 1
        loss = f(x)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(max_steps):
        opt.step((lambda: closure(True)) if torch_style else closure)
        with torch.no_grad():
            if f(x) <= target:
                return calls, x.detach()
    pytest.fail(f"did not reach {target} in {max_steps} steps ({calls} closure calls)")


@pytest.mark.parametrize("problem", PROBLEMS)
def test_lbfgs_strong_wolfe_needs_no_more_closure_calls_than_torch(problem):
    make_x, f = PROBLEMS[problem]
    # the best loss torch reaches, then the calls each needs to come within 1e-8 of it
    x = make_x().requires_grad_()
    ref = torch.optim.LBFGS([x], line_search_fn="strong_wolfe", max_iter=200, tolerance_grad=0, tolerance_change=0)

    def closure():
        ref.zero_grad()
        loss = f(x)
        loss.backward()
        return loss

    ref.step(closure)
    target = float(f(x.detach())) + 1e-8
    torch_calls, _ = _count_to(lambda p: torch.optim.LBFGS(p, line_search_fn="strong_wolfe"), make_x(), f, target, True)
    ours, _ = _count_to(
        lambda p: tz.Modular(p, tz.m.LBFGS(), tz.m.StrongWolfe(), reuse_evaluation=True), make_x(), f, target, False
    )
    without, _ = _count_to(lambda p: tz.Modular(p, tz.m.LBFGS(), tz.m.StrongWolfe()), make_x(), f, target, False)
    assert ours <= torch_calls < without, (ours, torch_calls, without)


def test_same_trajectory_with_and_without_reuse():
    make_x, f = PROBLEMS["rosenbrock"]
    runs = []
    for reuse in (False, True):
        x = make_x().requires_grad_()
        opt = tz.Modular([x], tz.m.LBFGS(), tz.m.StrongWolfe(), reuse_evaluation=reuse)

        def closure(backward=True):
            loss = f(x)  # noqa: B023 - used within the iteration
            if backward:
                opt.zero_grad()  # noqa: B023
                loss.backward()
            return loss

        for _ in range(15):
            opt.step(closure)
        runs.append(x.detach())
    torch.testing.assert_close(runs[0], runs[1])


def test_no_reuse_with_a_new_closure_or_changed_params():
    make_x, f = PROBLEMS["rosenbrock"]
    x = make_x().requires_grad_()
    opt = tz.Modular([x], tz.m.LBFGS(), tz.m.StrongWolfe(), reuse_evaluation=True)

    def make_closure():
        def closure(backward=True):
            loss = f(x)
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss

        return closure

    def initial_call_made():
        return opt.last_info["closure_calls"] == opt.last_info["line_search_evals"] + 1

    c = make_closure()
    opt.step(c)
    assert initial_call_made()
    opt.step(c)
    assert not initial_call_made()  # same closure, untouched parameters: reused
    opt.step(make_closure())
    assert initial_call_made()  # a new closure object may read other data
    opt.step(c)
    with torch.no_grad():
        x.add_(1e-3)
    opt.step(c)
    assert initial_call_made()  # the parameters changed since the saved evaluation
    opt.step(c)
    opt.zero_grad()
    opt.step(c)
    assert initial_call_made()  # the saved gradient is gone


def test_reuse_saves_exactly_the_initial_call():
    make_x, f = PROBLEMS["rosenbrock"]
    x = make_x().requires_grad_()
    opt = tz.Modular([x], tz.m.LBFGS(), tz.m.StrongWolfe(), reuse_evaluation=True)
    counted = []

    def closure(backward=True):
        counted.append(backward)
        loss = f(x)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    opt.step(closure)
    first = len(counted)
    opt.step(closure)
    second = len(counted) - first
    assert second == opt.last_info["line_search_evals"]  # no initial closure(True): it was reused
