"""FDM and RandomizedFDM: written-out estimates, no backward ever, seeded directions, settings scope."""

from __future__ import annotations

import pytest
import torch

import torchzero as tz

from ._problems import DTYPES, Counter, Record, assert_resumes_exactly, mlp, quadratic

# torch's forward-mode AD scripts some decompositions internally with the deprecated torch.jit.script
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


class NoBackward(torch.autograd.Function):
    """Identity whose backward raises: a model built on it cannot be trained by backpropagation.

    Its forward-mode rule (``jvp``) is the identity, so forward-mode AD still passes through it.
    """

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.clone()

    @staticmethod
    def jvp(ctx, tangent):  # type: ignore[override]
        return tangent

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        raise RuntimeError("backward must not be called by a gradient-free optimizer")


def _estimate(module, x, f, style="backward"):
    rec = Record()
    opt = tz.Modular([x], module, rec, tz.m.LR(0.0))
    counter = Counter(lambda: f(x), [x], style=style)
    loss = opt.step(counter.closure)
    return rec.updates[0][0], rec.grads[0][0], counter, loss, opt


# ----------------------------------------------------------------------------------- FDM
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("formula", ["forward", "backward", "central"])
def test_fdm_matches_written_out_differences(formula, dtype):
    f, x, *_ = quadratic(n=4, dtype=dtype)
    x0 = x.detach().clone()
    h = 1e-2
    expected = torch.zeros_like(x0)
    with torch.no_grad():
        for i in range(4):
            e = torch.zeros_like(x0)
            e[i] = h
            plus, minus, mid = f(x0 + e), f(x0 - e), f(x0)
            expected[i] = {
                "forward": (plus - mid) / h,
                "backward": (mid - minus) / h,
                "central": (plus - minus) / (2 * h),
            }[formula]
    est, grad, counter, loss, _ = _estimate(tz.m.FDM(eps=h, formula=formula), x, f)
    torch.testing.assert_close(est, expected)
    torch.testing.assert_close(grad, expected)
    assert counter.calls == 1 + (8 if formula == "central" else 4) and counter.backwards == 0
    assert torch.equal(x.detach(), x0), "params must be restored exactly (LR(0) takes no step)"
    torch.testing.assert_close(loss, f(x0).detach())


def test_fdm_central_is_exact_on_a_quadratic():
    f, x, _, a, b = quadratic(n=5)
    est, *_ = _estimate(tz.m.FDM(eps=1e-3), x, f)
    torch.testing.assert_close(est, a @ x.detach() - b, rtol=1e-7, atol=1e-8)


