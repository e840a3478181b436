"""Momentum cycling reaches the rules' ``betas`` / ``momentum``: OneCycleLR step by step against torch."""

from __future__ import annotations

import pytest
import torch

import torchzero as tz
from tests.parity import clone_params, make_params, set_grads

O = torch.optim  # noqa: E741

CYCLED = {
    "rmsprop_momentum": (lambda: [tz.m.RMSprop(momentum=0.9), tz.m.LR(1e-2)], lambda p: O.RMSprop(p, lr=1e-2, momentum=0.9)),
    "adamax_betas": (lambda: [tz.m.Adamax(), tz.m.LR(1e-2)], lambda p: O.Adamax(p, lr=1e-2)),
    "nadam_betas": (lambda: [tz.m.NAdam(), tz.m.LR(1e-2)], lambda p: O.NAdam(p, lr=1e-2)),
    "radam_betas": (lambda: [tz.m.RAdam(), tz.m.LR(1e-2)], lambda p: O.RAdam(p, lr=1e-2)),
    "heavyball_as_sgd": (lambda: [tz.m.HeavyBall(0.9), tz.m.LR(1e-2)], lambda p: O.SGD(p, lr=1e-2, momentum=0.9)),
}  # fmt: skip


@pytest.mark.parametrize("name", CYCLED)
def test_one_cycle_with_momentum_cycling_equals_torch(name):
    make_tz, make_ref = CYCLED[name]
    groups = make_params(torch.float32)
    ref_groups = clone_params(groups)
    flat, ref_flat = [p for g in groups for p in g], [p for g in ref_groups for p in g]
    opt, ref = tz.Modular(flat, *make_tz()), make_ref(ref_flat)
    kw = {"max_lr": 0.05, "total_steps": 16, "pct_start": 0.4, "cycle_momentum": True}
    sched, ref_sched = O.lr_scheduler.OneCycleLR(opt, **kw), O.lr_scheduler.OneCycleLR(ref, **kw)
    key = "betas" if "betas" in ref.param_groups[0] else "momentum"
    for t in range(16):
        set_grads(t, 0.5, flat, ref_flat)
        opt.step()
        ref.step()
        sched.step()
        ref_sched.step()
        assert opt.param_groups[0][key] == ref.param_groups[0][key], f"step {t + 1}: {key} differs"
        for p, q in zip(flat, ref_flat, strict=True):
            torch.testing.assert_close(p, q, msg=lambda m, t=t: f"{name}, step {t + 1}: {m}")
