"""SOAP against ``pytorch_optimizer.SOAP`` (4.1.0), step by step, on 0-D, 1-D, 2-D, 3-D and 4-D parameters.

Both sides run the same sequence of tensor operations for the preconditioner (the same ``tensordot``
contractions, ``eigh`` of :math:`L + 10^{-30} I` at the first step, the power iteration, ``argsort`` and the
float32 QR at each refresh), so the bases agree to the last bit as long as the inputs do.  The difference is in
how the step is written: the reference steps and then decays the parameters (two roundings), torchzero writes
:math:`\\theta(1 - \\eta\\lambda) - \\eta c (1-\\eta\\lambda) D` in one pass (and ``LR`` scales the update
separately), and the moments are updated by foreach ``lerp``.  That is an ulp per step, which then feeds back
through the coupled gradients into :math:`L` and so into the refreshed bases.

Tolerance: float64 ``rtol = atol = 1e-12`` (the observed difference after 25 steps is below 1e-14); float32
torch's defaults of ``assert_close`` (rtol 1.3e-6, atol 1e-5; observed about 1.5e-6 absolute on parameters of
order 1), since the float32 ulps above are amplified by the eigenvector refreshes (a QR of a matrix with nearby
singular values moves its columns by about ulp / gap).
"""

from __future__ import annotations

import pytest
import torch
from pytorch_optimizer import SOAP as RefSOAP

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
from torchzero.modules.optimizers.soap import merged_shape

F64 = {"f64": {"rtol": 1e-12, "atol": 1e-12}}
SHAPES = (((4, 3), (5,), ()), ((3, 6), (2, 2, 3)))
MERGE_SHAPES = (((10,), (2, 3, 5)), ((3, 12), (2, 3, 2, 2)))
GROUPS = ({"lr": 1e-2}, {"lr": 3e-2, "betas": (0.9, 0.99), "eps": 1e-7, "weight_decay": 0.1})

CASES = [
    Case("soap", lambda: [tz.m.SOAP(), tz.m.LR(1e-2)], lambda g: RefSOAP(g, lr=1e-2), groups=GROUPS,
         dtypes=("f32", "f64"), shapes=SHAPES, steps=25, tol=F64),
    Case("soap_1d_normalized", lambda: [tz.m.SOAP(), tz.m.LR(1e-2)], lambda g: RefSOAP(g, lr=1e-2),
         groups=({"precondition_1d": True, "normalize_gradient": True, "precondition_frequency": 3},
                 {"lr": 3e-2, "shampoo_beta": 0.8, "precondition_frequency": 4}),
         dtypes=("f32", "f64"), shapes=SHAPES, tol=F64),
    Case("soap_large_dims", lambda: [tz.m.SOAP(), tz.m.LR(1e-2)], lambda g: RefSOAP(g, lr=1e-2),
         groups=({"max_precondition_dim": 4, "precondition_frequency": 2},
                 {"max_precondition_dim": 3, "correct_bias": False, "precondition_1d": True}),
         dtypes=("f32", "f64"), shapes=SHAPES, tol=F64),
    # the reference's merge_dims raises for tensors that merge into one dimension: these shapes do not
    Case("soap_merge_dims", lambda: [tz.m.SOAP(), tz.m.LR(1e-2)], lambda g: RefSOAP(g, lr=1e-2),
         groups=({"merge_dims": True, "max_precondition_dim": 8, "precondition_frequency": 2},
                 {"merge_dims": True, "max_precondition_dim": 8, "precondition_frequency": 3}),
         dtypes=("f32", "f64"), shapes=MERGE_SHAPES, tol=F64),
    Case("soap_merge_dims_channels_last", lambda: [tz.m.SOAP(data_format="channels_last"), tz.m.LR(1e-2)],
         lambda g: RefSOAP(g, lr=1e-2, data_format="channels_last"),
         groups=({"merge_dims": True, "max_precondition_dim": 8, "precondition_frequency": 2},) * 2,
         dtypes=("f32", "f64"), shapes=MERGE_SHAPES, tol=F64),
    Case("soap_alpha_times_lr", lambda: [tz.m.SOAP(alpha=2.0, precondition_frequency=3), tz.m.LR(5e-3)],
         lambda g: RefSOAP(g, lr=1e-2, precondition_frequency=3), groups=({}, {}), dtypes=("f32", "f64"),
         shapes=SHAPES, tol=F64),
    Case("soap_no_lr_module", lambda: [tz.m.SOAP(alpha=1e-2, weight_decay=0.0, precondition_frequency=4)],
         lambda g: RefSOAP(g, lr=1e-2, weight_decay=0.0, precondition_frequency=4), groups=({}, {}),
         dtypes=("f32", "f64"), shapes=SHAPES, tol=F64),
]  # fmt: skip


