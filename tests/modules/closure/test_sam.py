"""SAM and ASAM against a written-out loop; exact restore; both closure styles."""

from __future__ import annotations

import pytest
import torch

import torchzero as tz

from ._problems import DTYPES, Counter, Record, mlp, roundtrip


def _reference_sam(model, X, Y, rho, lr, steps, adaptive=False, eta=0.01):
    params = list(model.parameters())
    for _ in range(steps):
        loss = ((model(X) - Y) ** 2).mean()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            if adaptive:
                t = [p.abs() + eta for p in params]
                norm = torch.sqrt(sum(((ti * g) ** 2).sum() for ti, g in zip(t, grads, strict=True)))
                eps = [rho * ti * ti * g / norm for ti, g in zip(t, grads, strict=True)]
            else:
                norm = torch.sqrt(sum((g**2).sum() for g in grads))
                eps = [rho * g / norm for g in grads]
            saved = [p.clone() for p in params]
            for p, e in zip(params, eps, strict=True):
                p.add_(e)
        sharp = torch.autograd.grad(((model(X) - Y) ** 2).mean(), params)
        with torch.no_grad():
            for p, s0, g in zip(params, saved, sharp, strict=True):
                p.copy_(s0 - lr * g)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("style", ["backward", "noarg"])
def test_sam_matches_written_out_loop(adaptive, dtype, style):
    model, X, Y = mlp(dtype)
    ref, *_ = mlp(dtype)
    ref.load_state_dict(model.state_dict())
    rho = 0.5 if adaptive else 0.05
    opt = tz.Modular(model.parameters(), tz.m.SAM(rho=rho, adaptive=adaptive), tz.m.SGD(), tz.m.LR(0.1))
    counter = Counter(lambda: ((model(X) - Y) ** 2).mean(), list(model.parameters()), style=style)
    for _ in range(4):
        opt.step(counter.closure)
    _reference_sam(ref, X, Y, rho, 0.1, 4, adaptive=adaptive)
    assert counter.calls == 8
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_params_restored_exactly_and_perturbed_gradient_handed_on():
    model, X, Y = mlp()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    rec = Record()
    opt = tz.Modular(params, tz.m.SAM(rho=0.1), rec, tz.m.LR(0.0))
    counter = Counter(lambda: ((model(X) - Y) ** 2).mean(), params, record=True)
    loss = opt.step(counter.closure)
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p.detach(), b)
    # the second evaluation was at the perturbed point; the gradient there is what comes out
    perturbed = counter.points[1]
    for p, v in zip(params, perturbed, strict=True):
        p.data.copy_(v)
    sharp = torch.autograd.grad(((model(X) - Y) ** 2).mean(), params)
    for g, u, r in zip(sharp, rec.updates[0], rec.grads[0], strict=True):
        torch.testing.assert_close(u, g)
        torch.testing.assert_close(r, g)
    for p, b in zip(params, before, strict=True):
        p.data.copy_(b)
    torch.testing.assert_close(loss, ((model(X) - Y) ** 2).mean().detach())  # the loss at x, not x + eps


def test_sam_state_dict_round_trip_with_momentum():
    model, X, Y = mlp()
    twin, *_ = mlp()
    twin.load_state_dict(model.state_dict())

    def make(m):
        return tz.Modular(m.parameters(), tz.m.SAM(), tz.m.SGD(momentum=0.9), tz.m.LR(0.05))

    opt, opt2 = make(model), make(twin)
    c = Counter(lambda: ((model(X) - Y) ** 2).mean(), list(model.parameters()))
    c2 = Counter(lambda: ((twin(X) - Y) ** 2).mean(), list(twin.parameters()))
    for _ in range(3):
        opt.step(c.closure)
    twin.load_state_dict(model.state_dict())
    roundtrip(opt, opt2)
    for _ in range(3):
        opt.step(c.closure)
        opt2.step(c2.closure)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sam_trains_small_mlp(dtype):
    model, X, Y = mlp(dtype)
    opt = tz.Modular(model.parameters(), tz.m.SAM(), tz.m.SGD(momentum=0.9), tz.m.LR(0.05))
    c = Counter(lambda: ((model(X) - Y) ** 2).mean(), list(model.parameters()))
    first = float(opt.step(c.closure))
    for _ in range(80):
        last = float(opt.step(c.closure))
    assert last < 0.3 * first


def test_invalid_rho():
    with pytest.raises(ValueError, match="rho"):
        tz.m.SAM(rho=0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("adaptive", [False, True])
def test_zero_gradient_gives_zero_perturbation(dtype, adaptive):
    x = torch.zeros(3, dtype=dtype, requires_grad=True)  # the minimum of |x|^2: gradient exactly zero
    opt = tz.Modular([x], tz.m.SAM(adaptive=adaptive), tz.m.LR(0.1))
    counter = Counter(lambda: (x**2).sum(), [x], record=True)
    opt.step(counter.closure)
    assert torch.equal(counter.points[1][0], torch.zeros(3, dtype=dtype))
    assert torch.equal(x.detach(), torch.zeros(3, dtype=dtype))
