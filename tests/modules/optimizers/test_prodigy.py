"""Prodigy against ``prodigyopt.Prodigy`` 1.1.2 (the parity harness of ``tests.parity``).

Two param groups (different ``eps`` and ``weight_decay``, the settings the reference reads per group), 20
steps with gradients that feed back from the parameters, a save/load round trip into a fresh optimizer in
the middle, float32 and float64.  The reference estimates one d over all groups and needs the same
``lr`` everywhere; it treats complex parameters as complex (``torch.dot`` without conjugation), not as real
views, so complex is checked by the contract suite only.

Tolerance: the default of ``torch.testing.assert_close`` (same operations, same order; d is a float64 tensor
where the reference has a Python float), except float32 with decoupled weight decay.  There the reference
writes ``x - lambda*eta*x`` and then ``x - eta*q``, and the sink ``x - (eta*q + lambda*eta*x)``: one rounding
apart per step.  Prodigy's numerator ``<g, x0 - x>`` subtracts two nearly equal float32 numbers (the first
steps move x by about d0 = 1e-6), so that last bit is amplified: 5e-4 after 20 steps, while the reference's
own float32 run is 0.1 away from its float64 run (``test_prodigy_float32_is_as_close_to_float64_as_the_reference``).
"""

from __future__ import annotations

import pytest
import torch
from prodigyopt import Prodigy as RefProdigy

import torchzero as tz
from tests.parity import DTYPES, Case, assert_resume_is_bit_exact, make_params, run_parity, save_load, set_grads

F32_DECAY = {"f32": {"atol": 2e-3, "rtol": 2e-3}}
CASES = [
    Case("prodigy", lambda: [tz.m.Prodigy()], lambda g: RefProdigy(g),
         groups=({"eps": 1e-6}, {"eps": 1e-8}), dtypes=("f32", "f64")),
    Case("prodigy_weight_decay", lambda: [tz.m.Prodigy()], lambda g: RefProdigy(g),
         groups=({"eps": 1e-6}, {"weight_decay": 0.1}), dtypes=("f32", "f64"), tol=F32_DECAY),
    Case("prodigy_options",
         lambda: [tz.m.Prodigy(lr=0.5, betas=(0.8, 0.99), beta3=0.9, use_bias_correction=True, safeguard_warmup=True,
                               d0=1e-5, d_coef=2.0, growth_rate=1.5)],
         lambda g: RefProdigy(g, lr=0.5, betas=(0.8, 0.99), beta3=0.9, use_bias_correction=True, safeguard_warmup=True,
                              d0=1e-5, d_coef=2.0, growth_rate=1.5),
         groups=({"weight_decay": 0.05}, {"eps": 1e-6}), dtypes=("f32", "f64"), tol=F32_DECAY),
    Case("prodigy_no_momentum", lambda: [tz.m.Prodigy(betas=(0.0, 0.999))], lambda g: RefProdigy(g, betas=(0.0, 0.999)),
         groups=({"eps": 1e-6}, {}), dtypes=("f32", "f64")),
    Case("prodigy_coupled_weight_decay", lambda: [tz.m.WeightDecay(0.1), tz.m.Prodigy()],
         lambda g: RefProdigy(g, weight_decay=0.1, decouple=False), groups=({}, {"eps": 1e-6}), dtypes=("f32", "f64")),
]  # fmt: skip

MATRIX = [pytest.param(c, d, id=f"{c.name}-{d}") for c in CASES for d in c.dtypes]


@pytest.mark.parametrize(("case", "dtype"), MATRIX)
def test_prodigy_equals_prodigyopt(case, dtype):
    run_parity(case, DTYPES[dtype])


def _run(kind: str, dtype: torch.dtype) -> list[torch.Tensor]:
    groups = make_params(dtype)
    settings = ({"eps": 1e-6}, {"weight_decay": 0.1})
    pg = [{"params": ps, **s} for ps, s in zip(groups, settings, strict=True)]
    opt = tz.Modular(pg, tz.m.Prodigy()) if kind == "tz" else RefProdigy(pg)
    flat = [p for ps in groups for p in ps]
    for t in range(20):
        set_grads(t, 0.5, flat)
        opt.step()
    return [p.detach().double() for p in flat]


