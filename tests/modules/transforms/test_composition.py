"""Chains that must agree with each other, or with torch's own utilities followed by a torch optimizer."""

from __future__ import annotations

import pytest
import torch

import torchzero as tz

from .helpers import copy_params, grads_for, two_groups


def assert_chains_agree(chain_a, chain_b, *, dtype=torch.float64, steps=8, settings=({}, {})):
    groups = two_groups(dtype)
    params = [p for ps in groups for p in ps]
    other = copy_params(params)
    n = len(groups[0])
    opt_a = tz.Modular([{"params": params[:n], **settings[0]}, {"params": params[n:], **settings[1]}], *chain_a())
    opt_b = tz.Modular([{"params": other[:n], **settings[0]}, {"params": other[n:], **settings[1]}], *chain_b())
    for t in range(steps):
        for p, q, g in zip(params, other, grads_for(params, t), strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
        for p, q in zip(params, other, strict=True):
            torch.testing.assert_close(p.detach(), q.detach(), msg=lambda m, t=t: f"step {t}: {m}")


EQUIVALENT = {
    "Normalize(1)*c == Normalize(c)": (lambda: [tz.m.Normalize(1.0), tz.m.Mul(0.3)], lambda: [tz.m.Normalize(0.3)]),
    "Mul(c), LR(lr) == LR(c*lr)": (
        lambda: [tz.m.Adam(), tz.m.Mul(0.5), tz.m.LR(0.02)],
        lambda: [tz.m.Adam(), tz.m.LR(0.01)],
    ),
    "Add(Grad()) == Mul(2)": (lambda: [tz.m.Add(tz.m.Grad()), tz.m.LR(0.1)], lambda: [tz.m.Mul(2.0), tz.m.LR(0.1)]),
    "Lerp(Grad(), 1) == Grad()": (
        lambda: [tz.m.Adam(), tz.m.Lerp(tz.m.Grad(), 1.0), tz.m.LR(0.1)],
        lambda: [tz.m.Adam(), tz.m.Grad(), tz.m.LR(0.1)],
    ),
    "EMA(0) == identity": (lambda: [tz.m.EMA(0.0), tz.m.LR(0.1)], lambda: [tz.m.LR(0.1)]),
    "Sub(x) == Add(-x)": (lambda: [tz.m.Sub(0.2, alpha=2.0)], lambda: [tz.m.Add(-0.4)]),
    "Div(x) == Mul(1/x)": (lambda: [tz.m.Div(4.0)], lambda: [tz.m.Mul(0.25)]),
    "Neg twice == identity": (lambda: [tz.m.Neg(), tz.m.Neg(), tz.m.LR(0.1)], lambda: [tz.m.LR(0.1)]),
    "EMA debiased == Adam with eps huge * scale": (
        # Adam's step with eps >> sqrt(v) is m_hat / eps: EMA(debiased) divided by eps
        lambda: [tz.m.EMA(0.9, debiased=True), tz.m.Div(1e8), tz.m.LR(1e7)],
        lambda: [tz.m.Adam(betas=(0.9, 0.999), eps=1e8), tz.m.LR(1e7)],
    ),
    "nested lists == flat chain": (
        lambda: [[tz.m.ClipNorm(1.0), [tz.m.Adam()]], tz.m.Cautious(), tz.m.LR(0.1)],
        lambda: [tz.m.ClipNorm(1.0), tz.m.Adam(), tz.m.Cautious(), tz.m.LR(0.1)],
    ),
}


@pytest.mark.parametrize("name", list(EQUIVALENT), ids=list(EQUIVALENT))
def test_equivalent_chains(name):
    a, b = EQUIVALENT[name]
    # per-group lr where both chains end in the same LR, so the groups carry different settings
    same_lr = "LR(lr)" not in name and "EMA debiased" not in name and "LR" in repr([m for m in a()])
    assert_chains_agree(a, b, settings=({"lr": 0.3} if same_lr else {}, {}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_clipnorm_then_sgd_is_clip_grad_norm_then_torch_sgd(dtype):
    groups = two_groups(dtype)
    params = [p for ps in groups for p in ps]
    refs = copy_params(params)
    opt = tz.Modular(params, tz.m.ClipNorm(2.0), tz.m.SGD(momentum=0.9, nesterov=True), tz.m.LR(0.1))
    ref = torch.optim.SGD(refs, lr=0.1, momentum=0.9, nesterov=True)
    for t in range(15):
        for p, q, g in zip(params, refs, grads_for(params, t), strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        torch.nn.utils.clip_grad_norm_(refs, 2.0, foreach=False)
        ref.step()
        for p, q in zip(params, refs, strict=True):
            torch.testing.assert_close(p.detach(), q.detach())


def test_clipvalue_then_adam_is_clip_grad_value_then_torch_adam():
    groups = two_groups(torch.float32)
    params = [p for ps in groups for p in ps]
    refs = copy_params(params)
    opt = tz.Modular(params, tz.m.ClipValue(0.5), tz.m.Adam(), tz.m.LR(0.01))
    ref = torch.optim.Adam(refs, lr=0.01)
    for t in range(15):
        for p, q, g in zip(params, refs, grads_for(params, t), strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        torch.nn.utils.clip_grad_value_(refs, 0.5)
        ref.step()
        for p, q in zip(params, refs, strict=True):
            torch.testing.assert_close(p.detach(), q.detach())


@pytest.mark.parametrize("reference", [False, True], ids=["foreach", "reference"])
def test_cautious_adam_masks_torch_adams_step(reference):
    # Adam's step does not depend on the parameters, so torch.optim.Adam(lr=1) on a copy gives the
    # unmasked update u_t; C-Adam is theta -= lr * u_t * [u_t * g_t > 0].
    groups = two_groups(torch.float64)
    params = [p for ps in groups for p in ps]
    shadow = copy_params(params)
    expected = [p.detach().clone() for p in params]
    opt = tz.Modular(params, tz.m.Adam(), tz.m.Cautious(), tz.m.LR(0.01))
    adam = torch.optim.Adam(shadow, lr=1.0)
    for t in range(12):
        grads = grads_for(params, t)
        for p, q, g in zip(params, shadow, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        with tz.foreach.reference_mode(reference):
            opt.step()
        old = [q.detach().clone() for q in shadow]
        adam.step()
        for e, q, o, g in zip(expected, shadow, old, grads, strict=True):
            u = o - q.detach()
            e.sub_(0.01 * u * (u * g > 0))
        for p, e in zip(params, expected, strict=True):
            torch.testing.assert_close(p.detach(), e)
