"""ASGD against ``torch.optim.ASGD``: the parameters and the averaged parameters ``ax``, step by step.

Tolerance: torch's defaults of ``assert_close`` (float32: rtol 1.3e-6, atol 1e-5; float64: rtol/atol 1e-7).
torch stores its step size eta and averaging weight mu as float32 numbers, ours are doubles, so float64 runs
differ from torch by about 1e-8 relative per step, well inside the float64 default.
"""

from __future__ import annotations

import pytest
import torch

import torchzero as tz
from tests.parity import (
    DTYPES,
    Case,
    assert_resume_is_bit_exact,
    clone_params,
    make_params,
    run_parity,
    save_load,
    set_grads,
)

GROUPS = ({"lr": 1e-2, "t0": 5.0, "lambd": 1e-2}, {"lr": 5e-2, "power": 0.5, "lambd": 1e-3, "t0": 2.0})
REF_GROUPS = ({"lr": 1e-2, "t0": 5.0, "lambd": 1e-2}, {"lr": 5e-2, "alpha": 0.5, "lambd": 1e-3, "t0": 2.0})

CASES = [
    Case("asgd", lambda: [tz.m.ASGD(), tz.m.LR(1e-2)], lambda g: torch.optim.ASGD(g, lr=1e-2, foreach=False),
         groups=GROUPS, ref_groups=REF_GROUPS),
    Case("asgd_defaults", lambda: [tz.m.ASGD(), tz.m.LR(1e-2)], lambda g: torch.optim.ASGD(g, lr=1e-2),
         groups=({}, {"lr": 3e-2})),
    Case("asgd_weight_decay", lambda: [tz.m.WeightDecay(0.0), tz.m.ASGD(), tz.m.LR(1e-2)],
         lambda g: torch.optim.ASGD(g, lr=1e-2), groups=({**GROUPS[0], "weight_decay": 0.1}, GROUPS[1]),
         ref_groups=({**REF_GROUPS[0], "weight_decay": 0.1}, REF_GROUPS[1])),
    Case("asgd_alpha_times_lr", lambda: [tz.m.ASGD(alpha=2.0, t0=3.0), tz.m.LR(5e-3)],
         lambda g: torch.optim.ASGD(g, lr=1e-2, t0=3.0), groups=({}, {}), dtypes=("f32", "f64")),
    Case("asgd_no_lr_module", lambda: [tz.m.ASGD(alpha=1e-2, lambd=1e-2)],
         lambda g: torch.optim.ASGD(g, lr=1e-2, lambd=1e-2), groups=({}, {}), dtypes=("f32", "f64")),
]  # fmt: skip


@pytest.mark.parametrize(("case", "dtype"), [pytest.param(c, d, id=f"{c.name}-{d}") for c in CASES for d in c.dtypes])
@pytest.mark.parametrize("reference_mode", [False, True], ids=["foreach", "per_tensor"])
def test_asgd_equals_torch(case, dtype, reference_mode):
    run_parity(case, DTYPES[dtype], reference_mode=reference_mode)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_asgd_unfused_equals_torch(case):
    run_parity(case, torch.float64, fuse=False)


@pytest.mark.parametrize("dtype", ["f32", "f64", "c64"])
def test_averaged_parameters_equal_torch_ax(dtype):
    """``asgd.averaged(opt)`` (and the state key ``ax``) equals torch's ``ax`` after every step, across a
    save/load round trip into a fresh optimizer."""
    dt = DTYPES[dtype]
    groups = make_params(dt)
    ref_groups = clone_params(groups)
    flat, ref_flat = [p for ps in groups for p in ps], [p for ps in ref_groups for p in ps]

    def build():
        asgd = tz.m.ASGD()
        return asgd, tz.Modular(
            [{"params": ps, **s} for ps, s in zip(groups, GROUPS, strict=True)], asgd, tz.m.LR(1e-2)
        )

    asgd, opt = build()
    ref = torch.optim.ASGD([{"params": ps, **s} for ps, s in zip(ref_groups, REF_GROUPS, strict=True)], lr=1e-2)
    for p, a in zip(flat, asgd.averaged(opt), strict=True):  # before any step: the parameters themselves
        assert torch.equal(p, a)
    for t in range(12):
        set_grads(t, 0.5, flat, ref_flat)
        opt.step()
        ref.step()
        averaged = asgd.averaged(opt)
        for i, (p, q, a) in enumerate(zip(flat, ref_flat, averaged, strict=True)):
            torch.testing.assert_close(p, q)
            torch.testing.assert_close(a, ref.state[q]["ax"], msg=lambda m, t=t, i=i: f"step {t + 1}, ax {i}: {m}")
            assert a.data_ptr() == opt.state[p][asgd.key]["ax"].data_ptr()
        if t == 5:
            sd = save_load(opt.state_dict())
            asgd, opt = build()
            opt.load_state_dict(sd)


