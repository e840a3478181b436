"""Adafactor against ``torch.optim.Adafactor``, step by step (matrices factored, vectors and 3-D tensors too).

Tolerance: torch's defaults of ``assert_close`` (float32: rtol 1.3e-6, atol 1e-5; float64: rtol/atol 1e-7).
The vectors' ``1/sqrt`` is a foreach ``sqrt`` and ``reciprocal`` (torch: ``rsqrt``) and the step is one
multiply-add where torch decays and steps separately, which moves float32 by an ulp at most per step.
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
    set_grads,
)

O = torch.optim  # noqa: E741
SHAPES = (((4, 3), (5,)), ((3, 6), (2, 2, 3), ()))
GROUPS = ({"lr": 1e-2}, {"lr": 3e-2, "beta2_decay": -0.5, "eps": (1e-20, 1e-2), "d": 2.0})

CASES = [
    Case("adafactor", lambda: [tz.m.Adafactor(), tz.m.LR(1e-2)], lambda g: O.Adafactor(g, lr=1e-2),
         groups=GROUPS, dtypes=("f32", "f64"), shapes=SHAPES),
    # lr above 1/sqrt(t) for the first steps: the relative step 1/sqrt(t) wins, then the lr
    Case("adafactor_relative_step", lambda: [tz.m.Adafactor(), tz.m.LR(0.3)], lambda g: O.Adafactor(g, lr=0.3),
         groups=({"lr": 0.3}, {"lr": 1.0}), dtypes=("f32", "f64"), shapes=SHAPES),
    Case("adafactor_weight_decay", lambda: [tz.m.Adafactor(), tz.m.WeightDecay(0.0), tz.m.LR(1e-2)],
         lambda g: O.Adafactor(g, lr=1e-2), groups=({**GROUPS[0], "weight_decay": 0.1}, {**GROUPS[1], "weight_decay": 0.5}),
         dtypes=("f32", "f64"), shapes=SHAPES),
    Case("adafactor_alpha_times_lr", lambda: [tz.m.Adafactor(alpha=4.0), tz.m.LR(5e-3)],
         lambda g: O.Adafactor(g, lr=2e-2), groups=({}, {}), dtypes=("f32", "f64"), shapes=SHAPES),
    Case("adafactor_no_lr_module", lambda: [tz.m.Adafactor(alpha=1e-2)], lambda g: O.Adafactor(g, lr=1e-2),
         groups=({}, {}), dtypes=("f32", "f64"), shapes=SHAPES),
]  # fmt: skip


@pytest.mark.parametrize(("case", "dtype"), [pytest.param(c, d, id=f"{c.name}-{d}") for c in CASES for d in c.dtypes])
@pytest.mark.parametrize("reference_mode", [False, True], ids=["foreach", "per_tensor"])
def test_adafactor_equals_torch(case, dtype, reference_mode):
    run_parity(case, DTYPES[dtype], reference_mode=reference_mode)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_adafactor_unfused_equals_torch(case):
    run_parity(case, torch.float64, fuse=False)


def test_factored_state_shapes_match_torch():
    groups = make_params(torch.float64, SHAPES)
    ref_groups = clone_params(groups)
    flat, ref_flat = [p for ps in groups for p in ps], [p for ps in ref_groups for p in ps]
    ada = tz.m.Adafactor()
    opt = tz.Modular(flat, ada, tz.m.LR(1e-2))
    ref = O.Adafactor(ref_flat, lr=1e-2)
    for t in range(3):
        set_grads(t, 0.5, flat, ref_flat)
        opt.step()
        ref.step()
    for p, q in zip(flat, ref_flat, strict=True):
        mine = opt.state[p][ada.key]
        for name in ("row_var", "col_var", "variance"):
            assert (name in mine) == (name in ref.state[q]), name
            if name in mine:
                torch.testing.assert_close(mine[name], ref.state[q][name])


def test_mid_run_state_dict_resumes_bit_exactly():
    assert_resume_is_bit_exact(
        lambda gs: tz.Modular(
            [{"params": ps, **s} for ps, s in zip(gs, GROUPS, strict=True)], tz.m.Adafactor(), tz.m.LR(1e-2)
        )
    )


def test_complex_parameters_are_refused():
    p = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    p.grad = torch.randn(3, dtype=torch.complex64)
    before = p.detach().clone()
    opt = tz.Modular([p], tz.m.Adafactor(), tz.m.LR(1e-2))
    with pytest.raises(TypeError, match="real parameters only"):
        opt.step()
    assert torch.equal(p, before)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"beta2_decay": 0.5}, "beta2_decay <= 0"), ({"d": 0.5}, "d >= 1"), ({"eps": (None, -1.0)}, "eps[1] >= 0")],
)
def test_bad_arguments_are_refused(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[")):
        tz.m.Adafactor(**kwargs)
