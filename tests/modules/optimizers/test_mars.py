"""MARS against ``pytorch_optimizer.MARS`` 4.1.0 (the parity harness of ``tests.parity``).

The reference runs with ``optimize_1d=True`` (MARS on every parameter; its AdamW for 1-D parameters is a
composition here, see the docstring).  Two param groups with different settings (gamma, betas, the
``lion`` type, ``ams_bound``), 20 steps with gradients that feed back from the parameters, a save/load
round trip into a fresh optimizer in the middle, float32, float64 and complex64 (the reference's
per-tensor path, used on CPU, works on real views, as torchzero does).  Default tolerance of
``torch.testing.assert_close``: the same operations in the same order as the reference's per-tensor path
(the same correction coefficient, the clip ``c / max(1, |c|)`` is the reference's ``if |c| > 1: c / |c|``
without the host read, division by 1 being exact).
"""

from __future__ import annotations

import pytest
import torch
from pytorch_optimizer import MARS as RefMARS

import torchzero as tz
from tests.parity import DTYPES, Case, make_params, run_parity, save_load, set_grads

WD = ({"lr": 1e-2, "weight_decay": 0.1}, {"lr": 3e-2, "weight_decay": 0.03, "gamma": 0.1})
CASES = [
    Case("mars", lambda: [tz.m.MARS(), tz.m.LR(1e-2)], lambda g: RefMARS(g, lr=1e-2, optimize_1d=True),
         groups=({"lr": 1e-2, "eps": 1e-6}, {"lr": 3e-2, "betas": (0.9, 0.999), "gamma": 0.1})),
    Case("mars_ams_bound_and_lion", lambda: [tz.m.MARS(), tz.m.LR(1e-2)],
         lambda g: RefMARS(g, lr=1e-2, optimize_1d=True),
         groups=({"lr": 1e-2, "ams_bound": True}, {"lr": 3e-3, "mars_type": "lion", "gamma": 0.05})),
    Case("mars_decoupled_weight_decay",
         lambda: [tz.m.MARS(), tz.m.LR(1e-2), tz.m.WeightDecay(0.0, scale_by_lr=True)],
         lambda g: RefMARS(g, lr=1e-2, optimize_1d=True), groups=WD),
]  # fmt: skip

MATRIX = [pytest.param(c, d, id=f"{c.name}-{d}") for c in CASES for d in c.dtypes]


@pytest.mark.parametrize(("case", "dtype"), MATRIX)
def test_mars_equals_pytorch_optimizer(case, dtype):
    run_parity(case, DTYPES[dtype])


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_mars_unfused_chain_equals_pytorch_optimizer(case):
    run_parity(case, torch.float64, fuse=False)


def test_mars_keeps_the_previous_gradient():
    (ps,) = make_params(torch.float32, (((3, 2), (4,)),))
    opt = tz.Modular(ps, tz.m.MARS(), tz.m.LR(0.01))
    set_grads(0, 0.0, ps)
    grads = [p.grad.clone() for p in ps]
    opt.step()
    key = opt.state[ps[0]].keys()
    last = [next(iter(opt.state[p].values()))["last_grad"] for p in ps]
    assert len(key) == 1
    assert all(torch.equal(a, b) for a, b in zip(last, grads, strict=True))


def test_mars_state_dict_resumes_bit_exactly():
    (a,) = make_params(torch.float32, (((3, 2), (4,)),))
    b = [p.detach().clone().requires_grad_() for p in a]

    def build(ps):
        return tz.Modular(ps, tz.m.MARS(ams_bound=True), tz.m.LR(0.05))

    opt_a, opt_b = build(a), build(b)
    for t in range(8):
        set_grads(t, 0.5, a, b)
        opt_a.step()
        opt_b.step()
        if t == 3:
            opt_b = build(b)
            opt_b.load_state_dict(save_load(opt_a.state_dict()))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