@pytest.mark.parametrize(("case", "dtype"), [pytest.param(c, d, id=f"{c.name}-{d}") for c in CASES for d in c.dtypes])
@pytest.mark.parametrize("reference_mode", [False, True], ids=["foreach", "per_tensor"])
def test_soap_equals_pytorch_optimizer(case, dtype, reference_mode):
    run_parity(case, DTYPES[dtype], reference_mode=reference_mode)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_soap_unfused_equals_pytorch_optimizer(case):
    run_parity(case, torch.float64, fuse=False)


def test_first_step_leaves_the_parameters_and_state_matches_the_reference():
    groups = make_params(torch.float64, SHAPES)
    ref_groups = clone_params(groups)
    flat, ref_flat = [p for ps in groups for p in ps], [p for ps in ref_groups for p in ps]
    soap = tz.m.SOAP(max_precondition_dim=4)
    opt = tz.Modular(flat, soap, tz.m.LR(1e-2))
    ref = RefSOAP(ref_flat, lr=1e-2, max_precondition_dim=4)
    before = [p.detach().clone() for p in flat]
    for t in range(12):  # the bases are refreshed after step 11
        set_grads(t, 0.5, flat, ref_flat)
        opt.step()
        ref.step()
        if t == 0:
            assert all(torch.equal(p, b) for p, b in zip(flat, before, strict=True))
    for p, q in zip(flat, ref_flat, strict=True):
        mine, theirs = opt.state[p][soap.key], ref.state[q]
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(mine[name], theirs[name], rtol=1e-12, atol=1e-12)
        for d, (gg, basis) in enumerate(zip(theirs["GG"], theirs["Q"], strict=True)):
            if len(gg) == 0:
                assert f"GG{d}" not in mine and f"Q{d}" not in mine
                continue
            torch.testing.assert_close(mine[f"GG{d}"], gg, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(mine[f"Q{d}"], basis, rtol=1e-12, atol=1e-12)


def test_mid_run_state_dict_resumes_bit_exactly():
    assert_resume_is_bit_exact(
        lambda gs: tz.Modular(
            [{"params": ps, **s} for ps, s in zip(gs, GROUPS, strict=True)],
            tz.m.SOAP(precondition_frequency=3, precondition_1d=True),
            tz.m.LR(1e-2),
        ),
        steps=14,
        at=5,
        shapes=SHAPES,
    )


def test_merged_shape_keeps_a_single_merged_dimension():
    assert merged_shape((1, 2, 512, 1, 2048, 1, 3, 4), 1024) == [1024, 2048, 12]
    assert merged_shape((4, 5), 10000) == [20]


def test_complex_parameters_are_refused():
    p = torch.nn.Parameter(torch.randn(3, 2, dtype=torch.complex64))
    p.grad = torch.randn(3, 2, dtype=torch.complex64)
    before = p.detach().clone()
    opt = tz.Modular([p], tz.m.SOAP(), tz.m.LR(1e-2))
    with pytest.raises(TypeError, match="real parameters only"):
        opt.step()
    assert torch.equal(p, before)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"precondition_frequency": 0}, "precondition_frequency"), ({"data_format": "nchw"}, "data_format"),
     ({"weight_decay": -1.0}, "weight_decay"), ({"shampoo_beta": 1.0}, "shampoo_beta")],
)  # fmt: skip
def test_bad_arguments_are_refused(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        tz.m.SOAP(**kwargs)
