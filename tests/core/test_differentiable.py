"""differentiable=True: gradients flow through the step like torch.optim's differentiable mode."""

import pytest
import torch

import torchzero as tz


def _one_step(make_opt, w, g, steps=3):
    p = w.clone()  # non-leaf parameter, as torch's differentiable optimizers require
    opt = make_opt([p])
    for _ in range(steps):
        p.grad = g * 1.0
        opt.step()
    return p


@pytest.mark.parametrize(
    ("tz_chain", "torch_opt"),
    [
        (lambda: [tz.m.Adam(), tz.m.LR(0.1)], lambda ps: torch.optim.Adam(ps, lr=0.1, differentiable=True)),
        (lambda: [tz.m.SGD(), tz.m.LR(0.1)], lambda ps: torch.optim.SGD(ps, lr=0.1, differentiable=True)),
    ],
    ids=["adam", "sgd"],
)
def test_gradients_through_step_match_torch(tz_chain, torch_opt):
    torch.manual_seed(0)
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, dtype=torch.float64, requires_grad=True)
    ours = _one_step(lambda ps: tz.Modular(ps, *tz_chain(), differentiable=True), w, g)
    theirs = _one_step(torch_opt, w, g)
    # torch keeps Adam's step count as a float32 tensor, so its bias corrections carry float32 rounding
    tol = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(ours, theirs, **tol)
    d_ours = torch.autograd.grad((ours**2).sum(), (w, g))
    d_theirs = torch.autograd.grad((theirs**2).sum(), (w, g))
    for a, b in zip(d_ours, d_theirs, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_default_mode_does_not_track():
    w = torch.randn(3, requires_grad=True)
    opt = tz.Modular([w], tz.m.Adam(), tz.m.LR(0.1))
    w.grad = torch.ones(3, requires_grad=True)  # a step that tracked would give the state a grad_fn
    opt.step()
    assert w.grad_fn is None and all(
        t.grad_fn is None for t in opt.state[w]["0"].values() if isinstance(t, torch.Tensor)
    )


def test_momentum_gradient_flows_through_the_first_buffer():
    # torch.optim.SGD detaches the first momentum buffer; we do not, so compare with the formula written out
    torch.manual_seed(0)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, dtype=torch.float64, requires_grad=True)
    ours = _one_step(lambda ps: tz.Modular(ps, tz.m.SGD(momentum=0.9), tz.m.LR(0.1), differentiable=True), w, g)
    p, buf = w.clone(), None
    for _ in range(3):
        buf = g * 1.0 if buf is None else 0.9 * buf + g
        p = p - 0.1 * buf
    torch.testing.assert_close(ours, p)
    for a, b in zip(
        torch.autograd.grad((ours**2).sum(), (w, g)), torch.autograd.grad((p**2).sum(), (w, g)), strict=True
    ):
        torch.testing.assert_close(a, b)
