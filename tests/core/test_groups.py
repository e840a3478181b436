"""What hosts and schedulers do to param groups: exposed weight decay, metadata keys, a replaced group list.

Each behaviour is compared with the torch.optim optimizer that gets the same treatment.
"""

from __future__ import annotations

import pytest
import torch

import torchzero as tz

from .helpers import clone_params, make_params, set_grads


def _steps(opts_and_params, n, seed=0, between=None):
    for i in range(n):
        for opt, params in opts_and_params:
            set_grads(seed + i, params)
            opt.step()
        if between is not None:
            between(i)


def _assert_same(a, b):
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_weight_decay_module_exposes_its_value_and_a_group_write_reaches_it():
    a = make_params(dtypes=(torch.float64,))
    b = clone_params(a)
    ref = torch.optim.SGD(a, lr=0.1, momentum=0.9, weight_decay=1e-2)
    opt = tz.Modular(b, tz.m.WeightDecay(1e-2), tz.m.SGD(momentum=0.9), tz.m.LR(0.1))
    assert opt.defaults["weight_decay"] == 1e-2
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-2]

    def change(i):  # a scheduler (or a user) writes the group's weight decay
        for o in (ref, opt):
            o.param_groups[0]["weight_decay"] = 0.1 * (i + 1)

    _steps([(ref, a), (opt, b)], 4, between=change)
    _assert_same(a, b)


def test_weight_decay_per_group_override():
    a = make_params(dtypes=(torch.float64,))
    b = clone_params(a)
    ref = torch.optim.SGD([{"params": a[:1], "weight_decay": 0.0}, {"params": a[1:]}], lr=0.1, weight_decay=0.05)
    opt = tz.Modular([{"params": b[:1], "weight_decay": 0.0}, {"params": b[1:]}], tz.m.WeightDecay(0.05), tz.m.LR(0.1))
    _steps([(ref, a), (opt, b)], 3)
    _assert_same(a, b)


def test_chain_without_weight_decay_shows_zero_and_refuses_any_other_value():
    params = make_params()
    opt = tz.Modular(params, tz.m.Adam(), tz.m.LR(1e-3))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0]
    tz.Modular([{"params": params, "weight_decay": 0.0}], tz.m.Adam(), tz.m.LR(1e-3))  # the no-op value is fine
    with pytest.raises(KeyError, match="tz.m.WeightDecay"):
        tz.Modular([{"params": params, "weight_decay": 1e-2}], tz.m.Adam(), tz.m.LR(1e-3))

    set_grads(0, params)
    before = [p.detach().clone() for p in params]
    opt.param_groups[0]["weight_decay"] = 1e-2  # written after construction (a scheduler, by hand)
    with pytest.raises(RuntimeError, match="no module of this chain uses 'weight_decay'"):
        opt.step()
    _assert_same(params, before)
    assert len(opt.state) == 0
    opt.param_groups[0]["weight_decay"] = 0.0
    opt.step()
    assert not all(torch.equal(p, q) for p, q in zip(params, before, strict=True))


@pytest.mark.parametrize("key", ["name", "swa_lr", "initial_lr"])
def test_metadata_keys_are_accepted_and_change_nothing(key):
    a = make_params()
    b = clone_params(a)
    plain = tz.Modular(a, tz.m.Adam(), tz.m.LR(1e-2))
    tagged = tz.Modular([{"params": b, key: "backbone" if key == "name" else 0.5}], tz.m.Adam(), tz.m.LR(1e-2))
    _steps([(plain, a), (tagged, b)], 3)
    _assert_same(a, b)


def test_misspelt_setting_is_still_refused():
    with pytest.raises(KeyError, match="betass"):
        tz.Modular([{"params": make_params(), "betass": (0.9, 0.99), "name": "x"}], tz.m.Adam(), tz.m.LR(1e-3))


def test_replaced_param_groups_are_picked_up_like_torch():
    """Lightning's BaseFinetuning assigns a new list to ``param_groups`` when it resumes a run."""
    a = make_params(dtypes=(torch.float64,), shapes=((4, 3), (5,), (2, 2)))
    b = clone_params(a)
    ref = torch.optim.SGD(a[:1], lr=0.1, momentum=0.9)
    opt = tz.Modular(b[:1], tz.m.SGD(momentum=0.9), tz.m.LR(0.1))
    _steps([(ref, a), (opt, b)], 2)

    for o, ps in ((ref, a), (opt, b)):
        old = o.param_groups[0]
        o.param_groups = [
            {k: v for k, v in old.items()},
            {**{k: v for k, v in old.items() if k != "params"}, "params": ps[1:], "lr": 0.05, "name": "head"},
        ]
    _steps([(ref, a), (opt, b)], 3, seed=10)
    _assert_same(a, b)
    # and an appended group is picked up too
    for o, ps in ((ref, a), (opt, b)):
        o.param_groups[1]["params"] = ps[1:2]
        o.param_groups.append({**{k: v for k, v in o.param_groups[0].items() if k != "params"}, "params": ps[2:]})
    _steps([(ref, a), (opt, b)], 2, seed=20)
    _assert_same(a, b)


def test_replaced_param_groups_are_checked_before_anything_changes():
    params = make_params()
    opt = tz.Modular(params[:1], tz.m.Adam(), tz.m.LR(1e-3))
    set_grads(0, params)
    before = [p.detach().clone() for p in params]
    opt.param_groups = [{**opt.param_groups[0]}, {"params": params[1:], "bettas": (0.9, 0.9)}]
    with pytest.raises(KeyError, match="bettas"):
        opt.step()
    _assert_same(params, before)
    assert len(opt.state) == 0
    opt.param_groups = [{**opt.param_groups[0]}, {"params": params[:1]}]
    with pytest.raises(ValueError, match="repeats a parameter"):
        opt.step()
