"""Shampoo against ``pytorch_optimizer.Shampoo`` (4.1.0), step by step, on a 0-dim, a 1-D, 2-D and a 3-D parameter.

Tolerance: torch's defaults of ``assert_close`` (float32: rtol 1.3e-6, atol 1e-5; float64: rtol/atol 1e-7).  The
rule runs the reference's operations in its order (the same statistics update, the same SVD in the same
precision, the same matrix products on the same transposed layouts), and on CPU every case except the decoupled
weight decay agrees bit for bit over 20 steps (``test_bit_exact_on_cpu``).  The decoupled weight decay is
``WeightDecay`` after ``LR``, which decays and steps in one pass where the reference decays, then steps: an ulp
per step, which the defaults cover.  On other devices the SVD and matrix products may pick other kernels than
the reference's, hence the defaults rather than ``torch.equal`` in the parity runs.
"""

from __future__ import annotations

import pytest
import torch
from pytorch_optimizer import Shampoo

import torchzero as tz
from tests.parity import Case, assert_resume_is_bit_exact, clone_params, make_params, run_parity, set_grads

SHAPES = (((4, 3), (5,), ()), ((3, 6), (2, 2, 3)))
"""a matrix, a vector and a scalar in one group; a matrix and a 3-D tensor in the other"""

GROUPS = ({}, {"momentum": 0.5, "matrix_eps": 1e-4})


def _case(name, modules, reference, groups=GROUPS, ref_groups=None):
    return Case(name, modules, reference, groups=groups, ref_groups=ref_groups, dtypes=("f32", "f64"), shapes=SHAPES)


CASES = [
    _case("defaults", lambda: [tz.m.Shampoo(), tz.m.LR(1e-2)], lambda g: Shampoo(g, lr=1e-2), groups=({}, {})),
    _case("per_group", lambda: [tz.m.Shampoo(), tz.m.LR(1e-2)], lambda g: Shampoo(g, lr=1e-2)),
    _case("momentum_coupled_decay", lambda: [tz.m.Shampoo(momentum=0.9, weight_decay=0.1), tz.m.LR(1e-2)],
          lambda g: Shampoo(g, lr=1e-2, momentum=0.9, weight_decay=0.1), groups=({}, {"momentum": 0.3})),
    _case("compute_every_3", lambda: [tz.m.Shampoo(preconditioning_compute_steps=3), tz.m.LR(1e-2)],
          lambda g: Shampoo(g, lr=1e-2, preconditioning_compute_steps=3)),
    _case("decoupled_decay", lambda: [tz.m.Shampoo(), tz.m.LR(1e-2), tz.m.WeightDecay(0.1, scale_by_lr=True)],
          lambda g: Shampoo(g, lr=1e-2, weight_decay=0.1, weight_decouple=True)),
    _case("fixed_decay", lambda: [tz.m.Shampoo(), tz.m.LR(1e-2), tz.m.WeightDecay(0.01)],
          lambda g: Shampoo(g, lr=1e-2, weight_decay=0.01, weight_decouple=True, fixed_decay=True)),
    _case("coupled_decay_before_rule", lambda: [tz.m.WeightDecay(0.1), tz.m.Shampoo(), tz.m.LR(1e-2)],
          lambda g: Shampoo(g, lr=1e-2, weight_decay=0.1), groups=({}, {"matrix_eps": 1e-4}),
          ref_groups=({}, {"matrix_eps": 1e-4})),
    # maximize is the param group's; the reference negates the gradient first (without momentum: the same rule)
    _case("maximize", lambda: [tz.m.Shampoo(), tz.m.LR(1e-2)], lambda g: Shampoo(g, lr=1e-2, maximize=True),
          groups=({"maximize": True}, {"maximize": True, "matrix_eps": 1e-4}), ref_groups=({}, {"matrix_eps": 1e-4})),
    _case("alpha_times_lr", lambda: [tz.m.Shampoo(alpha=2.0), tz.m.LR(5e-3)], lambda g: Shampoo(g, lr=1e-2),
          groups=({}, {})),
]  # fmt: skip


@pytest.mark.parametrize(("case", "dtype"), [pytest.param(c, d, id=f"{c.name}-{d}") for c in CASES for d in c.dtypes])
@pytest.mark.parametrize("reference_mode", [False, True], ids=["foreach", "per_tensor"])
def test_shampoo_equals_pytorch_optimizer(case, dtype, reference_mode):
    run_parity(case, torch.float32 if dtype == "f32" else torch.float64, reference_mode=reference_mode)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_shampoo_unfused_equals_pytorch_optimizer(case):
    run_parity(case, torch.float64, fuse=False)


ONE_PASS_DECAY = ("decoupled_decay", "fixed_decay")
"""the sink decays and steps in one pass, the reference in two: an ulp apart"""


def _run(modules, reference, dtype, settings, steps=20):
    groups = make_params(dtype, SHAPES)
    ref_groups = clone_params(groups)
    flat, ref_flat = [p for ps in groups for p in ps], [p for ps in ref_groups for p in ps]
    opt, ref = tz.Modular([{"params": flat, **settings}], *modules), reference(ref_flat)
    for t in range(steps):
        set_grads(t, 0.5, flat, ref_flat)
        opt.step()
        ref.step()
    return flat, ref_flat


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", [c for c in CASES if c.name not in ONE_PASS_DECAY], ids=lambda c: c.name)
def test_bit_exact_on_cpu(case, dtype):
    """The same operations in the same order: equal bit for bit (one group with the case's first settings)."""
    ref_settings = (case.groups if case.ref_groups is None else case.ref_groups)[0]
    flat, ref_flat = _run(
        case.modules(), lambda ps: case.reference([{"params": ps, **ref_settings}]), dtype, case.groups[0]
    )
    for p, q in zip(flat, ref_flat, strict=True):
        assert torch.equal(p, q)


def test_first_steps_wait_for_the_roots():
    """The inverse roots start at zero: with preconditioning_compute_steps=3 the first two steps change nothing."""
    p = torch.randn(3, 4, requires_grad=True)
    before = p.detach().clone()
    opt = tz.Modular([p], tz.m.Shampoo(preconditioning_compute_steps=3), tz.m.LR(0.1))
    for t in range(3):
        p.grad = torch.randn(3, 4)
        opt.step()
        assert torch.equal(p, before) == (t < 2)


def test_mid_run_state_dict_resumes_bit_exactly():
    assert_resume_is_bit_exact(
        lambda gs: tz.Modular(
            [{"params": ps, **s} for ps, s in zip(gs, GROUPS, strict=True)],
            tz.m.Shampoo(momentum=0.9, preconditioning_compute_steps=2),
            tz.m.LR(1e-2),
        ),
        steps=10,
        at=4,
        shapes=SHAPES,
    )


def test_complex_parameters_are_refused():
    p = torch.randn(3, 2, dtype=torch.complex64, requires_grad=True)
    p.grad = torch.randn_like(p)
    before = p.detach().clone()
    opt = tz.Modular([p], tz.m.Shampoo(), tz.m.LR(0.1))
    with pytest.raises(TypeError, match="real parameters only"):
        opt.step()
    assert torch.equal(p, before)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="momentum"):
        tz.m.Shampoo(momentum=1.0)
    with pytest.raises(ValueError, match="preconditioning_compute_steps"):
        tz.m.Shampoo(preconditioning_compute_steps=0)
    with pytest.raises(ValueError, match="matrix_eps"):
        tz.m.Shampoo(matrix_eps=-1.0)
