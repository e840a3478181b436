"""Lookahead against pytorch_optimizer 4.1.0's Lookahead around the equal torch optimizer.

Tolerance: the fast step differs from torch's by the rounding of Adam's step (torch writes
p.addcdiv_(m, denom, -step), the chain hands on step * m / denom and the core subtracts it), and the k-th
step lands on the same lerp as the reference (emitted as theta_new - theta, exact by Sterbenz for nearly
every element), so a few ulps per step: rtol 1e-5 / atol 1e-6 in fp32 and 1e-12 / 1e-14 in fp64 over 12 steps.
"""

from __future__ import annotations

import copy

import pytest
import torch

po = pytest.importorskip("pytorch_optimizer")

import torchzero as tz  # noqa: E402

TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-6}, torch.float64: {"rtol": 1e-12, "atol": 1e-14}}


def _params(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_(True) for s in [(5, 4), (4,), (3, 2, 2), (7,)]]


def _run(opt, params, steps, start=0):
    for t in range(start, start + steps):
        g = torch.Generator().manual_seed(100 + t)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype) + 0.5 * p.detach()
        opt.step()


def _groups(p, second):
    return [{"params": p[:2]}, {"params": p[2:], **second}]


CASES = {
    "adam": (
        lambda p: tz.Modular(
            _groups(p, {"lr": 0.02, "betas": (0.8, 0.99)}), tz.m.Adam(), tz.m.LR(0.05), tz.m.Lookahead(k=3, alpha=0.6)
        ),
        lambda p: po.Lookahead(
            torch.optim.Adam(_groups(p, {"lr": 0.02, "betas": (0.8, 0.99)}), lr=0.05, foreach=False), k=3, alpha=0.6
        ),
    ),
    "adamw": (
        lambda p: tz.Modular(
            _groups(p, {"lr": 0.02, "weight_decay": 0.0}), tz.m.AdamW(lr=0.05, weight_decay=0.1), tz.m.Lookahead(k=4)
        ),
        lambda p: po.Lookahead(
            torch.optim.AdamW(_groups(p, {"lr": 0.02, "weight_decay": 0.0}), lr=0.05, weight_decay=0.1), k=4
        ),
    ),
    "sgd": (
        lambda p: tz.Modular(
            _groups(p, {"lr": 0.02, "momentum": 0.5}),
            tz.m.SGD(momentum=0.9),
            tz.m.LR(0.05),
            tz.m.Lookahead(k=2, alpha=0.3),
        ),
        lambda p: po.Lookahead(
            torch.optim.SGD(_groups(p, {"lr": 0.02, "momentum": 0.5}), lr=0.05, momentum=0.9), k=2, alpha=0.3
        ),
    ),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_pytorch_optimizer_lookahead(name, dtype):
    ours_fn, ref_fn = CASES[name]
    a, b = _params(dtype), _params(dtype)
    ours, ref = ours_fn(a), ref_fn(b)
    for t in range(12):
        _run(ours, a, 1, t)
        _run(ref, b, 1, t)
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, **TOL[dtype], msg=lambda m, t=t: f"step {t + 1}: {m}")


@pytest.mark.parametrize("name", list(CASES))
def test_state_dict_resumes_bit_exactly(name):
    ours_fn, _ = CASES[name]
    a = _params(torch.float32)
    opt = ours_fn(a)
    _run(opt, a, 5)  # mid-cycle for every k
    saved = [p.detach().clone() for p in a]
    sd = copy.deepcopy(opt.state_dict())
    _run(opt, a, 7, 5)
    b = [p.clone().requires_grad_(True) for p in saved]
    opt2 = ours_fn(b)
    opt2.load_state_dict(sd)
    _run(opt2, b, 7, 5)
    for x, y in zip(b, a, strict=True):
        assert torch.equal(x.detach(), y.detach())


def test_must_be_last():
    with pytest.raises(ValueError, match="last module"):
        tz.Modular(_params(torch.float32), tz.m.Adam(), tz.m.Lookahead(), tz.m.LR(1e-3))