def test_average_is_of_the_whole_chains_parameters():
    """The average follows the parameters the chain wrote, also when modules come after ASGD."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    asgd = tz.m.ASGD(t0=0.0, lambd=0.0)
    opt = tz.Modular([p], asgd, tz.m.Mul(0.5), tz.m.LR(0.1))
    seen = []
    for _ in range(4):
        p.grad = torch.tensor([1.0, 1.0])
        opt.step()
        seen.append(p.detach().clone())
    # mu_t = 1 / max(1, t - 1): steps 1 and 2 copy, then the running mean of the later iterates
    expected = seen[1] + (seen[2] - seen[1]) / 2
    expected = expected + (seen[3] - expected) / 3
    torch.testing.assert_close(asgd.averaged(opt)[0], expected)


def test_mid_run_state_dict_resumes_bit_exactly():
    def build(gs):
        return tz.Modular([{"params": ps, **s} for ps, s in zip(gs, GROUPS, strict=True)], tz.m.ASGD(), tz.m.LR(1e-2))

    o1, o2 = assert_resume_is_bit_exact(build)
    for x, y in zip(o1.modules[0].averaged(o1), o2.modules[0].averaged(o2), strict=True):
        assert torch.equal(x, y)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="lambd >= 0"):
        tz.m.ASGD(lambd=-1.0)
    with pytest.raises(ValueError, match="t0 >= 0"):
        tz.m.ASGD(t0=-1.0)


@pytest.mark.parametrize("branch", ["true", "false"])
def test_rules_read_the_lr_that_follows_them_in_their_own_branch(branch):
    """In a Split, a rule that needs the lr (ASGD, Adafactor, Lamb) reads its own branch's LR, not the first LR."""
    from pytorch_optimizer import Lamb

    pairs = [
        (lambda: tz.m.ASGD(lambd=1e-2), lambda ps: torch.optim.ASGD(ps, lr=0.3, lambd=1e-2)),
        (lambda: tz.m.Adafactor(), lambda ps: torch.optim.Adafactor(ps, lr=0.3)),
        (lambda: tz.m.Lamb(weight_decay=0.1), lambda ps: Lamb(ps, lr=0.3, weight_decay=0.1)),
    ]
    for rule, reference in pairs:
        torch.manual_seed(0)
        w, b = torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(4))
        w2, b2 = torch.nn.Parameter(w.detach().clone()), torch.nn.Parameter(b.detach().clone())
        mine, other = [rule(), tz.m.LR(0.3)], [tz.m.SGD(), tz.m.LR(0.01)]
        true, false = (mine, other) if branch == "true" else (other, mine)
        opt = tz.Modular([w, b], tz.m.Split(lambda p: p.ndim >= 2, true=true, false=false))
        target, target2 = (w, w2) if branch == "true" else (b, b2)
        ref = reference([target2])
        for step in range(4):
            g = torch.randn(3, 4) if branch == "true" else torch.randn(4)
            w.grad, b.grad = torch.zeros_like(w), torch.zeros_like(b)
            target.grad, target2.grad = g.clone(), g.clone()
            opt.step()
            ref.step()
            torch.testing.assert_close(target, target2, msg=lambda m, s=step, r=rule: f"{r()}: step {s + 1}: {m}")
