"""tz.Modular behaves as a torch.optim.Optimizer: zero_grad, add_param_group, hooks, repr, schedulers."""

import pytest
import torch

import torchzero as tz

from .helpers import clone_params, make_params, set_grads


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(set_to_none):
    params = make_params()
    opt = tz.Modular(params, tz.m.Adam(), tz.m.LR())
    set_grads(0, params)
    opt.zero_grad(set_to_none=set_to_none)
    for p in params:
        assert (p.grad is None) if set_to_none else bool((p.grad == 0).all())


def test_add_param_group_matches_torch():
    a, b = make_params(), make_params(seed=2)
    ra, rb = clone_params(a), clone_params(b)
    opt = tz.Modular(a, tz.m.Adam(), tz.m.LR(1e-2))
    ref = torch.optim.Adam(ra, lr=1e-2)
    set_grads(0, a, ra)
    opt.step()
    ref.step()
    opt.add_param_group({"params": b, "lr": 0.1})
    ref.add_param_group({"params": rb, "lr": 0.1})
    for i in range(1, 4):
        set_grads(i, a + b, ra + rb)
        opt.step()
        ref.step()
    # the new group's Adam state starts at the module's step count (documented), so compare the old group only
    for p, q in zip(a, ra, strict=True):
        torch.testing.assert_close(p, q)


def test_step_hooks_run():
    params = make_params()
    opt = tz.Modular(params, tz.m.SGD(), tz.m.LR())
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    set_grads(0, params)
    opt.step()
    assert calls == ["pre", "post"]


def test_repr_shows_chain_and_overrides():
    params = make_params()
    opt = tz.Modular(
        [{"params": params[:1], "lr": 0.5, "eps": 1e-4}, {"params": params[1:]}], tz.m.Adam(), tz.m.LR(1e-3)
    )
    text = repr(opt)
    assert "0: Adam(" in text and "1: LR(lr=0.001)" in text
    assert "group 0: 1 params, lr=0.5, eps=0.0001" in text
    assert "group 1: 1 params\n" in text


@pytest.mark.parametrize("where", ["modular", "lr_module"])
def test_torch_scheduler_on_modular_matches_torch(where):
    a = make_params()
    b = clone_params(a)
    opt = tz.Modular(a, tz.m.Adam(), tz.m.LR(1e-2))
    ref = torch.optim.Adam(b, lr=1e-2)
    target = opt if where == "modular" else opt.get_lr_module()
    s1 = torch.optim.lr_scheduler.StepLR(target, step_size=2, gamma=0.3)
    s2 = torch.optim.lr_scheduler.StepLR(ref, step_size=2, gamma=0.3)
    for i in range(7):
        set_grads(i, a, b)
        opt.step()
        ref.step()
        s1.step()
        s2.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(ref.param_groups[0]["lr"])
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q)


def test_one_cycle_momentum_on_modular_matches_torch():
    a = make_params()
    b = clone_params(a)
    opt = tz.Modular(a, tz.m.Adam(), tz.m.LR(1e-2))
    ref = torch.optim.Adam(b, lr=1e-2)
    s1 = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=30)
    s2 = torch.optim.lr_scheduler.OneCycleLR(ref, max_lr=0.05, total_steps=30)
    for i in range(30):
        set_grads(i, a, b)
        opt.step()
        ref.step()
        s1.step()
        s2.step()
        assert opt.param_groups[0]["betas"] == pytest.approx(ref.param_groups[0]["betas"])
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q)


def test_scheduler_without_lr_module_errors_on_step():
    params = make_params()
    opt = tz.Modular(params, tz.m.Adam())
    opt.param_groups[0]["initial_lr"] = 0.1  # what a scheduler leaves behind
    set_grads(0, params)
    with pytest.raises(RuntimeError, match=r"no tz.m.LR"):
        opt.step()
    with pytest.raises(ValueError, match=r"no tz.m.LR"):
        opt.get_lr_module()


def test_step_without_any_grad_still_counts_for_schedulers():
    params = make_params()
    ref_params = clone_params(params)
    opt = tz.Modular(
        params, tz.m.Adam(), tz.m.LR(0.1, scheduler_cls=lambda o: torch.optim.lr_scheduler.StepLR(o, 1, 0.5))
    )
    ref = torch.optim.Adam(ref_params, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(ref, 1, 0.5)
    opt.step()  # no grads at all: torch steps nothing, but the scheduler still advances
    ref.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"] == 0.05
