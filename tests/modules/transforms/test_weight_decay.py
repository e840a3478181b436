"""WeightDecay against torch.optim: coupled (L2) before the rule, AdamW after it, fully decoupled after LR."""

from __future__ import annotations

import pytest
import torch

import torchzero as tz

from .helpers import copy_params, grads_for, two_groups

GROUP_SETTINGS = [{"lr": 0.05, "weight_decay": 0.3}, {"weight_decay": 0.0}]


def run_pair(dtype, chain, ref_cls, ref_kwargs, *, steps=20, fuse=True, sched=None, reference=False):
    groups = two_groups(dtype)
    refs = [copy_params(ps) for ps in groups]
    opt = tz.Modular([{"params": ps, **s} for ps, s in zip(groups, GROUP_SETTINGS, strict=True)], *chain, fuse=fuse)
    ref = ref_cls([{"params": ps, **s} for ps, s in zip(refs, GROUP_SETTINGS, strict=True)], **ref_kwargs)
    scheds = [sched(opt), sched(ref)] if sched else []
    params, ref_params = [p for ps in groups for p in ps], [p for ps in refs for p in ps]
    for t in range(steps):
        grads = grads_for(params, t)
        for p, q, g in zip(params, ref_params, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        with tz.foreach.reference_mode(reference):
            opt.step()
        ref.step()
        for s in scheds:
            s.step()
        for p, q in zip(params, ref_params, strict=True):
            torch.testing.assert_close(p.detach(), q.detach(), msg=lambda m, t=t: f"step {t}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reference", [False, True], ids=["foreach", "reference"])
def test_coupled_before_sgd_is_torch_sgd_weight_decay(dtype, reference):
    run_pair(dtype, [tz.m.WeightDecay(0.1), tz.m.SGD(momentum=0.9), tz.m.LR(0.01)], torch.optim.SGD,
             {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.1}, reference=reference)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_coupled_before_adam_is_torch_adam_weight_decay(dtype):
    run_pair(dtype, [tz.m.WeightDecay(0.1), tz.m.Adam(), tz.m.LR(0.01)], torch.optim.Adam,
             {"lr": 0.01, "weight_decay": 0.1})  # fmt: skip


ADAMW_CHAINS = {
    "after-LR-scale_by_lr": lambda: [tz.m.Adam(), tz.m.LR(0.01), tz.m.WeightDecay(0.1, scale_by_lr=True)],
    "between-Adam-and-LR": lambda: [tz.m.Adam(), tz.m.WeightDecay(0.1), tz.m.LR(0.01)],
}


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("chain", list(ADAMW_CHAINS), ids=list(ADAMW_CHAINS))
def test_adamw_chains_are_torch_adamw_under_a_scheduler(chain, dtype, fuse):
    sched = lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5)  # noqa: E731
    run_pair(dtype, ADAMW_CHAINS[chain](), torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}, fuse=fuse, sched=sched)


@pytest.mark.parametrize("reference", [False, True], ids=["foreach", "reference"])
def test_fully_decoupled_after_lr_is_independent_of_lr(reference):
    # theta <- theta (1 - wd) - lr * adam: torch Adam's step plus a decay of the old parameters by wd
    groups = two_groups(torch.float64)
    params = [p for ps in groups for p in ps]
    refs = copy_params(params)
    opt = tz.Modular([{"params": groups[0], "weight_decay": 0.02}, {"params": groups[1]}],
                     tz.m.Adam(), tz.m.LR(0.01), tz.m.WeightDecay(0.005))  # fmt: skip
    ref = torch.optim.Adam(refs, lr=0.01)
    wds = [0.02] * len(groups[0]) + [0.005] * len(groups[1])
    for t in range(10):
        for p, q, g in zip(params, refs, grads_for(params, t), strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        with tz.foreach.reference_mode(reference):
            opt.step()
        old = [q.detach().clone() for q in refs]
        ref.step()
        with torch.no_grad():
            for q, o, wd in zip(refs, old, wds, strict=True):
                q.sub_(wd * o)
        for p, q in zip(params, refs, strict=True):
            torch.testing.assert_close(p.detach(), q.detach())


def test_scale_by_lr_without_lr_module_says_add_one():
    p = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match=r"has none. Add tz.m.LR"):
        tz.Modular([p], tz.m.Adam(), tz.m.WeightDecay(0.1, scale_by_lr=True))


def test_scale_by_lr_before_lr_would_scale_twice():
    p = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="scaled by lr twice"):
        tz.Modular([p], tz.m.Adam(), tz.m.WeightDecay(0.1, scale_by_lr=True), tz.m.LR(1e-3))


def test_weight_decay_group_key_reaches_only_weight_decay():
    # a group's weight_decay=0 (e.g. for biases) turns the decay off there and nowhere else
    w, b = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = tz.Modular([{"params": [w]}, {"params": [b], "weight_decay": 0.0}], tz.m.WeightDecay(0.5), tz.m.LR(1.0))
    w.grad, b.grad = torch.zeros(3), torch.zeros(2)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((3,), 0.5))
    torch.testing.assert_close(b.detach(), torch.ones(2))
