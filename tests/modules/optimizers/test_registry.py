"""Every update rule against its reference (torch.optim or a written-out formula), over the registry.

Matrix: case x dtype x {foreach path, per-tensor reference path}, each run with two param groups of
different settings, 20 steps, and a save/load round trip into a fresh optimizer in the middle.
Then: foreach and reference paths against each other, the unfused chain (rule and ``LR`` as separate
passes), and the constructor errors.
"""

from __future__ import annotations

import pytest
import torch

from tests.parity import DTYPES, run_parity, run_tz

from .registry import CASES, ERROR_INPUTS

MATRIX = [pytest.param(c, d, id=f"{c.name}-{d}") for c in CASES for d in c.dtypes]


@pytest.mark.parametrize(("case", "dtype"), MATRIX)
def test_equals_reference(case, dtype):
    run_parity(case, DTYPES[dtype])


@pytest.mark.parametrize(("case", "dtype"), MATRIX)
def test_reference_path_equals_reference(case, dtype):
    run_parity(case, DTYPES[dtype], reference_mode=True)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_unfused_chain_equals_reference(case):
    """With ``fuse=False`` the rule hands its update on and ``LR`` applies it: the not-last path."""
    run_parity(case, DTYPES[case.dtypes[0]], fuse=False)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_foreach_path_equals_reference_path(case):
    dtype = DTYPES[case.dtypes[0]]
    fast = run_tz(case, dtype, save_at=case.steps // 2)
    slow = run_tz(case, dtype, reference_mode=True)
    for a, b in zip(fast, slow, strict=True):
        for p, q in zip(a, b, strict=True):
            torch.testing.assert_close(p, q)


@pytest.mark.parametrize(("make", "fragment"), [pytest.param(m, f, id=n) for n, m, f in ERROR_INPUTS])
def test_bad_arguments_are_refused(make, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        make()
