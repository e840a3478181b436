"""DAdaptAdam against ``dadaptation.DAdaptAdam`` 3.2 (the parity harness of ``tests.parity``).

Two param groups (different ``eps``, ``weight_decay`` and ``layer_scale``, the settings the reference reads
per group), 20 steps with gradients that feed back from the parameters, a save/load round trip into a fresh
optimizer in the middle, float32 and float64; coupled weight decay (the reference's default) and
decoupled.  The reference estimates one d over all groups and needs the same ``lr`` everywhere; it
treats complex parameters as complex (``torch.dot`` without conjugation), not as real views, so complex is
checked by the contract suite only.

Tolerance: the default of ``torch.testing.assert_close`` (the same operations in the same order; the step is
``addcdiv_(m, sqrt(v) + eps, value=-1)`` as in the reference; d is a float64 tensor where the reference has a
Python float, rounded to the parameters' dtype between steps), except float32 with decoupled weight decay:
the reference writes ``x - lambda*eta*x`` and then ``x - q``, the sink ``x - (q + lambda*eta*x)``, one rounding
apart per step, amplified through d (D-Adaptation's numerator sums products of float32 numbers of very
different sizes); 1e-4 covers it with a margin.
"""

from __future__ import annotations

import pytest
import torch
from dadaptation import DAdaptAdam as RefDAdaptAdam

import torchzero as tz
from tests.parity import DTYPES, Case, assert_resume_is_bit_exact, make_params, run_parity, set_grads

F32_DECAY = {"f32": {"atol": 1e-4, "rtol": 1e-4}}
CASES = [
    Case("dadapt_adam", lambda: [tz.m.DAdaptAdam()], lambda g: RefDAdaptAdam(g),
         groups=({"eps": 1e-6}, {"layer_scale": 0.5}), dtypes=("f32", "f64")),
    Case("dadapt_adam_coupled_weight_decay", lambda: [tz.m.DAdaptAdam()], lambda g: RefDAdaptAdam(g),
         groups=({"weight_decay": 0.1}, {"weight_decay": 0.03, "layer_scale": 2.0}), dtypes=("f32", "f64")),
    Case("dadapt_adam_decoupled_weight_decay", lambda: [tz.m.DAdaptAdam(decouple=True)],
         lambda g: RefDAdaptAdam(g, decouple=True),
         groups=({"weight_decay": 0.1}, {"eps": 1e-6}), dtypes=("f32", "f64"), tol=F32_DECAY),
    Case("dadapt_adam_options",
         lambda: [tz.m.DAdaptAdam(lr=0.5, betas=(0.8, 0.99), use_bias_correction=True, d0=1e-5, growth_rate=1.5)],
         lambda g: RefDAdaptAdam(g, lr=0.5, betas=(0.8, 0.99), use_bias_correction=True, d0=1e-5, growth_rate=1.5),
         groups=({"layer_scale": 0.3}, {"eps": 1e-6}), dtypes=("f32", "f64")),
    Case("dadapt_adam_weight_decay_module_before", lambda: [tz.m.WeightDecay(0.1), tz.m.DAdaptAdam()],
         lambda g: RefDAdaptAdam(g, weight_decay=0.1), groups=({}, {"eps": 1e-6}), dtypes=("f32", "f64")),
]  # fmt: skip

MATRIX = [pytest.param(c, d, id=f"{c.name}-{d}") for c in CASES for d in c.dtypes]


@pytest.mark.parametrize(("case", "dtype"), MATRIX)
def test_dadapt_adam_equals_dadaptation(case, dtype):
    run_parity(case, DTYPES[dtype])


def test_dadapt_adam_group_with_two_dtypes_equals_dadaptation():
    """One param group holding float32 and float64 tensors: two segments, one d reduced over both."""
    gen = torch.Generator().manual_seed(0)
    shapes = [((4, 3), torch.float32), ((5,), torch.float64), ((2, 3), torch.float64), ((3,), torch.float32)]
    ours = [torch.randn(s, generator=gen, dtype=torch.float64).to(d).requires_grad_() for s, d in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt = tz.Modular([{"params": ours[:3]}, {"params": ours[3:], "layer_scale": 0.5}], tz.m.DAdaptAdam())
    ref = RefDAdaptAdam([{"params": theirs[:3]}, {"params": theirs[3:], "layer_scale": 0.5}])
    for t in range(15):
        set_grads(t, 0.5, ours, theirs)
        opt.step()
        ref.step()
        for p, q in zip(ours, theirs, strict=True):
            torch.testing.assert_close(p, q)


def test_dadapt_adam_state_dict_resumes_bit_exactly():
    assert_resume_is_bit_exact(
        lambda gs: tz.Modular(
            [p for ps in gs for p in ps], tz.m.DAdaptAdam(weight_decay=0.01, decouple=True, use_bias_correction=True)
        ),
        shapes=(((3, 2), (4,)),),
    )


def test_dadapt_adam_refuses_different_d_settings_per_group():
    (a, b) = make_params(torch.float32)
    opt = tz.Modular([{"params": a}, {"params": b, "lr": 0.5}], tz.m.DAdaptAdam())
    set_grads(0, 0.5, a + b)
    with pytest.raises(ValueError, match=r"\['lr'\] must be the same in every param group"):
        opt.step()


def test_dadapt_adam_zero_gradients_move_nothing():
    (ps,) = make_params(torch.float32, (((3, 2), (4,)),))
    before = [p.detach().clone() for p in ps]
    opt = tz.Modular(ps, tz.m.DAdaptAdam(weight_decay=0.1, decouple=True))
    for _ in range(3):
        for p in ps:
            p.grad = torch.zeros_like(p)
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, before, strict=True))
