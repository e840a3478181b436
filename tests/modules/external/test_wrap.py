"""tz.m.Wrap: torch optimizers as modules, against the unwrapped optimizers."""

from __future__ import annotations

import pytest
import torch

import torchzero as tz

from .helpers import assert_same, feed, params_and_copy, roundtrip

# (class, kwargs of both groups, group-0 overrides): the overrides are given in the Modular's group
WRAPPABLE = [
    (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}, {"momentum": 0.5}),
    (torch.optim.SGD, {"lr": 0.05, "weight_decay": 0.1, "momentum": 0.0}, {"weight_decay": 0.3}),
    (torch.optim.Adam, {"lr": 0.01, "betas": (0.9, 0.99), "amsgrad": True}, {"betas": (0.8, 0.9)}),
    (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}, {"weight_decay": 0.5}),
    (torch.optim.RMSprop, {"lr": 0.01, "centered": True, "momentum": 0.5}, {"alpha": 0.9}),
    (torch.optim.Adagrad, {"lr": 0.1, "lr_decay": 0.01}, {"eps": 1e-3}),
    (torch.optim.Adadelta, {"lr": 1.0, "rho": 0.9}, {"rho": 0.5}),
    (torch.optim.Adamax, {"lr": 0.01}, {"eps": 1e-4}),
    (torch.optim.NAdam, {"lr": 0.01, "momentum_decay": 4e-3}, {"momentum_decay": 1e-2}),
    (torch.optim.RAdam, {"lr": 0.01}, {"betas": (0.5, 0.9)}),
    (torch.optim.Rprop, {"lr": 0.01}, {"etas": (0.4, 1.3)}),
    (torch.optim.ASGD, {"lr": 0.01, "t0": 3}, {"lambd": 1e-2}),
]
IDS = [f"{c.__name__}-{'-'.join(kw)}" for c, kw, _ in WRAPPABLE]


def wrap_pair(cls, kwargs, override, dtype=torch.float32):
    ps, qs = params_and_copy(dtype)
    kw = dict(kwargs)
    defaults = cls([torch.zeros(1)]).defaults
    for k in override:  # Wrap declares its keyword arguments as settings, so groups may override them
        kw.setdefault(k, defaults[k])
    opt = tz.Modular([{"params": ps[:2], **override}, {"params": ps[2:]}], tz.m.Wrap(cls, **kw))
    ref = cls([{"params": qs[:2], **override}, {"params": qs[2:]}], **kw)
    return ps, qs, opt, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cls, kwargs, override", WRAPPABLE, ids=IDS)
def test_last_module_equals_unwrapped_with_per_group_settings(cls, kwargs, override, dtype):
    ps, qs, opt, ref = wrap_pair(cls, kwargs, override, dtype)
    for t in range(20):
        feed(t, ps, qs)
        opt.step()
        ref.step()
        assert_same(ps, qs, msg=lambda m, t=t: f"step {t}: {m}")


@pytest.mark.parametrize("cls, kwargs, override", WRAPPABLE, ids=IDS)
def test_state_dict_round_trip_mid_run(cls, kwargs, override):
    ps, qs, opt, ref = wrap_pair(cls, kwargs, override)
    for t in range(6):
        feed(t, ps, qs)
        opt.step()
        ref.step()
    sd = roundtrip(opt.state_dict())
    # fresh objects, reloaded, continue: equals the uninterrupted reference
    fresh = [p.detach().clone().requires_grad_() for p in ps]
    kw = dict(opt.modules[0].kwargs)
    opt2 = tz.Modular([{"params": fresh[:2], **override}, {"params": fresh[2:]}], tz.m.Wrap(cls, **kw))
    opt2.load_state_dict(sd)
    for t in range(6, 12):
        feed(t, fresh, qs)
        opt2.step()
        ref.step()
        assert_same(fresh, qs, msg=lambda m, t=t: f"step {t}: {m}")


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.SGD, torch.optim.RMSprop, torch.optim.Adagrad])
def test_fused_lr_equals_torch_with_per_group_lr(cls):
    ps, qs = params_and_copy()
    opt = tz.Modular([{"params": ps[:2], "lr": 0.03}, {"params": ps[2:]}], tz.m.Wrap(cls, lr=1.0), tz.m.LR(0.01))
    ref = cls([{"params": qs[:2], "lr": 0.03}, {"params": qs[2:]}], lr=0.01)
    assert opt.modules[0].fuses_lr
    for t in range(15):
        feed(t, ps, qs)
        opt.step()
        ref.step()
        assert_same(ps, qs)


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.SGD, torch.optim.NAdam])
def test_fused_equals_unfused_right_after_each_scheduler_step(cls):
    ps, qs = params_and_copy(torch.float64)
    kw = {"momentum": 0.9} if cls is torch.optim.SGD else {}
    fused = tz.Modular(ps, tz.m.Wrap(cls, lr=1.0, fuse=True, **kw), tz.m.LR(0.01))
    unfused = tz.Modular(qs, tz.m.Wrap(cls, lr=1.0, fuse=True, **kw), tz.m.LR(0.01), fuse=False)
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.7) for o in (fused, unfused)]
    for t in range(10):
        feed(t, ps, qs)
        fused.step()
        unfused.step()
        for s in scheds:
            s.step()
        assert_same(ps, qs, msg=lambda m, t=t: f"step {t} (lr {fused.param_groups[0]['lr']}): {m}")


