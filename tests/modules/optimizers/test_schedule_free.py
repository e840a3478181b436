"""ScheduleFreeSGD / ScheduleFreeAdamW against schedulefree 1.4.1 (SGDScheduleFree, AdamWScheduleFree).

Tolerance: the chain computes y_new exactly as the reference (lerp, then add), and the core writes
theta + (y_new - y); that difference is exact when y_new is within a factor 2 of y (Sterbenz), which holds
for nearly every element, so the runs agree to a few ulps (rtol 1e-6 / atol 1e-7 in fp32, 1e-13 / 1e-15 in
fp64, over 12 steps: room for the rare element where the difference rounds).
"""

from __future__ import annotations

import copy

import pytest
import torch

schedulefree = pytest.importorskip("schedulefree")

import torchzero as tz  # noqa: E402

TOL = {torch.float32: {"rtol": 1e-6, "atol": 1e-7}, torch.float64: {"rtol": 1e-13, "atol": 1e-15}}


def _params(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g, dtype=dtype) for s in [(5, 4), (4,), (3, 2, 2), (7,)]]


def _grads(step: int, params: list[torch.Tensor]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    # a gradient that depends on the point, so a wrong y shows up in later steps
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) + 0.5 * p.detach() for p in params]


CASES = {
    "sgd": (
        lambda p, g: tz.Modular(
            g(p), tz.m.ScheduleFreeSGD(momentum=0.8, weight_decay=1e-2, warmup_steps=3), tz.m.LR(0.1)
        ),
        lambda p, g: schedulefree.SGDScheduleFree(g(p), lr=0.1, momentum=0.8, weight_decay=1e-2, warmup_steps=3),
    ),
    "adamw": (
        lambda p, g: tz.Modular(
            g(p), tz.m.ScheduleFreeAdamW(betas=(0.85, 0.99), weight_decay=1e-2, warmup_steps=4, r=0.5), tz.m.LR(0.01)
        ),
        lambda p, g: schedulefree.AdamWScheduleFree(
            g(p), lr=0.01, betas=(0.85, 0.99), weight_decay=1e-2, warmup_steps=4, r=0.5
        ),
    ),
}


def _groups_sgd(p):
    return [{"params": p[:2]}, {"params": p[2:], "lr": 0.05, "momentum": 0.95, "weight_decay": 0.0}]


def _groups_adamw(p):
    return [{"params": p[:2]}, {"params": p[2:], "lr": 0.02, "betas": (0.9, 0.999), "weight_decay": 0.0}]


def _one(p):
    return p


def _run(opt, params, steps, start=0):
    for t in range(start, start + steps):
        for p, g in zip(params, _grads(t, params), strict=True):
            p.grad = g
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("grouped", [False, True])
def test_matches_schedulefree(name, dtype, grouped):
    ours_fn, ref_fn = CASES[name]
    groups = (_groups_sgd if name == "sgd" else _groups_adamw) if grouped else _one
    a, b = _params(dtype), _params(dtype)
    for p in a + b:
        p.requires_grad_(True)
    ours, ref = ours_fn(a, groups), ref_fn(b, groups)
    ref.train()
    for t in range(12):
        _run(ours, a, 1, t)
        _run(ref, b, 1, t)
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, **TOL[dtype])
    # the eval point x, and back to y
    ours.eval()
    ref.eval()
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, **TOL[dtype])
    ours.train()
    ref.train()
    _run(ours, a, 2, 12)
    _run(ref, b, 2, 12)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, **TOL[dtype])


@pytest.mark.parametrize("name", list(CASES))
def test_state_dict_resumes_bit_exactly(name):
    ours_fn, _ = CASES[name]
    a = [p.requires_grad_(True) for p in _params(torch.float32)]
    opt = ours_fn(a, _groups_sgd if name == "sgd" else _groups_adamw)
    _run(opt, a, 5)
    saved_params = [p.detach().clone() for p in a]
    sd = copy.deepcopy(opt.state_dict())
    _run(opt, a, 4, 5)
    expected = [p.detach().clone() for p in a]

    b = [p.clone().requires_grad_(True) for p in saved_params]
    opt2 = ours_fn(b, _groups_sgd if name == "sgd" else _groups_adamw)
    opt2.load_state_dict(sd)
    _run(opt2, b, 4, 5)
    for x, y in zip(b, expected, strict=True):
        assert torch.equal(x.detach(), y)


def test_eval_mode_is_saved_and_step_in_eval_raises():
    a = [p.requires_grad_(True) for p in _params(torch.float64)]
    opt = CASES["sgd"][0](a, _one)
    _run(opt, a, 3)
    y = [p.detach().clone() for p in a]
    opt.eval()
    opt.eval()  # idempotent
    with pytest.raises(RuntimeError, match="eval mode"):
        _run(opt, a, 1, 3)
    sd = copy.deepcopy(opt.state_dict())
    b = [p.detach().clone().requires_grad_(True) for p in a]
    opt2 = CASES["sgd"][0](b, _one)
    opt2.load_state_dict(sd)
    opt2.train()  # the checkpoint said eval: train() moves b back to y
    for x, yy in zip(b, y, strict=True):
        torch.testing.assert_close(x.detach(), yy, rtol=1e-12, atol=1e-14)


def test_lr_must_follow():
    a = [p.requires_grad_(True) for p in _params(torch.float32)]
    with pytest.raises(ValueError, match="right after it"):
        tz.Modular(a, tz.m.ScheduleFreeSGD(), tz.m.Sign(), tz.m.LR(0.1))


def test_without_lr_uses_one():
    a = [p.requires_grad_(True) for p in _params(torch.float64)]
    b = [p.detach().clone().requires_grad_(True) for p in a]
    ours = tz.Modular(a, tz.m.ScheduleFreeSGD())
    ref = schedulefree.SGDScheduleFree(b)
    ref.train()
    _run(ours, a, 5)
    _run(ref, b, 5)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, **TOL[torch.float64])
