"""Lamb against ``pytorch_optimizer.Lamb`` (4.1.0), step by step, with both of its code paths.

Tolerance: torch's defaults of ``assert_close`` (float32: rtol 1.3e-6, atol 1e-5; float64: rtol/atol 1e-7).
The trust ratio takes the norm of the decayed parameters as ``|1 - c| * ||theta||`` (the reference decays the
parameters first, then takes their norm), and the step is one multiply-add where the reference decays and steps
separately: an ulp or two per step, which the defaults cover.
"""

from __future__ import annotations

import pytest
import torch
from pytorch_optimizer import Lamb

import torchzero as tz
from tests.parity import (
    DTYPES,
    Case,
    assert_resume_is_bit_exact,
    clone_params,
    make_params,
    run_parity,
    set_grads,
)

GROUPS = ({"lr": 1e-2, "weight_decay": 0.1}, {"lr": 3e-2, "betas": (0.8, 0.99), "eps": 1e-8})


def _cases(foreach):
    kw = {"foreach": foreach}
    tag = "foreach" if foreach is None else "per_param"
    real = ("f32", "f64")
    return [
        Case(f"lamb-{tag}", lambda: [tz.m.Lamb(), tz.m.LR(1e-2)], lambda g: Lamb(g, lr=1e-2, **kw), groups=GROUPS,
             dtypes=real if foreach is None else ("f32", "f64", "c64")),
        Case(f"lamb_coupled-{tag}", lambda: [tz.m.Lamb(weight_decouple=False), tz.m.LR(1e-2)],
             lambda g: Lamb(g, lr=1e-2, weight_decouple=False, **kw), groups=GROUPS, dtypes=real),
        Case(f"lamb_fixed_decay-{tag}", lambda: [tz.m.Lamb(fixed_decay=True), tz.m.LR(1e-2)],
             lambda g: Lamb(g, lr=1e-2, fixed_decay=True, **kw), groups=({"lr": 1e-2, "weight_decay": 0.05}, GROUPS[1]),
             dtypes=real),
        Case(f"lamb_adam_no_averaging-{tag}", lambda: [tz.m.Lamb(adam=True, grad_averaging=False), tz.m.LR(1e-2)],
             lambda g: Lamb(g, lr=1e-2, adam=True, grad_averaging=False, **kw), groups=GROUPS, dtypes=real),
        Case(f"lamb_alpha_times_lr-{tag}", lambda: [tz.m.Lamb(alpha=2.0, weight_decay=0.1), tz.m.LR(5e-3)],
             lambda g: Lamb(g, lr=1e-2, weight_decay=0.1, **kw), groups=({}, {}), dtypes=real),
        Case(f"lamb_no_lr_module-{tag}", lambda: [tz.m.Lamb(alpha=1e-2, weight_decay=0.1)],
             lambda g: Lamb(g, lr=1e-2, weight_decay=0.1, **kw), groups=({}, {}), dtypes=real),
    ]  # fmt: skip


CASES = _cases(None) + _cases(False)


@pytest.mark.parametrize(("case", "dtype"), [pytest.param(c, d, id=f"{c.name}-{d}") for c in CASES for d in c.dtypes])
@pytest.mark.parametrize("reference_mode", [False, True], ids=["foreach", "per_tensor"])
def test_lamb_equals_pytorch_optimizer(case, dtype, reference_mode):
    run_parity(case, DTYPES[dtype], reference_mode=reference_mode)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_lamb_unfused_equals_pytorch_optimizer(case):
    run_parity(case, torch.float64, fuse=False)


def test_pre_norm_is_clip_norm_before_the_rule():
    """``pre_norm=True`` scales the gradient by min(1, max_grad_norm / (||g|| + eps)); ClipNorm does the same up
    to where eps enters (relative 1e-6 of the scale: rtol 1e-5)."""
    groups = make_params(torch.float64)
    ref_groups = clone_params(groups)
    flat, ref_flat = [p for ps in groups for p in ps], [p for ps in ref_groups for p in ps]
    opt = tz.Modular(flat, tz.m.ClipNorm(1.0), tz.m.Lamb(), tz.m.LR(1e-2))
    ref = Lamb(ref_flat, lr=1e-2, pre_norm=True, max_grad_norm=1.0)
    for t in range(10):
        set_grads(t, 0.5, flat, ref_flat)
        opt.step()
        ref.step()
        for p, q in zip(flat, ref_flat, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_mid_run_state_dict_resumes_bit_exactly():
    assert_resume_is_bit_exact(
        lambda gs: tz.Modular(
            [{"params": ps, **s} for ps, s in zip(gs, GROUPS, strict=True)], tz.m.Lamb(), tz.m.LR(1e-2)
        )
    )


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="weight_decay >= 0"):
        tz.m.Lamb(weight_decay=-1.0)
    with pytest.raises(ValueError, match="adam True or False"):
        tz.m.Lamb(adam=1)