@pytest.mark.parametrize("cls", [torch.optim.Rprop, torch.optim.ASGD, torch.optim.LBFGS])
def test_no_fusion_by_default_where_the_step_is_not_proportional_to_lr(cls):
    # Rprop starts its step sizes at lr and then ignores it, so fusing LR into its lr would change it
    assert not tz.m.Wrap(cls).fuses_lr
    assert tz.m.Wrap(cls, fuse=True).fuses_lr
    assert tz.m.Wrap(torch.optim.Adam).fuses_lr and not tz.m.Wrap(torch.optim.Adam, fuse=False).fuses_lr


def test_not_last_measures_and_undoes_by_copy_without_set(monkeypatch):
    ps, qs = params_and_copy(torch.float64)
    ptrs = [p.data_ptr() for p in ps]

    def no_set(*a, **k):
        raise AssertionError("Tensor.set_ must not be used")

    monkeypatch.setattr(torch.Tensor, "set_", no_set)
    # SGD(lr=1) then Mul(0.5) then LR(0.2): torch SGD with lr 0.1
    opt = tz.Modular(ps, tz.m.Wrap(torch.optim.SGD, lr=1.0, momentum=0.9), tz.m.Mul(0.5), tz.m.LR(0.2))
    ref = torch.optim.SGD(qs, lr=0.1, momentum=0.9)
    for t in range(10):
        feed(t, ps, qs)
        grads = [p.grad for p in ps]
        opt.step()
        ref.step()
        assert_same(ps, qs)
        assert all(p.grad is g for p, g in zip(ps, grads, strict=True))  # the update was lent to .grad and given back
    assert [p.data_ptr() for p in ps] == ptrs


def test_after_other_modules_gets_their_update_as_grad():
    ps, qs = params_and_copy()
    opt = tz.Modular(ps, tz.m.ClipNorm(1.0), tz.m.Wrap(torch.optim.Adam, lr=1.0), tz.m.LR(0.01))
    ref = torch.optim.Adam(qs, lr=0.01)
    for t in range(10):
        feed(t, ps, qs)
        opt.step()
        torch.nn.utils.clip_grad_norm_(qs, 1.0)
        ref.step()
        assert_same(ps, qs)


def test_onecycle_momentum_cycling_reaches_the_wrapped_optimizer():
    ps, qs = params_and_copy()
    opt = tz.Modular(ps, tz.m.Wrap(torch.optim.Adam, lr=1.0, betas=(0.9, 0.999)), tz.m.LR(0.01))
    ref = torch.optim.Adam(qs, lr=0.01)
    mk = lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=20)  # noqa: E731
    s1, s2 = mk(opt), mk(ref)
    for t in range(20):
        feed(t, ps, qs)
        opt.step()
        ref.step()
        assert opt.modules[0].optimizer.param_groups[0]["betas"] == ref.param_groups[0]["betas"]
        assert_same(ps, qs)
        s1.step()
        s2.step()


def test_set_params_groups_reach_the_wrapped_optimizer():
    ps, qs = params_and_copy()
    wrap = tz.m.Wrap(torch.optim.SGD, lr=0.1, momentum=0.9).set_params([{"params": [ps[1]], "momentum": 0.0}])
    opt = tz.Modular(ps, wrap)
    ref = torch.optim.SGD([{"params": [qs[0], qs[2]]}, {"params": [qs[1]], "momentum": 0.0}], lr=0.1, momentum=0.9)
    for t in range(8):
        feed(t, ps, qs)
        opt.step()
        ref.step()
        assert_same(ps, qs)


