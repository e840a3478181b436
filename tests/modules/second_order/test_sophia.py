"""Sophia against pytorch_optimizer 4.1.0's SophiaH, the reference driven with ``loss.backward(create_graph=True)``.

Both draw their Hutchinson vectors from the global generator (``torch.randn_like`` / ``torch.randint_like``, one
per parameter in param-group order), so seeding it before every step gives both the same vectors.  The math is
the same elementwise ops in the same order (lerp, clamp, div, clamp, subtract lr * u); the gradient and the
Hessian-vector products come from the same autograd graph.  The difference left is the last bit of the
parameter write (torch's ``add_(u, alpha=-lr)`` against the sink's), so rtol 1e-6 / atol 1e-7 in fp32 and
1e-12 / 1e-14 in fp64 over 10 steps.
"""

from __future__ import annotations

import copy

import pytest
import torch

po = pytest.importorskip("pytorch_optimizer")

import torchzero as tz  # noqa: E402

TOL = {torch.float32: {"rtol": 1e-6, "atol": 1e-7}, torch.float64: {"rtol": 1e-12, "atol": 1e-14}}


def _params(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_(True) for s in [(5, 4), (4,), (3, 2), (6,)]]


def _loss(params: list[torch.Tensor]) -> torch.Tensor:
    a, b, c, d = params
    return (
        (a**2 * torch.linspace(0.5, 2, 4, dtype=a.dtype)).sum()
        + torch.sin(b).sum()
        + (c**4).sum() * 0.1
        + (d.sum() * b.sum()) ** 2 * 0.05
        + torch.cosh(0.3 * d).sum()
        + (a @ b).pow(2).sum() * 0.01
    )


def _groups(p, second):
    return [{"params": p[:2]}, {"params": p[2:], **second}]


CASES = {
    "gaussian": (
        dict(betas=(0.9, 0.95), rho=0.5, eps=1e-2, update_period=3),
        dict(betas=(0.9, 0.95), p=0.5, eps=1e-2, update_period=3),
        {"lr": 0.02, "betas": (0.8, 0.99)},
    ),
    "rademacher": (
        dict(update_period=2, num_samples=2, distribution="rademacher", rho=1.0, eps=1e-3),
        dict(update_period=2, num_samples=2, hessian_distribution="rademacher", p=1.0, eps=1e-3),
        {"lr": 0.01, "rho": 0.02},
    ),
}


def _ours(params, name, lr=0.05, wd=0.0):
    kw, _, second = CASES[name]
    tail = [tz.m.WeightDecay(wd, scale_by_lr=True)] if wd else []
    return tz.Modular(_groups(params, second), tz.m.Sophia(**kw), tz.m.LR(lr), *tail)


def _ref(params, name, lr=0.05, wd=0.0):
    _, kw, second = CASES[name]
    second = {("p" if k == "rho" else k): v for k, v in second.items()}
    return po.SophiaH(_groups(params, second), lr=lr, weight_decay=wd, **kw)


def _step_ours(opt, params, t):
    def closure(backward=True):
        loss = _loss(params)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    torch.manual_seed(1000 + t)
    return opt.step(closure)


def _step_ref(opt, params, t):
    opt.zero_grad()
    loss = _loss(params)
    loss.backward(create_graph=True)
    torch.manual_seed(1000 + t)
    opt.step()
    for p in params:
        p.grad = None  # drop the graph kept by create_graph
    return loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_matches_sophiah(name, dtype, wd):
    a, b = _params(dtype), _params(dtype)
    ours, ref = _ours(a, name, wd=wd), _ref(b, name, wd=wd)
    for t in range(10):
        la = _step_ours(ours, a, t)
        lb = _step_ref(ref, b, t)
        torch.testing.assert_close(la, lb.detach(), **TOL[dtype])
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, **TOL[dtype], msg=lambda m, t=t: f"step {t + 1}: {m}")


@pytest.mark.parametrize("name", list(CASES))
def test_state_dict_resumes_bit_exactly(name):
    a = _params(torch.float32)
    opt = _ours(a, name)
    for t in range(4):
        _step_ours(opt, a, t)
    saved = [p.detach().clone() for p in a]
    sd = copy.deepcopy(opt.state_dict())
    for t in range(4, 9):
        _step_ours(opt, a, t)
    b = [p.clone().requires_grad_(True) for p in saved]
    opt2 = _ours(b, name)
    opt2.load_state_dict(sd)
    for t in range(4, 9):
        _step_ours(opt2, b, t)
    for x, y in zip(b, a, strict=True):
        assert torch.equal(x.detach(), y.detach())


def test_needs_backward_argument():
    a = _params(torch.float32)
    opt = tz.Modular(a, tz.m.Sophia(), tz.m.LR(0.1))
    with pytest.raises(TypeError, match="backward argument"):
        opt.step(lambda: _loss(a))