def test_fdm_works_on_multi_dim_and_scalar_params():
    w = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    c = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)

    def f():
        return (w**2).sum() * c + c**3

    rec = Record()
    opt = tz.Modular([w, c], tz.m.FDM(eps=1e-4), rec, tz.m.LR(0.0))
    opt.step(Counter(f, [w, c]).closure)
    gw, gc = torch.autograd.grad(f(), [w, c])
    torch.testing.assert_close(rec.updates[0][0], gw, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(rec.updates[0][1], gc, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------- RandomizedFDM
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("formula", ["forward", "backward", "central"])
def test_randomized_fdm_rademacher_matches_written_out_estimate(formula, dtype):
    """On a linear function every formula gives (c.v) v exactly; v is recovered from the sign pattern."""
    c = torch.tensor([0.5, -1.5, 2.0, 0.25, 1.0], dtype=dtype)
    x = torch.randn(5, dtype=dtype, requires_grad=True)
    est, grad, counter, _, _ = _estimate(tz.m.RandomizedFDM(eps=0.5, formula=formula), x, lambda x: c @ x)
    v = torch.sign(est)
    assert set(v.abs().tolist()) == {1.0}, "a Rademacher direction has +-1 entries"
    torch.testing.assert_close(est, (c @ v) * v)
    torch.testing.assert_close(grad, est)
    assert counter.calls == (3 if formula == "central" else 2) and counter.backwards == 0


def test_randomized_fdm_gaussian_averages_to_the_gradient():
    c = torch.tensor([0.5, -1.5, 2.0, 0.25], dtype=torch.float64)
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    est, *_ = _estimate(tz.m.RandomizedFDM(n_samples=4000, distribution="gaussian"), x, lambda x: c @ x)
    # E[(c.v) v] = c; the standard error is about |c| * sqrt(2/n)
    torch.testing.assert_close(est, c, atol=0.15, rtol=0)


def test_randomized_fdm_directions_come_from_seed_and_step_not_global_rng():
    c = torch.arange(1.0, 7.0, dtype=torch.float64)

    def run(seed, global_seed, steps=3):
        torch.manual_seed(global_seed)
        x = torch.zeros(6, dtype=torch.float64, requires_grad=True)
        rec = Record()
        opt = tz.Modular([x], tz.m.RandomizedFDM(seed=seed), rec, tz.m.LR(0.0))
        cl = Counter(lambda: c @ x, [x]).closure
        for _ in range(steps):
            torch.randn(3)  # other users of the global RNG do not matter
            opt.step(cl)
        return [u[0] for u in rec.updates]

    a, b, other = run(7, 0), run(7, 123), run(8, 0)
    for u, w in zip(a, b, strict=True):
        assert torch.equal(u, w), "same seed: same directions on every process, whatever the global RNG"
    assert not all(torch.equal(u, w) for u, w in zip(a, other, strict=True))
    assert not torch.equal(torch.sign(a[0]), torch.sign(a[1])), "directions must change from step to step"


def test_randomized_fdm_state_round_trip_continues_the_sequence():
    c = torch.arange(1.0, 9.0, dtype=torch.float64)
    x = torch.zeros(8, dtype=torch.float64, requires_grad=True)
    chain = lambda: [tz.m.RandomizedFDM(n_samples=2), tz.m.Adam(), tz.m.LR(0.1)]  # noqa: E731
    assert_resumes_exactly(lambda t: c @ t + (t**2).sum(), x, chain, before=3, after=3)


def test_eps_is_scoped_with_set_params():
    """Adam and RandomizedFDM both have `eps`: set_params reaches one module only, a group key reaches both."""
    c = torch.arange(1.0, 5.0, dtype=torch.float64)

    def estimate(make_opt):
        x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
        rec = Record()
        opt = make_opt(x, rec)
        opt.step(Counter(lambda: c @ x + (x**2).sum(), [x]).closure)
        return rec.updates[0][0]

    def fdm():  # the forward formula on x^2 gives an estimate that depends on eps
        return tz.m.RandomizedFDM(formula="forward")

    plain = estimate(lambda x, rec: tz.Modular([x], fdm(), rec, tz.m.Adam(), tz.m.LR(0.1)))
    scoped = estimate(
        lambda x, rec: tz.Modular([x], fdm(), rec, tz.m.Adam().set_params([{"params": [x], "eps": 0.5}]), tz.m.LR(0.1))
    )
    grouped = estimate(lambda x, rec: tz.Modular([{"params": [x], "eps": 0.5}], fdm(), rec, tz.m.Adam(), tz.m.LR(0.1)))
    assert torch.equal(plain, scoped), "Adam's set_params eps must not change the finite-difference step"
    assert not torch.equal(plain, grouped), "a group-level eps reaches every module that declares eps"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "module",
    [lambda: tz.m.RandomizedFDM(n_samples=2), lambda: tz.m.FDM(), lambda: tz.m.ForwardGradient(n_samples=2)],
    ids=["RandomizedFDM", "FDM", "ForwardGradient"],
)
def test_model_whose_backward_raises_still_trains(module, dtype):
    model, X, Y = mlp(dtype)
    opt = tz.Modular(model.parameters(), module(), tz.m.Adam(), tz.m.LR(1e-2))

    def closure(backward=True):
        assert not backward, "gradient approximation must only call closure(False)"
        return ((model(NoBackward.apply(X)) - Y) ** 2).mean()

    first = float(opt.step(closure))
    for _ in range(25):
        last = float(opt.step(closure))
    assert last < 0.9 * first
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("style", ["backward", "noarg"])
@pytest.mark.parametrize("module", [lambda: tz.m.RandomizedFDM(n_samples=2), lambda: tz.m.FDM()], ids=["RFDM", "FDM"])
def test_loss_only_evaluations_leave_grad_alone(module, style):
    f, x, *_ = quadratic(n=4)
    sentinel = torch.full_like(x, 7.0)
    x.grad = sentinel.clone()
    est, grad, counter, _, _ = _estimate(module(), x, f, style=style)
    assert torch.equal(x.grad, sentinel), f".grad changed with a {style} closure"
    torch.testing.assert_close(grad, est)


@pytest.mark.parametrize("dtype", DTYPES)
def test_randomized_fdm_adam_converges_on_quadratic(dtype):
    f, x, x_star, *_ = quadratic(n=4, cond=10, dtype=dtype)
    opt = tz.Modular([x], tz.m.RandomizedFDM(n_samples=2), tz.m.Adam(), tz.m.LR(0.05))
    c = Counter(lambda: f(x), [x])
    for _ in range(300):
        opt.step(c.closure)
    assert float((x.detach() - x_star).abs().max()) < 0.1


@pytest.mark.parametrize("module", [lambda: tz.m.FDM(), lambda: tz.m.RandomizedFDM()])
def test_non_finite_loss_raises_with_params_restored(module):
    x = torch.tensor([0.5, 1.0], dtype=torch.float64, requires_grad=True)
    x0 = x.detach().clone()

    def f():
        loss = (x**2).sum()
        return loss if bool((x.detach() == x0).all()) else loss * float("nan")

    opt = tz.Modular([x], module(), tz.m.LR(0.1))
    with pytest.raises(tz.NonFiniteLossError):
        opt.step(Counter(f, [x]).closure)
    assert torch.equal(x.detach(), x0)


def test_must_be_first_in_chain():
    x = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="must be the first module"):
        tz.Modular([x], tz.m.Adam(), tz.m.RandomizedFDM())


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: tz.m.RandomizedFDM(eps=0.0), "eps"),
        (lambda: tz.m.RandomizedFDM(n_samples=0), "n_samples"),
        (lambda: tz.m.RandomizedFDM(distribution="uniform"), "distribution"),
        (lambda: tz.m.FDM(formula="five-point"), "formula"),
    ],
)
def test_invalid_settings(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ----------------------------------------------------------------------------------- ForwardGradient
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_gradient_matches_written_out_jvp_estimate(dtype):
    """est = <grad f, v> v; with Rademacher v, v is the sign pattern of est and <grad f, v> comes from autograd."""
    model, X, Y = mlp(dtype)
    params = list(model.parameters())
    rec = Record()
    opt = tz.Modular(params, tz.m.ForwardGradient(distribution="rademacher"), rec, tz.m.LR(0.0))
    counter = Counter(lambda: ((model(X) - Y) ** 2).mean(), params)
    loss = opt.step(counter.closure)
    assert counter.calls == 1 and counter.backwards == 0
    grads = torch.autograd.grad(((model(X) - Y) ** 2).mean(), params)
    vs = [torch.sign(u) for u in rec.updates[0]]
    directional = sum((g * v).sum() for g, v in zip(grads, vs, strict=True))
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}
    for u, v in zip(rec.updates[0], vs, strict=True):
        torch.testing.assert_close(u, directional * v, **tol)
    torch.testing.assert_close(loss, ((model(X) - Y) ** 2).mean().detach())
    assert all(p.grad is None for p in params)