def test_settings_from_another_modules_set_params_reach_the_wrapped_optimizer():
    """A module before Wrap that does not declare momentum gives it to some parameters by set_params: they get
    a wrapped group of their own (the settings may differ inside one torch group)."""
    ps, qs = params_and_copy()
    first = tz.m.Clone().set_params([{"params": [ps[1]], "momentum": 0.0}, {"params": [ps[2]], "momentum": 0.5}])
    opt = tz.Modular(ps, first, tz.m.Wrap(torch.optim.SGD, lr=0.1, momentum=0.9))
    ref = torch.optim.SGD(
        [{"params": [qs[0]]}, {"params": [qs[1]], "momentum": 0.0}, {"params": [qs[2]], "momentum": 0.5}],
        lr=0.1, momentum=0.9,
    )  # fmt: skip
    for t in range(6):
        feed(t, ps, qs)
        opt.step()
        ref.step()
        assert_same(ps, qs, rtol=0, atol=0)


def test_added_param_group_reaches_the_wrapped_optimizer():
    ps, qs = params_and_copy()
    opt = tz.Modular(ps[:2], tz.m.Wrap(torch.optim.Adam, lr=0.01))
    ref = torch.optim.Adam(qs[:2], lr=0.01)
    for t in range(3):
        feed(t, ps[:2], qs[:2])
        opt.step()
        ref.step()
    opt.add_param_group({"params": [ps[2]]})
    ref.add_param_group({"params": [qs[2]]})
    for t in range(3, 8):
        feed(t, ps, qs)
        opt.step()
        ref.step()
        assert_same(ps, qs)


def test_complex_params():
    p = torch.randn(4, 3, dtype=torch.complex64, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    opt = tz.Modular([p], tz.m.Wrap(torch.optim.Adam, lr=1.0), tz.m.Mul(1.0), tz.m.LR(0.01))
    ref = torch.optim.Adam([q], lr=0.01)
    for t in range(8):
        feed(t, [p], [q])
        opt.step()
        ref.step()
        torch.testing.assert_close(p.detach(), q.detach())


def test_wrapped_state_lives_in_the_modular_state():
    ps, _ = params_and_copy()
    opt = tz.Modular(ps, tz.m.Wrap(torch.optim.Adam, lr=0.01))
    feed(0, ps)
    opt.step()
    assert set(opt.state[ps[0]]["0"]) == {"step", "exp_avg", "exp_avg_sq"}
    assert opt.modules[0].optimizer.state[ps[0]] is opt.state[ps[0]]["0"]


def test_instance_instead_of_class_says_pass_the_class():
    p = torch.randn(3, requires_grad=True)
    with pytest.raises(TypeError, match="not an optimizer instance"):
        tz.m.Wrap(torch.optim.Adam([p]))


def test_factory_that_returns_something_else():
    p = torch.randn(3, requires_grad=True)
    with pytest.raises(TypeError, match="not a torch.optim.Optimizer"):
        tz.Modular([p], tz.m.Wrap(lambda groups: object()))


def test_pytorch_optimizer_laprop_when_installed():
    po = pytest.importorskip("pytorch_optimizer")
    ps, qs = params_and_copy()
    opt = tz.Modular(ps, tz.m.Wrap(po.LaProp, lr=1.0, betas=(0.9, 0.99)), tz.m.LR(1e-3))
    ref = po.LaProp(qs, lr=1e-3, betas=(0.9, 0.99))
    for t in range(10):
        feed(t, ps, qs)
        opt.step()
        ref.step()
        assert_same(ps, qs)


def test_params_swapped_in_place_in_the_groups_are_followed():
    # Accelerate and FSDP replace group["params"] entries in place after the optimizer is built
    ps, qs = params_and_copy()
    opt = tz.Modular(ps, tz.m.Wrap(torch.optim.Adam, lr=1.0), tz.m.LR(0.01))
    swapped = [p.detach().clone().requires_grad_() for p in ps]
    opt.param_groups[0]["params"][:] = swapped
    ref = torch.optim.Adam(qs, lr=0.01)
    for t in range(5):
        feed(t, swapped, qs)
        opt.step()
        ref.step()
        assert_same(swapped, qs)
    assert_same(ps, params_and_copy()[0])  # the old tensors are not touched


def test_inside_a_branch_the_wrapped_step_is_measured_on_a_copy():
    # u <- u + Adam-step(u): the branch's Wrap is never the last stage, so the parameters stay put during it
    ps, qs = params_and_copy(torch.float64)
    opt = tz.Modular(ps, tz.m.Add(tz.m.Wrap(torch.optim.Adam, lr=1.0)), tz.m.LR(0.01))
    shadow = torch.optim.Adam(qs, lr=1.0)  # gives the Adam step; qs drift, Adam's step does not depend on them
    expected = [p.detach().clone() for p in ps]
    for t in range(6):
        grads = feed(t, ps, qs)
        opt.step()
        old = [q.detach().clone() for q in qs]
        shadow.step()
        for e, g, o, q in zip(expected, grads, old, qs, strict=True):
            e.sub_(0.01 * (g + (o - q.detach())))
        assert_same(ps, expected)
