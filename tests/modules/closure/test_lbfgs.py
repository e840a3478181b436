"""LBFGS as a module: step-for-step parity with torch.optim.LBFGS, the two-loop against a dense
reference, curvature-pair skipping, state round trips."""

from __future__ import annotations

import pytest
import torch

import torchzero as tz
from torchzero.foreach import reference_mode

from ._problems import (
    DTYPES,
    Counter,
    Record,
    logistic_data,
    logistic_loss,
    mlp,
    quadratic,
    rosenbrock,
    rosenbrock_start,
    roundtrip,
)

MAX_EVALS = 25


def _torch_lbfgs(params, history_size):
    # one L-BFGS iteration per step, as a tz.Modular step is; the line search gets the same budget
    return torch.optim.LBFGS(
        params, max_iter=1, max_eval=MAX_EVALS + 1, history_size=history_size, line_search_fn="strong_wolfe"
    )


PROBLEMS = ["rosenbrock", "logistic"]


def _problem(name, dtype):
    if name == "rosenbrock":
        x = rosenbrock_start(dtype)
        return [x], lambda p: rosenbrock(p[0])
    X, y = logistic_data(dtype=dtype)
    w = torch.zeros(X.shape[1], dtype=dtype, requires_grad=True)
    return [w], lambda p: logistic_loss(p[0], X, y)


def _calls_to_reach(history, target):
    return next(calls for calls, loss in history if loss <= target)


