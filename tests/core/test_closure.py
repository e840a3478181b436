"""The closure protocol: both styles, returned loss, and errors raised before anything changes."""

import math

import pytest
import torch

import torchzero as tz

from .helpers import FromScratch


def _problem():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    return model, x, y


def _snapshot(model, opt):
    return [p.detach().clone() for p in model.parameters()], {id(k): dict(v) for k, v in opt.state.items()}


@pytest.mark.parametrize("style", ["backward_arg", "any_name", "no_arg"])
def test_closure_styles_equal_plain_loop(style):
    model, x, y = _problem()
    ref = torch.nn.Linear(3, 1)
    ref.load_state_dict(model.state_dict())
    opt = tz.Modular(model.parameters(), tz.m.Adam(), tz.m.LR(1e-2))
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2)

    def loss_fn():
        return torch.nn.functional.mse_loss(model(x), y)

    if style == "backward_arg":

        def closure(backward=True):
            loss = loss_fn()
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss

    elif style == "any_name":

        def closure(do_grad):
            loss = loss_fn()
            if do_grad:
                opt.zero_grad()
                loss.backward()
            return loss

    else:

        def closure():
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss

    for _ in range(5):
        loss = opt.step(closure)
        ref_opt.zero_grad()
        ref_loss = torch.nn.functional.mse_loss(ref(x), y)
        ref_loss.backward()
        ref_opt.step()
        torch.testing.assert_close(loss, ref_loss.detach())
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_step_without_closure_returns_none():
    model, x, y = _problem()
    opt = tz.Modular(model.parameters(), tz.m.SGD(), tz.m.LR(0.1))
    torch.nn.functional.mse_loss(model(x), y).backward()
    assert opt.step() is None


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (lambda l: l.expand(3), TypeError, "shape"),
        (lambda l: "loss", TypeError, "return loss"),
        (lambda l: None, TypeError, "return loss"),
        (lambda l: l * float("nan"), tz.NonFiniteLossError, "non-finite"),
        (lambda l: l * float("inf"), tz.NonFiniteLossError, "non-finite"),
    ],
    ids=["non_scalar", "string", "none", "nan", "inf"],
)
def test_bad_closure_return_changes_nothing(value, error, match):
    model, x, y = _problem()
    opt = tz.Modular(model.parameters(), tz.m.Adam(), tz.m.LR(1e-2))

    def closure(backward=True):
        loss = torch.nn.functional.mse_loss(model(x), y)
        if backward:
            opt.zero_grad()
            loss.backward()
        return value(loss)

    before, state = _snapshot(model, opt)
    with pytest.raises(error, match=match):
        opt.step(closure)
    after, state_after = _snapshot(model, opt)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert state_after == state == {}


def test_python_float_loss_accepted():
    model, x, y = _problem()
    opt = tz.Modular(model.parameters(), tz.m.SGD(), tz.m.LR(0.1))

    def closure(backward=True):
        loss = torch.nn.functional.mse_loss(model(x), y)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss.item()

    out = opt.step(closure)
    assert isinstance(out, torch.Tensor) and math.isfinite(float(out))


def test_wrong_closure_signature_is_a_clear_error():
    model, _, _ = _problem()
    opt = tz.Modular(model.parameters(), tz.m.SGD(), tz.m.LR(0.1))
    with pytest.raises(TypeError, match=r"closure\(backward: bool\)"):
        opt.step(lambda a, b: 0.0)
    with pytest.raises(TypeError, match="callable"):
        opt.step(3.0)


def test_module_needing_closure_without_one_errors_before_changes():
    model, _, _ = _problem()
    opt = tz.Modular(model.parameters(), FromScratch(), tz.m.LR(0.1))
    before, _ = _snapshot(model, opt)
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


class _LossOnlyProbe(tz.Module):
    """Evaluates the loss without backward and checks the update it holds survives."""

    def step(self, ctx):
        held = [u.clone() for u in ctx.update]
        grads_before = [p.grad for p in ctx.layout.originals]
        ctx.evaluate(False)
        ctx.evaluate(False)
        for u, h in zip(ctx.update, held, strict=True):
            torch.testing.assert_close(u, h)
        assert all(p.grad is g for p, g in zip(ctx.layout.originals, grads_before, strict=True))


@pytest.mark.parametrize("style", ["backward_arg", "no_arg"])
def test_loss_only_evaluation_keeps_grads(style):
    model, x, y = _problem()
    opt = tz.Modular(model.parameters(), _LossOnlyProbe(), tz.m.LR(0.1))
    calls = {"backward": 0}

    def closure_arg(backward=True):
        loss = torch.nn.functional.mse_loss(model(x), y)
        if backward:
            opt.zero_grad()
            loss.backward()
            calls["backward"] += 1
        else:
            assert not torch.is_grad_enabled()
        return loss

    def closure_noarg():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        calls["backward"] += 1
        return loss

    opt.step(closure_arg if style == "backward_arg" else closure_noarg)
    assert opt.last_info["closure_calls"] == 3
    assert calls["backward"] == (1 if style == "backward_arg" else 3)


def test_loss_only_no_arg_closure_with_inplace_zero_grad():
    model, x, y = _problem()
    opt = tz.Modular(model.parameters(), _LossOnlyProbe(), tz.m.LR(0.1))

    def closure():
        opt.zero_grad(set_to_none=False)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)


def test_raw_call_keeps_the_graph_and_counts():
    w = torch.tensor([1.0, 2.0], requires_grad=True)

    def closure(backward=True):
        loss = (w**2).sum()
        if backward:
            loss.backward()
        return loss

    c = tz.Closure(closure, lambda: [w])
    loss = c.raw(True, who="Newton")
    assert loss.requires_grad and w.grad is None and c.calls == 1
    (g,) = torch.autograd.grad(loss, w)
    torch.testing.assert_close(g, 2 * w.detach())
    assert not c.raw(False).requires_grad and c.calls == 2


@pytest.mark.parametrize(
    ("fn", "grad", "error", "match"),
    [
        (lambda: torch.tensor(1.0, requires_grad=True), True, TypeError, "Newton differentiates the loss itself"),
        (lambda backward=True: 1.0, False, TypeError, "Newton needs the loss as a tensor"),
        (lambda backward=True: None, False, TypeError, "Did you forget `return loss`"),
        (lambda backward=True: torch.tensor(math.nan), False, tz.NonFiniteLossError, "non-finite"),
        (lambda backward=True: torch.tensor(1.0), True, RuntimeError, "Newton: the loss .* has no autograd graph"),
    ],
)
def test_raw_call_errors(fn, grad, error, match):
    c = tz.Closure(fn, list)
    with pytest.raises(error, match=match):
        c.raw(grad, who="Newton")
