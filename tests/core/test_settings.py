"""The settings mechanism: scope of group keys, set_params, exposed keys, run-time writes."""

import pytest
import torch

import torchzero as tz

from .helpers import Recorder, Scale, make_params


def _step(opt):
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.ones_like(p)
    opt.step()


def test_group_key_reaches_only_modules_that_declare_it():
    a, b = make_params(), make_params(seed=1)
    rec = Recorder()
    opt = tz.Modular([{"params": a, "eps": 1e-5}, {"params": b}], rec, tz.m.Adam(), tz.m.LR(1e-3))
    _step(opt)
    assert [s["eps"] for s in rec.seen] == [1e-5, 0.5]
    # Adam declares eps too, so it gets group 0's value; LR does not declare eps
    assert "eps" not in opt.modules[2].defaults


def test_defaults_never_leak_between_modules():
    # Recorder's alpha default (1.0) and Scale's alpha (3.0) are independent
    rec, scale = Recorder(alpha=1.0), Scale(alpha=3.0)
    opt = tz.Modular(make_params(), scale, rec, tz.m.LR(1.0))
    _step(opt)
    assert rec.seen[0]["alpha"] == 1.0


def test_set_params_wins_over_modular_groups_and_is_scoped():
    a, b = make_params(), make_params(seed=1)
    rec, other = Recorder(), Recorder()
    rec.set_params([{"params": a, "eps": 7.0}])
    opt = tz.Modular([{"params": a, "eps": 1e-5}, {"params": b, "eps": 2e-5}], rec, other, tz.m.LR())
    _step(opt)
    assert sorted(s["eps"] for s in rec.seen) == [2e-5, 7.0]
    assert sorted(s["eps"] for s in other.seen) == [1e-5, 2e-5]


def test_set_params_unknown_key_names_valid_ones():
    params = make_params()
    adam = tz.m.Adam().set_params([{"params": params, "momentum": 1.0}])
    with pytest.raises(KeyError, match=r"no module in this chain.*Adam's settings are \['alpha'"):
        tz.Modular(params, adam, tz.m.LR())


def test_set_params_key_of_another_module_applies_to_listed_params():
    # the FAQ's example: 'lr' in Adam's own groups sets the learning rate of those parameters
    a, b = make_params(), make_params(seed=1)
    ra, rb = [p.detach().clone().requires_grad_() for p in a], [p.detach().clone().requires_grad_() for p in b]
    adam = tz.m.Adam().set_params([{"params": a, "lr": 1e-2, "eps": 1e-5}, {"params": b}])
    opt = tz.Modular(a + b, adam, tz.m.LR(1e-3))
    ref = torch.optim.Adam([{"params": ra, "lr": 1e-2, "eps": 1e-5}, {"params": rb}], lr=1e-3)
    for i in range(5):
        for p, q in zip(a + b, ra + rb, strict=True):
            p.grad = q.grad = torch.full_like(p, float(i + 1))
        opt.step()
        ref.step()
    for p, q in zip(a + b, ra + rb, strict=True):
        torch.testing.assert_close(p, q)


def test_set_params_with_foreign_param_is_an_error():
    adam = tz.m.Adam().set_params([{"params": make_params(seed=5), "eps": 1.0}])
    with pytest.raises(ValueError, match="not among the optimizer's parameters"):
        tz.Modular(make_params(), adam, tz.m.LR())


def test_unknown_group_key_is_an_error_naming_modules():
    with pytest.raises(KeyError, match=r"'momentum'.*Adam: betas"):
        tz.Modular([{"params": make_params(), "momentum": 0.9}], tz.m.Adam(), tz.m.LR())
    with pytest.raises(KeyError, match=r"add tz.m.LR"):
        tz.Modular([{"params": make_params(), "lr": 0.1}], tz.m.Adam())
    opt = tz.Modular(make_params(), tz.m.Adam(), tz.m.LR())
    with pytest.raises(KeyError, match="weight_decay"):
        opt.add_param_group({"params": make_params(seed=3), "weight_decay": 0.1})
    assert len(opt.param_groups) == 1


def test_exposed_keys_in_defaults_and_groups():
    opt = tz.Modular(make_params(), tz.m.SGD(momentum=0.8), tz.m.Adam(betas=(0.5, 0.6)), tz.m.LR(0.3))
    assert opt.defaults == {"lr": 0.3, "betas": (0.5, 0.6), "momentum": 0.8, "maximize": False}
    assert {"lr", "betas", "momentum", "maximize"} <= set(opt.param_groups[0])
    assert all(type(g) is not list for g in opt.param_groups) and all(isinstance(g, dict) for g in opt.param_groups)


def test_exposed_default_does_not_override_second_owner_candidate():
    first, second = tz.m.Adam(betas=(0.9, 0.99)), tz.m.Adam(betas=(0.5, 0.5))
    rec = []

    class Spy(tz.Module):
        def step(self, ctx):
            rec.append([s.settings["betas"] for s in ctx.segments(second)])

    opt = tz.Modular(make_params(), first, second, Spy(), tz.m.LR())
    _step(opt)
    assert rec[-1] == [(0.5, 0.5)]
    # a scheduler-style write changes the group value: now it applies to every module declaring betas
    opt.param_groups[0]["betas"] = (0.7, 0.99)
    _step(opt)
    assert rec[-1] == [(0.7, 0.99)]


def test_runtime_group_write_is_seen_next_step():
    p = torch.zeros(3, requires_grad=True)
    opt = tz.Modular([p], tz.m.LR(1.0))
    p.grad = torch.ones(3)
    opt.step()
    torch.testing.assert_close(p.detach(), -torch.ones(3))
    opt.param_groups[0]["lr"] = 0.5
    opt.step()
    torch.testing.assert_close(p.detach(), -1.5 * torch.ones(3))


def test_uniform_settings_required_by_global_modules():
    class Global(tz.Module):
        uniform_settings = True

        def __init__(self):
            super().__init__({"eps": 1.0})

        def step(self, ctx):
            ctx.settings(self)

    a, b = make_params(), make_params(seed=1)
    with pytest.raises(ValueError, match="same in every param group"):  # refused when built
        tz.Modular([{"params": a, "eps": 1.0}, {"params": b, "eps": 2.0}], Global(), tz.m.LR())
    same = tz.Modular([{"params": a}, {"params": b, "eps": 1.0}], Global(), tz.m.LR())
    _step(same)
    with pytest.raises(ValueError, match="same in every param group"):  # refused when added
        same.add_param_group({"params": make_params(seed=2), "eps": 3.0})
    assert len(same.param_groups) == 2
    same.param_groups[1]["eps"] = 5.0  # changed at run time (a scheduler could): refused before the step
    before = [p.detach().clone() for p in a + b]
    with pytest.raises(ValueError, match="same in every param group"):
        _step(same)
    assert all(torch.equal(x, y) for x, y in zip(before, a + b, strict=True))


def test_segments_merge_groups_with_equal_settings():
    a, b, c = make_params(), make_params(seed=1), make_params(seed=2)
    rec = Recorder()
    opt = tz.Modular([{"params": a}, {"params": b, "lr": 0.5}, {"params": c}], rec, tz.m.LR(1.0))
    _step(opt)
    assert len(rec.seen) == 1 and rec.seen[0]["n"] == 6  # the lr differs, Recorder's settings do not


def test_missing_lr_key_error_mentions_fix():
    opt = tz.Modular(make_params(), tz.m.Adam())
    with pytest.raises(KeyError, match=r"tz.m.LR"):
        torch.optim.lr_scheduler.StepLR(opt, 1)
