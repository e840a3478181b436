"""Every torch.optim.lr_scheduler on tz.Modular chains, against the same scheduler on torch.optim.

Each scheduler is used three ways: ``LR(scheduler_cls=...)``, built on the Modular, and built on
``opt.get_lr_module()``.  lr, betas/momentum and parameters must equal the torch run at every step, and
a state_dict saved mid-run and loaded into fresh objects must continue exactly like the uninterrupted run.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import pytest
import torch
from torch.optim import lr_scheduler as S

import torchzero as tz

STEPS = 24


def roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_() for s in ((3, 2), (4,), (2,))]


def groups_of(ps):
    return [{"params": ps[:2], "lr": 0.05}, {"params": ps[2:]}]


def loss_fn(ps, t):
    # a noisy quadratic, so losses plateau now and then (ReduceLROnPlateau has something to do)
    g = torch.Generator().manual_seed(t)
    return sum(((p - torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5) ** 2).sum() for p in ps)


def closure_for(ps, opt, t):
    def closure():
        opt.zero_grad()
        loss = loss_fn(ps, t)
        loss.backward()
        return loss

    return closure


# name -> (rule, scheduler factory f(optimizer)); rule is "adam" or "sgd" (SGD with momentum 0.9)
SCHEDULERS: dict[str, tuple[str, Callable]] = {
    "StepLR": ("adam", lambda o: S.StepLR(o, step_size=3, gamma=0.5)),
    "MultiStepLR": ("sgd", lambda o: S.MultiStepLR(o, milestones=[3, 7, 12], gamma=0.3)),
    "ConstantLR": ("adam", lambda o: S.ConstantLR(o, factor=0.3, total_iters=5)),
    "LinearLR": ("adam", lambda o: S.LinearLR(o, start_factor=0.2, total_iters=6)),
    "ExponentialLR": ("sgd", lambda o: S.ExponentialLR(o, gamma=0.9)),
    "PolynomialLR": ("adam", lambda o: S.PolynomialLR(o, total_iters=20, power=2.0)),
    "LambdaLR": ("adam", lambda o: S.LambdaLR(o, [lambda e: 0.9**e, lambda e: 1 / (1 + e)])),
    "MultiplicativeLR": ("sgd", lambda o: S.MultiplicativeLR(o, lambda e: 0.95)),
    "CosineAnnealingLR": ("adam", lambda o: S.CosineAnnealingLR(o, T_max=10, eta_min=1e-4)),
    "CosineAnnealingWarmRestarts": ("sgd", lambda o: S.CosineAnnealingWarmRestarts(o, T_0=4, T_mult=2, eta_min=1e-3)),
    "OneCycleLR-betas": ("adam", lambda o: S.OneCycleLR(o, max_lr=[0.1, 0.05], total_steps=STEPS)),
    "OneCycleLR-momentum": ("sgd", lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=STEPS, anneal_strategy="linear")),
    "OneCycleLR-no-cycling": ("adam", lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=STEPS, cycle_momentum=False)),
    "CyclicLR-momentum": ("sgd", lambda o: S.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=3, mode="triangular2")),
    "CyclicLR-betas": ("adam", lambda o: S.CyclicLR(o, base_lr=0.001, max_lr=0.02, step_size_up=4, mode="exp_range", gamma=0.9)),
    "SequentialLR": ("adam", lambda o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.1, total_iters=4), S.ExponentialLR(o, gamma=0.9)], milestones=[4])),
    "ChainedScheduler": ("sgd", lambda o: S.ChainedScheduler(
        [S.ConstantLR(o, factor=0.5, total_iters=3), S.ExponentialLR(o, gamma=0.9)])),
    "ReduceLROnPlateau": ("adam", lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=1, threshold=0.3)),
}  # fmt: skip
WAYS = ["scheduler_cls", "on_modular", "on_lr_module"]


def build(rule, factory, way, ps):
    sched_cls = factory if way == "scheduler_cls" else None
    first = tz.m.Adam() if rule == "adam" else tz.m.SGD(momentum=0.9)
    opt = tz.Modular(groups_of(ps), first, tz.m.LR(0.01, scheduler_cls=sched_cls))
    if way == "on_modular":
        return opt, factory(opt)
    if way == "on_lr_module":
        return opt, factory(opt.get_lr_module())
    return opt, None


def build_ref(rule, factory, qs):
    if rule == "adam":
        ref = torch.optim.Adam(groups_of(qs), lr=0.01)
    else:
        ref = torch.optim.SGD(groups_of(qs), lr=0.01, momentum=0.9)
    return ref, factory(ref)


def step_both(opt, sched, ps, ref, ref_sched, qs, t):
    loss = opt.step(closure_for(ps, opt, t))
    ref_loss = ref.step(closure_for(qs, ref, t))
    plateau = isinstance(ref_sched, S.ReduceLROnPlateau)
    if sched is not None:
        sched.step(loss) if plateau else sched.step()
    ref_sched.step(ref_loss.detach()) if plateau else ref_sched.step()


def assert_matches(opt, ps, ref, qs, t):
    for g, rg in zip(opt.param_groups, ref.param_groups, strict=True):
        assert math.isclose(g["lr"], rg["lr"], rel_tol=1e-12, abs_tol=1e-15), f"step {t}: lr {g['lr']} vs {rg['lr']}"
        for key in ("betas", "momentum"):
            if key in rg:
                assert g[key] == pytest.approx(rg[key], rel=1e-12), f"step {t}: {key} {g[key]} vs {rg[key]}"
    for p, q in zip(ps, qs, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), msg=lambda m, t=t: f"step {t}: {m}")


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_scheduler_matches_torch_and_resumes(name, way):
    rule, factory = SCHEDULERS[name]
    ps, qs = make_params(), make_params()
    opt, sched = build(rule, factory, way, ps)
    ref, ref_sched = build_ref(rule, factory, qs)
    assert_matches(opt, ps, ref, qs, -1)
    half = STEPS // 2
    lrs = {opt.param_groups[0]["lr"]}
    for t in range(half):
        step_both(opt, sched, ps, ref, ref_sched, qs, t)
        assert_matches(opt, ps, ref, qs, t)
        lrs.add(opt.param_groups[0]["lr"])

    # save mid-run, reload into fresh objects, continue: equals the uninterrupted torch run
    saved_opt = roundtrip(opt.state_dict())
    saved_sched = roundtrip(sched.state_dict()) if sched is not None else None
    fresh = [p.detach().clone().requires_grad_() for p in ps]
    opt2, sched2 = build(rule, factory, way, fresh)
    opt2.load_state_dict(saved_opt)
    if sched2 is not None:
        sched2.load_state_dict(saved_sched)
    for t in range(half, STEPS):
        step_both(opt2, sched2, fresh, ref, ref_sched, qs, t)
        assert_matches(opt2, fresh, ref, qs, t)
        lrs.add(opt2.param_groups[0]["lr"])
    assert len(lrs) > 1, "the schedule never changed lr: the test would not see a broken scheduler"


def test_onecycle_60_steps_adam_lr_and_beta1_step_by_step():
    ps, qs = make_params(1), make_params(1)
    mk = lambda o: S.OneCycleLR(o, max_lr=[0.1, 0.05], total_steps=60)  # noqa: E731
    opt = tz.Modular(groups_of(ps), tz.m.Adam(), tz.m.LR(1e-3, scheduler_cls=mk))
    ref = torch.optim.Adam(groups_of(qs), lr=1e-3)
    ref_sched = mk(ref)
    beta1s = set()
    for t in range(60):
        g = torch.Generator().manual_seed(t)
        for p, q in zip(ps, qs, strict=True):
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            q.grad = p.grad.clone()
        for gi in range(2):  # the values this step will use
            assert opt.param_groups[gi]["lr"] == ref.param_groups[gi]["lr"]
            assert opt.param_groups[gi]["betas"] == ref.param_groups[gi]["betas"]
        beta1s.add(opt.param_groups[0]["betas"][0])
        opt.step()
        ref.step()
        ref_sched.step()
        for p, q in zip(ps, qs, strict=True):
            torch.testing.assert_close(p.detach(), q.detach(), msg=lambda m, t=t: f"step {t}: {m}")
    assert len(beta1s) > 30  # beta1 really cycled


def test_momentum_cycling_reaches_sgd_momentum_with_fused_lr():
    ps, qs = make_params(), make_params()
    mk = lambda o: S.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=3)  # noqa: E731
    opt = tz.Modular(groups_of(ps), tz.m.SGD(momentum=0.9, nesterov=True), tz.m.LR(0.01, scheduler_cls=mk))
    ref = torch.optim.SGD(groups_of(qs), lr=0.01, momentum=0.9, nesterov=True)
    ref_sched = mk(ref)
    seen = set()
    for t in range(12):
        seen.add(opt.param_groups[0]["momentum"])
        opt.step(closure_for(ps, opt, t))
        ref.step(closure_for(qs, ref, t))
        ref_sched.step()
        assert_matches(opt, ps, ref, qs, t)
    assert len(seen) > 3


def test_scheduler_without_lr_module_names_the_fix():
    p = torch.randn(3, requires_grad=True)
    opt = tz.Modular([p], tz.m.Adam())
    with pytest.raises(KeyError, match=r"no tz.m.LR module.*tz.m.LR\(1e-3\)"):
        S.StepLR(opt, step_size=2)
    with pytest.raises(KeyError, match="no tz.m.LR module"):
        S.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    with pytest.raises(ValueError, match=r"no tz.m.LR module.*Add one"):
        opt.get_lr_module()


def test_schedule_state_in_groups_without_lr_module_is_an_error_before_the_step():
    # e.g. a resumed scheduler left 'initial_lr' in the groups, but the chain has no LR: nothing to schedule
    p = torch.randn(3, requires_grad=True)
    opt = tz.Modular([{"params": [p], "initial_lr": 0.1}], tz.m.Adam())
    p.grad = torch.ones(3)
    before = p.detach().clone()
    with pytest.raises(RuntimeError, match=r"no tz.m.LR module.*Add tz.m.LR\(lr\)"):
        opt.step()
    torch.testing.assert_close(p.detach(), before)
    assert len(opt.state) == 0


def test_plateau_scheduler_cls_without_closure_fails_before_anything_changes():
    p = torch.randn(3, requires_grad=True)
    opt = tz.Modular([p], tz.m.Adam(), tz.m.LR(0.1, scheduler_cls=lambda o: S.ReduceLROnPlateau(o)))
    p.grad = torch.ones(3)
    before = p.detach().clone()
    with pytest.raises(RuntimeError, match=r"needs a closure.*scheduler.step\(val_loss\)"):
        opt.step()
    torch.testing.assert_close(p.detach(), before)
    assert len(opt.state) == 0
    opt.step(lambda: (p**2).sum())  # with a closure it works
    assert not torch.equal(p.detach(), before)


def test_only_the_first_lr_module_may_own_a_scheduler():
    p = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="first LR module"):
        tz.Modular([p], tz.m.LR(1.0), tz.m.Adam(), tz.m.LR(0.1, scheduler_cls=lambda o: S.StepLR(o, 2)))


@pytest.mark.parametrize("owner", ["LR", "Adam"])
def test_scheduler_cls_with_an_lr_from_set_params_is_an_error(owner):
    """An lr from set_params wins over the group's lr, so a scheduler_cls could never change it: refuse at build."""
    p, q = torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True)
    lr = tz.m.LR(0.1, scheduler_cls=lambda o: S.StepLR(o, 2, 0.5))
    adam = tz.m.Adam()
    (lr if owner == "LR" else adam).set_params([{"params": [q], "lr": 0.01}])
    with pytest.raises(ValueError, match=f"{owner}.set_params group 0 sets lr=0.01.*optimizer's param groups"):
        tz.Modular([p, q], adam, lr)
    # per-group lrs in the optimizer's groups are scheduled like torch's
    p2, q2 = p.detach().clone().requires_grad_(), q.detach().clone().requires_grad_()
    opt = tz.Modular([{"params": [p]}, {"params": [q], "lr": 0.01}], tz.m.Adam(),
                     tz.m.LR(0.1, scheduler_cls=lambda o: S.StepLR(o, 2, 0.5)))  # fmt: skip
    ref = torch.optim.Adam([{"params": [p2]}, {"params": [q2], "lr": 0.01}], lr=0.1)
    ref_sched = S.StepLR(ref, 2, 0.5)
    for t in range(5):
        for a, b in ((p, p2), (q, q2)):
            a.grad = torch.full_like(a, 1.0 + t)
            b.grad = a.grad.clone()
        opt.step()
        ref.step()
        ref_sched.step()
    torch.testing.assert_close(p.detach(), p2.detach())
    torch.testing.assert_close(q.detach(), q2.detach())


def test_lr_module_found_when_nested_and_drives_lr():
    p = torch.randn(3, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    opt = tz.Modular([p], [tz.m.Adam(), [tz.m.Cautious(), tz.m.LR(0.1)]])
    lr_module = opt.get_lr_module()
    assert isinstance(lr_module, tz.m.LR) and lr_module.param_groups is opt.param_groups
    sched = S.StepLR(lr_module, step_size=1, gamma=0.5)
    ref = torch.optim.Adam([q], lr=0.1)
    ref_sched = S.StepLR(ref, step_size=1, gamma=0.5)
    for t in range(5):
        p.grad = torch.full((3,), 1.0 + t)
        q.grad = p.grad.clone()
        opt.step()
        ref.step()
        sched.step()
        ref_sched.step()
        assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"]
        torch.testing.assert_close(p.detach(), q.detach())