def test_prodigy_float32_is_as_close_to_float64_as_the_reference():
    truth = _run("ref", torch.float64)

    def error(run):
        return max(float((a - b).abs().max()) for a, b in zip(run, truth, strict=True))

    assert error(_run("tz", torch.float32)) <= 1.1 * error(_run("ref", torch.float32))


def test_prodigy_group_with_two_dtypes_equals_prodigyopt():
    """One param group holding float32 and float64 tensors: two segments, one d reduced over both."""
    gen = torch.Generator().manual_seed(0)
    shapes = [((4, 3), torch.float32), ((5,), torch.float64), ((2, 3), torch.float64), ((3,), torch.float32)]
    ours = [torch.randn(s, generator=gen, dtype=torch.float64).to(d).requires_grad_() for s, d in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt = tz.Modular([{"params": ours[:3]}, {"params": ours[3:], "eps": 1e-6}], tz.m.Prodigy())
    ref = RefProdigy([{"params": theirs[:3]}, {"params": theirs[3:], "eps": 1e-6}])
    for t in range(15):
        set_grads(t, 0.5, ours, theirs)
        opt.step()
        ref.step()
        for p, q in zip(ours, theirs, strict=True):
            torch.testing.assert_close(p, q)


def test_prodigy_state_dict_resumes_bit_exactly():
    assert_resume_is_bit_exact(
        lambda gs: tz.Modular([p for ps in gs for p in ps], tz.m.Prodigy(weight_decay=0.01, use_bias_correction=True)),
        shapes=(((3, 2), (4,)),),
    )


def test_prodigy_refuses_different_d_settings_per_group():
    (a, b) = make_params(torch.float32)
    opt = tz.Modular([{"params": a}, {"params": b, "lr": 0.5}], tz.m.Prodigy())
    set_grads(0, 0.5, a + b)
    with pytest.raises(ValueError, match=r"\['lr'\] must be the same in every param group"):
        opt.step()


def test_prodigy_zero_gradients_move_nothing():
    (ps,) = make_params(torch.float32, (((3, 2), (4,)),))
    before = [p.detach().clone() for p in ps]
    opt = tz.Modular(ps, tz.m.Prodigy(weight_decay=0.1))
    for _ in range(3):
        for p in ps:
            p.grad = torch.zeros_like(p)
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, before, strict=True))


@pytest.mark.parametrize("module", ["Prodigy", "DAdaptAdam"])
def test_the_estimate_is_kept_once_and_the_per_parameter_form_still_loads(module):
    """The shared scalars (d and its sums) live in one parameter's state, as the references keep them once per
    optimizer; a state dict of the earlier form, with a copy in every parameter, resumes bit-exactly (the widest
    copy is read) and the first step drops the extra copies."""
    names = {"Prodigy": ("d", "d_max", "d_numerator"), "DAdaptAdam": ("d", "numerator_weighted")}[module]
    (ps,) = make_params(torch.float32, (((3, 2), (4,), (5,)),))
    twin = [p.detach().clone().requires_grad_() for p in ps]
    o1, o2 = (tz.Modular(x, getattr(tz.m, module)()) for x in (ps, twin))
    for t in range(6):
        set_grads(t, 0.5, ps, twin)
        o1.step()
        o2.step()
        holders = [p for p in ps if names[0] in o1.state[p]["0"]]
        assert len(holders) == 1, f"step {t}: {len(holders)} parameters hold {names[0]}"
        if t == 2:  # save in the earlier form: every parameter holds a copy of each scalar
            sd = save_load(o2.state_dict())
            (held,) = [s["0"] for s in sd["state"].values() if names[0] in s["0"]]
            for s in sd["state"].values():
                s["0"].update({n: held[n].clone() for n in names})
            o2 = tz.Modular(twin, getattr(tz.m, module)())
            o2.load_state_dict(sd)
    for p, q in zip(ps, twin, strict=True):
        assert torch.equal(p, q)
    assert sum(names[0] in o2.state[p]["0"] for p in twin) == 1