def test_forward_gradient_gaussian_averages_to_the_gradient_and_round_trips():
    c = torch.tensor([0.5, -1.5, 2.0, 0.25], dtype=torch.float64)
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    est, *_ = _estimate(tz.m.ForwardGradient(n_samples=4000), x, lambda x: c @ x)
    torch.testing.assert_close(est, c, atol=0.15, rtol=0)

    a = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    chain = lambda: [tz.m.ForwardGradient(), tz.m.SGD(momentum=0.9), tz.m.LR(0.01)]  # noqa: E731
    assert_resumes_exactly(lambda t: c @ t + (t**2).sum(), a, chain, before=2, after=2)


def test_forward_gradient_refuses_a_no_argument_closure():
    x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = tz.Modular([x], tz.m.ForwardGradient(), tz.m.LR(0.1))

    def closure():
        opt.zero_grad()
        loss = (x**2).sum()
        loss.backward()
        return loss

    with pytest.raises(TypeError, match="backward argument"):
        opt.step(closure)
    assert torch.equal(x.detach(), torch.ones(3, dtype=torch.float64))


def test_spsa_is_the_rademacher_estimate():
    c = torch.arange(1.0, 6.0, dtype=torch.float64)
    steps = []
    for distribution in ("spsa", "rademacher", "gaussian"):
        x = torch.ones(5, dtype=torch.float64, requires_grad=True)
        opt = tz.Modular([x], tz.m.RandomizedFDM(distribution=distribution, seed=3), tz.m.LR(0.1))
        opt.step(Counter(lambda x=x: c @ x + (x**3).sum(), [x]).closure)
        steps.append(x.detach().clone())
    assert torch.equal(steps[0], steps[1]) and not torch.equal(steps[0], steps[2])
