"""ADOPT against ``pytorch_optimizer.ADOPT`` 4.1.0 (the parity harness of ``tests.parity``).

Two param groups with different settings, 20 steps with gradients that feed back from the parameters, a
save/load round trip into a fresh optimizer in the middle; float32, float64 and complex64 (the reference
treats a complex parameter as its real view, as torchzero does).  Default tolerance of
``torch.testing.assert_close``: the rule does the same operations in the same order as the reference
(division by the clamped root, clamp, lerp, ``add_(alpha=-lr)``), so only the reference's own foreach vs
per-tensor paths could differ, within rounding.
"""

from __future__ import annotations

import pytest
import torch
from pytorch_optimizer import ADOPT as RefADOPT

import torchzero as tz
from tests.parity import DTYPES, Case, make_params, run_parity, save_load, set_grads

CASES = [
    Case("adopt", lambda: [tz.m.ADOPT(), tz.m.LR(1e-2)], lambda g: RefADOPT(g, lr=1e-2),
         groups=({"lr": 1e-2, "eps": 1e-4}, {"lr": 3e-2, "betas": (0.8, 0.99)})),
    Case("adopt_no_clip", lambda: [tz.m.ADOPT(clip_lambda=None), tz.m.LR(1e-2)],
         lambda g: RefADOPT(g, lr=1e-2, clip_lambda=None), groups=({"lr": 1e-2}, {"lr": 3e-2, "betas": (0.5, 0.9)})),
    Case("adopt_weight_decay", lambda: [tz.m.WeightDecay(0.0), tz.m.ADOPT(), tz.m.LR(1e-2)],
         lambda g: RefADOPT(g, lr=1e-2), groups=({"lr": 1e-2, "weight_decay": 0.1}, {"lr": 3e-2, "weight_decay": 0.03})),
    Case("adopt_decoupled_weight_decay",
         lambda: [tz.m.ADOPT(), tz.m.LR(1e-2), tz.m.WeightDecay(0.0, scale_by_lr=True)],
         lambda g: RefADOPT(g, lr=1e-2, weight_decouple=True),
         groups=({"lr": 1e-2, "weight_decay": 0.1}, {"lr": 3e-2, "weight_decay": 0.03})),
]  # fmt: skip

MATRIX = [pytest.param(c, d, id=f"{c.name}-{d}") for c in CASES for d in c.dtypes]


@pytest.mark.parametrize(("case", "dtype"), MATRIX)
def test_adopt_equals_pytorch_optimizer(case, dtype):
    run_parity(case, DTYPES[dtype])


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_adopt_unfused_chain_equals_pytorch_optimizer(case):
    run_parity(case, torch.float64, fuse=False)


def test_adopt_first_step_moves_nothing():
    (ps,) = make_params(torch.float32, (((3, 2), (4,)),))
    before = [p.detach().clone() for p in ps]
    opt = tz.Modular(ps, tz.m.ADOPT(), tz.m.LR(0.1))
    set_grads(0, 0.0, ps)
    opt.step()
    assert all(torch.equal(p, b) for p, b in zip(ps, before, strict=True))


def test_adopt_state_dict_resumes_bit_exactly():
    (a,) = make_params(torch.float32, (((3, 2), (4,)),))
    b = [p.detach().clone().requires_grad_() for p in a]
    opt_a = tz.Modular(a, tz.m.ADOPT(), tz.m.LR(0.05))
    opt_b = tz.Modular(b, tz.m.ADOPT(), tz.m.LR(0.05))
    for t in range(8):
        set_grads(t, 0.5, a, b)
        opt_a.step()
        opt_b.step()
        if t == 3:
            opt_b = tz.Modular(b, tz.m.ADOPT(), tz.m.LR(0.05))
            opt_b.load_state_dict(save_load(opt_a.state_dict()))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
