"""LARS against ``pytorch_optimizer.LARS`` (4.1.0), step by step, with both of its code paths.

Tolerance: torch's defaults of ``assert_close`` (float32: rtol 1.3e-6, atol 1e-5; float64: rtol/atol 1e-7); the
arithmetic is the reference's, op for op, except the learning rate applied in the sink's multiply-add.
"""

from __future__ import annotations

import pytest
import torch
from pytorch_optimizer import LARS

import torchzero as tz
from tests.parity import (
    DTYPES,
    Case,
    assert_resume_is_bit_exact,
    run_parity,
)

GROUPS = (
    {"lr": 0.1, "weight_decay": 0.1},
    {"lr": 0.05, "momentum": 0.5, "dampening": 0.1, "trust_coefficient": 0.02, "weight_decay": 1e-3},
)


def _cases(foreach):
    kw = {"foreach": foreach}
    tag = "foreach" if foreach is None else "per_param"
    real = ("f32", "f64")
    return [
        Case(f"lars-{tag}", lambda: [tz.m.LARS(), tz.m.LR(0.1)], lambda g: LARS(g, lr=0.1, **kw), groups=GROUPS,
             dtypes=real if foreach is None else ("f32", "f64", "c64")),
        Case(f"lars_defaults-{tag}", lambda: [tz.m.LARS(), tz.m.LR(0.1)], lambda g: LARS(g, lr=0.1, **kw),
             groups=({}, {"lr": 0.05}), dtypes=real),
        Case(f"lars_nesterov-{tag}", lambda: [tz.m.LARS(nesterov=True, weight_decay=0.01), tz.m.LR(0.1)],
             lambda g: LARS(g, lr=0.1, nesterov=True, weight_decay=0.01, **kw), groups=({}, {"momentum": 0.8}),
             dtypes=real),
        Case(f"lars_no_momentum-{tag}", lambda: [tz.m.LARS(momentum=0.0, weight_decay=0.01), tz.m.LR(0.1)],
             lambda g: LARS(g, lr=0.1, momentum=0.0, weight_decay=0.01, **kw), groups=({}, {}), dtypes=real),
    ]  # fmt: skip


CASES = _cases(None) + _cases(False)


@pytest.mark.parametrize(("case", "dtype"), [pytest.param(c, d, id=f"{c.name}-{d}") for c in CASES for d in c.dtypes])
@pytest.mark.parametrize("reference_mode", [False, True], ids=["foreach", "per_tensor"])
def test_lars_equals_pytorch_optimizer(case, dtype, reference_mode):
    run_parity(case, DTYPES[dtype], reference_mode=reference_mode)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_lars_unfused_equals_pytorch_optimizer(case):
    run_parity(case, torch.float64, fuse=False)


def test_mid_run_state_dict_resumes_bit_exactly():
    assert_resume_is_bit_exact(
        lambda gs: tz.Modular(
            [{"params": ps, **s} for ps, s in zip(gs, GROUPS, strict=True)], tz.m.LARS(), tz.m.LR(0.1)
        )
    )


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="momentum in"):
        tz.m.LARS(momentum=1.5)
    with pytest.raises(ValueError, match="trust_coefficient >= 0"):
        tz.m.LARS(trust_coefficient=-1.0)