@pytest.mark.parametrize("name", PROBLEMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch_lbfgs_step_for_step(name, dtype):
    """Same iterates, same loss, and no more closure calls than torch.optim.LBFGS(line_search_fn="strong_wolfe").

    In fp64 the trajectories agree to rounding for the whole run.  In fp32 they agree for the first steps
    and then drift apart (torch forms s = t*d, this module measures s from the parameters, which rounds
    differently), so there the final loss and the calls needed to reach it are compared (5% slack).
    """
    params, f = _problem(name, dtype)
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    opt = tz.Modular(params, tz.m.LBFGS(history_size=5), tz.m.StrongWolfe(max_evals=MAX_EVALS))
    ref = _torch_lbfgs(ref_params, history_size=5)
    ours = Counter(lambda: f(params), params)
    theirs = Counter(lambda: f(ref_params), ref_params, style="noarg")
    exact = dtype == torch.float64
    tol = {"rtol": 1e-7, "atol": 1e-9} if exact else {"rtol": 1e-4, "atol": 1e-4}
    steps = 60 if name == "rosenbrock" else 15
    ours_history, theirs_history = [], []
    for i in range(steps):
        opt.step(ours.closure)
        ref.step(theirs.closure)
        ours_history.append((ours.calls, float(f(params).detach())))
        theirs_history.append((theirs.calls, float(f(ref_params).detach())))
        if exact or i < 5:
            torch.testing.assert_close(params[0].detach(), ref_params[0].detach(), **tol, msg=f"step {i}")
            assert ours.calls == theirs.calls, f"step {i}: {ours.calls} closure calls vs torch's {theirs.calls}"
    final, final_ref = ours_history[-1][1], theirs_history[-1][1]
    target = max(final, final_ref) + 1e-6
    assert final <= final_ref + 1e-6, f"final loss {final} vs torch's {final_ref}"
    slack = 1.0 if exact else 1.05
    assert _calls_to_reach(ours_history, target) <= slack * _calls_to_reach(theirs_history, target)


@pytest.mark.parametrize("name", PROBLEMS)
def test_reaches_torch_default_lbfgs_loss(name):
    """Against torch's default (20 iterations per step()): the same loss is reached, every step being one
    iteration here.  Closure calls are compared in benchmarks/closure_modules.py (one extra evaluation
    per iteration here: the optimizer's own evaluation at the start of each step)."""
    params, f = _problem(name, torch.float64)
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    ref = torch.optim.LBFGS(ref_params, line_search_fn="strong_wolfe")
    for _ in range(5):
        ref.step(Counter(lambda: f(ref_params), ref_params, style="noarg").closure)
    target = float(f(ref_params).detach())
    opt = tz.Modular(params, tz.m.LBFGS(history_size=100), tz.m.StrongWolfe())
    c = Counter(lambda: f(params), params)
    for _ in range(100):
        if float(opt.step(c.closure)) <= target:
            break
    assert float(f(params).detach()) <= target + 1e-9 * max(1.0, abs(target))


def _dense_inverse_hessian(pairs, gamma, n):
    h = gamma * torch.eye(n, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64)
    for s, y in pairs:
        rho = 1.0 / float(y @ s)
        h = (eye - rho * torch.outer(s, y)) @ h @ (eye - rho * torch.outer(y, s)) + rho * torch.outer(s, s)
    return h


@pytest.mark.parametrize("history_size", [2, 10])
def test_two_loop_equals_dense_bfgs_recursion(history_size):
    """u = H_k g with H_k from the BFGS recursion over the last pairs on top of gamma*I (written out)."""
    f, x, *_ = quadratic(n=6, cond=30)
    rec = Record()
    opt = tz.Modular([x], rec, tz.m.LBFGS(history_size=history_size), tz.m.LR(0.05))
    xs, gs, us = [], [], []
    for _ in range(7):
        x.grad = torch.autograd.grad(f(x), [x])[0]
        xs.append(x.detach().clone())
        gs.append(x.grad.clone())
        opt.step()
        us.append((xs[-1] - x.detach()) / 0.05)
    pairs = [(xs[i + 1] - xs[i], gs[i + 1] - gs[i]) for i in range(len(xs) - 1)]
    for k in range(1, len(xs)):
        kept = pairs[:k][-history_size:]
        s, y = kept[-1]
        gamma = float(s @ y) / float(y @ y)
        expected = _dense_inverse_hessian(kept, gamma, 6) @ gs[k]
        torch.testing.assert_close(us[k], expected, rtol=1e-8, atol=1e-10)
    # the first step is the gradient scaled by min(1, 1/|g|_1)
    torch.testing.assert_close(us[0], gs[0] * min(1.0, 1.0 / float(gs[0].abs().sum())))


def test_flat_curvature_pairs_are_skipped():
    """On a linear function y = 0, so no pair is usable: every later step is the plain gradient."""
    c = torch.tensor([0.5, -2.0, 1.0], dtype=torch.float64)
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = tz.Modular([x], tz.m.LBFGS(), tz.m.LR(1.0))
    before = x.detach().clone()
    for i in range(4):
        x.grad = c.clone()
        opt.step()
        step = before - x.detach()
        expected = c * min(1.0, 1.0 / float(c.abs().sum())) if i == 0 else c
        torch.testing.assert_close(step, expected)
        before = x.detach().clone()


def test_negative_curvature_pairs_are_skipped():
    """The gradient grows along the step (s'y < 0, a direction of negative curvature): no pair is kept, so every
    later step is the plain gradient, as on a flat function."""
    c = torch.tensor([0.5, -2.0, 1.0], dtype=torch.float64)
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = tz.Modular([x], tz.m.LBFGS(), tz.m.LR(1.0))
    before = x.detach().clone()
    for i in range(4):
        g = c * 2.0**i
        x.grad = g.clone()
        opt.step()
        expected = g * min(1.0, 1.0 / float(g.abs().sum())) if i == 0 else g
        torch.testing.assert_close(before - x.detach(), expected)
        before = x.detach().clone()


def test_many_tensors_equal_one_concatenated_tensor():
    """LBFGS treats all parameters as one vector: splitting it into tensors changes nothing."""
    X, y = logistic_data(d=6)
    w = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    a = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt1 = tz.Modular([w], tz.m.LBFGS(), tz.m.StrongWolfe())
    opt2 = tz.Modular([{"params": [a]}, {"params": [b]}], tz.m.LBFGS(), tz.m.StrongWolfe())
    c1 = Counter(lambda: logistic_loss(w, X, y), [w])
    c2 = Counter(lambda: logistic_loss(torch.cat([a, b]), X, y), [a, b])
    for _ in range(8):
        opt1.step(c1.closure)
        opt2.step(c2.closure)
    torch.testing.assert_close(torch.cat([a, b]).detach(), w.detach(), rtol=1e-10, atol=1e-12)
    assert c1.calls == c2.calls


def test_reference_mode_gives_the_same_steps():
    X, y = logistic_data()
    w1 = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    w2 = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    opt1 = tz.Modular([w1], tz.m.LBFGS(), tz.m.StrongWolfe())
    opt2 = tz.Modular([w2], tz.m.LBFGS(), tz.m.StrongWolfe())
    c1 = Counter(lambda: logistic_loss(w1, X, y), [w1])
    c2 = Counter(lambda: logistic_loss(w2, X, y), [w2])
    for _ in range(5):
        opt1.step(c1.closure)
        with reference_mode():
            opt2.step(c2.closure)
    torch.testing.assert_close(w1, w2, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_state_dict_round_trip_mid_run(dtype):
    model, X, Y = mlp(dtype)
    twin, *_ = mlp(dtype)
    twin.load_state_dict(model.state_dict())

    def make(m):
        return tz.Modular(m.parameters(), tz.m.LBFGS(history_size=4), tz.m.StrongWolfe())

    opt = make(model)
    c = Counter(lambda: ((model(X) - Y) ** 2).mean(), list(model.parameters()))
    for _ in range(6):  # fills and wraps the history
        opt.step(c.closure)
    twin.load_state_dict(model.state_dict())
    opt2 = make(twin)
    roundtrip(opt, opt2)
    c2 = Counter(lambda: ((twin(X) - Y) ** 2).mean(), list(twin.parameters()))
    for _ in range(4):
        opt.step(c.closure)
        opt2.step(c2.closure)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("line_search", [tz.m.StrongWolfe, tz.m.Backtracking])
def test_converges_on_ill_conditioned_quadratic_and_mlp(dtype, line_search):
    f, x, x_star, *_ = quadratic(n=8, cond=100, dtype=dtype)
    opt = tz.Modular([x], tz.m.LBFGS(), line_search())
    c = Counter(lambda: f(x), [x])
    for _ in range(30):
        opt.step(c.closure)
    # StrongWolfe stops once the slope is above -1e-9 (torch's tolerance_change), hence the tolerance
    torch.testing.assert_close(x.detach(), x_star, atol=1e-4, rtol=0)

    model, X, Y = mlp(dtype)
    opt = tz.Modular(model.parameters(), tz.m.LBFGS(), line_search())
    cm = Counter(lambda: ((model(X) - Y) ** 2).mean(), list(model.parameters()))
    first = float(opt.step(cm.closure))
    for _ in range(25):
        last = float(opt.step(cm.closure))
    assert last < 0.2 * first


def test_history_size_mismatch_on_load_is_explained():
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = tz.Modular([x], tz.m.LBFGS(history_size=3), tz.m.LR(0.1))
    for _ in range(2):
        x.grad = torch.ones(3, dtype=torch.float64)
        opt.step()
    y = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt2 = tz.Modular([y], tz.m.LBFGS(history_size=5), tz.m.LR(0.1))
    roundtrip(opt, opt2)
    y.grad = torch.ones(3, dtype=torch.float64)
    before = y.detach().clone()
    with pytest.raises(ValueError, match="history_size=3"):
        opt2.step()
    assert torch.equal(y.detach(), before)


@pytest.mark.parametrize("scale_first", [False, True])
def test_reset_behaves_like_a_fresh_module(scale_first):
    """reset() forgets gamma and rho too: with scale_first=False the next step is not scaled by the old gamma."""
    f, x, *_ = quadratic(n=5, cond=20)
    y = x.detach().clone().requires_grad_()
    opt = tz.Modular([x], tz.m.LBFGS(history_size=2, scale_first=scale_first), tz.m.LR(0.1))
    cx, cy = Counter(lambda: f(x), [x]), Counter(lambda: f(y), [y])
    for _ in range(3):
        opt.step(cx.closure)
    opt.modules[0].reset()
    y.data.copy_(x.detach())
    fresh = tz.Modular([y], tz.m.LBFGS(history_size=2, scale_first=scale_first), tz.m.LR(0.1))
    for _ in range(3):
        opt.step(cx.closure)
        fresh.step(cy.closure)
    torch.testing.assert_close(x.detach(), y.detach(), rtol=0, atol=0)


def test_parameter_joining_later_starts_with_a_zero_pair():
    """A parameter added by add_param_group contributes s = y = 0 in its first step, so W's path does not
    depend on where the new parameter sits, and equals a run where it joined with an all-zero history."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    a = a @ a.T + torch.eye(4, dtype=torch.float64)
    W0 = torch.randn(4, generator=gen, dtype=torch.float64)
    b0 = torch.randn(2, generator=gen, dtype=torch.float64)

    def run(b_offset):
        W, b = W0.clone().requires_grad_(), (b0 + b_offset).requires_grad_(False)
        c = torch.tensor([1.0, -2.0], dtype=torch.float64) + b_offset

        def closure(backward=True):
            loss = 0.5 * W @ a @ W + ((b - c) ** 2).sum()
            if backward:
                W.grad = b.grad = None
                loss.backward()
            return loss

        opt = tz.Modular([W], tz.m.LBFGS(5), tz.m.LR(0.5))
        for t in range(6):
            if t == 2:
                b.requires_grad_(True)
                opt.add_param_group({"params": [b]})
            opt.step(closure)
        return W.detach(), b.detach() - b_offset

    W_ref, b_ref = run(0.0)
    W_off, b_off = run(10.0)
    torch.testing.assert_close(W_off, W_ref)
    torch.testing.assert_close(b_off, b_ref)


@pytest.mark.parametrize("scale_first", [True, False])
def test_differentiable_mode_backpropagates_through_the_steps(scale_first):
    """differentiable=True: the same steps as the normal mode, and d(final loss)/d(start) equals central finite
    differences of the normal mode (grads from the loss with create_graph, so each step depends on the start)."""
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    a = a @ a.T / 5 + torch.eye(5, dtype=torch.float64)
    x0 = torch.randn(5, generator=gen, dtype=torch.float64)

    def f(ps):
        x = torch.cat([ps[0].reshape(-1), ps[1]])
        return 0.5 * x @ a @ x + (x**4).sum() / 4

    def run(start, differentiable):
        ps = [start[:3].reshape(3, 1) * 1.0, start[3:] * 1.0]  # non-leaf, as torch's differentiable mode requires
        if not differentiable:
            ps = [p.detach().requires_grad_() for p in ps]
        opt = tz.Modular(ps, tz.m.LBFGS(2, scale_first=scale_first), tz.m.LR(0.3), differentiable=differentiable)
        for _ in range(4):
            with torch.enable_grad():
                grads = torch.autograd.grad(f(ps), ps, create_graph=differentiable)
            for p, g in zip(ps, grads, strict=True):
                p.grad = g
            opt.step()
        return f(ps)

    start = x0.clone().requires_grad_()
    loss = run(start, True)
    torch.testing.assert_close(loss.detach(), run(x0, False))
    (grad,) = torch.autograd.grad(loss, start)
    eps, fd = 1e-6, torch.zeros(5, dtype=torch.float64)
    for i in range(5):
        e = torch.zeros(5, dtype=torch.float64)
        e[i] = eps
        fd[i] = (run(x0 + e, False) - run(x0 - e, False)) / (2 * eps)
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-7)


def test_parameter_skipping_steps_matches_written_out_two_loop():
    """b has no .grad in steps 2 and 3. While absent it is left alone and the two-loop runs over the present
    parameters only (with the stored rho); when it comes back its part of the pairs written meanwhile is zero
    and its part of the returning step's pair is s = y = 0 (written out on flat vectors with masks)."""
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    a = a @ a.T / 5 + torch.eye(5, dtype=torch.float64)
    W = torch.randn(3, generator=gen, dtype=torch.float64).requires_grad_()
    b = torch.randn(2, generator=gen, dtype=torch.float64).requires_grad_()
    m, lr, skip = 3, 0.1, (2, 3)
    opt = tz.Modular([W, b], tz.m.LBFGS(history_size=m), tz.m.LR(lr))

    pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    prev_x, prev_g = torch.zeros(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    last_present = torch.zeros(5, dtype=torch.bool)
    gamma = torch.ones((), dtype=torch.float64)
    for t in range(8):
        x = torch.cat([W.detach(), b.detach()])
        g = a @ x
        W.grad = g[:3].clone()
        b.grad = None if t in skip else g[3:].clone()
        mask = torch.ones(5, dtype=torch.bool)
        mask[3:] = t not in skip
        if t > 0:
            fresh = mask & ~last_present  # back this step: s = y = 0
            keep = (mask & ~fresh).double()
            s, y = (x - prev_x) * keep, (g - prev_g) * keep
            pairs = [*pairs, (s, y, 1 / (s @ y))][-m:]
            gamma = (s @ y) / (y @ y)
        md = mask.double()
        if not pairs:
            u = g * md * min(1.0, 1.0 / float((g * md).abs().sum()))
        else:
            q, alphas = g * md, []
            for s, y, rho in reversed(pairs):
                alphas.append(rho * (s * md) @ q)
                q = q - alphas[-1] * y * md
            r = gamma * q
            for (s, y, rho), alpha in zip(pairs, reversed(alphas), strict=True):
                r = r + (alpha - rho * (y * md) @ r) * s * md
            u = r
        opt.step()
        after = torch.cat([W.detach(), b.detach()])
        torch.testing.assert_close(
            (x - after)[mask], lr * u[mask], rtol=1e-10, atol=1e-12, msg=lambda e, t=t: f"{t}: {e}"
        )
        assert torch.equal(after[~mask], x[~mask])
        prev_x = torch.where(mask, x, prev_x)
        prev_g = torch.where(mask, g, prev_g)
        last_present = mask
