"""PSGDKron against ``kron_torch.Kron`` 0.3.3, step by step on the same parameters, gradients and noise.

kron_torch draws its noise with ``torch.randn_like`` from torch's global generator (one draw per tensor and
preconditioner update, in parameter order) and decides about balancing with its own ``random.Random(42)``;
torch is seeded with the same value before each optimizer's step, so both draw the same noise.  Its helpers
are wrapped in ``torch.compile``, which is switched off here (``torch._dynamo.config.disable``): compiled
kernels fuse and reorder float operations and use another random number generator.

Tolerance: none, the parameters are compared with ``torch.equal`` after every step (float32 and float64
parameters; kron_torch keeps its factors in float32 by default for both, and so does the rule).  The rule makes
the same torch calls in the same order, with the same einsum subscripts (so einsum contracts in the same
order), and the step ``theta - lr * u`` is the same ``add_`` as the reference's.  The parameters: a 2-D one, a
1-D one (diagonal factor), a 3-D one (merged into a matrix), a (6, 2, 2, 2) one and a matrix with a dimension of
size 1 (diagonal factor there).  22 steps cover an update of the preconditioner on every step and the first
balancing of the factors (the 20th draw of ``random.Random(42)`` is below 0.01).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch._dynamo

import torchzero as tz
from tests.parity import save_load
from torchzero.modules.optimizers.psgd_kron import kron_update_probability

kron_torch = pytest.importorskip("kron_torch")

SHAPES = ((4, 3), (5,), (2, 3, 4), (6, 2, 2, 2), (3, 1))


@pytest.fixture(autouse=True)
def eager_reference() -> Iterator[None]:
    old = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    try:
        yield
    finally:
        torch._dynamo.config.disable = old


def make(dtype: torch.dtype, shapes: tuple[tuple[int, ...], ...] = SHAPES) -> tuple[list[torch.Tensor], ...]:
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]
    return ps, [p.detach().clone().requires_grad_() for p in ps]


def set_grads(t: int, *lists: list[torch.Tensor]) -> None:
    gen = torch.Generator().manual_seed(1000 + t)
    noise = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in lists[0]]
    for ps in lists:
        for p, n in zip(ps, noise, strict=True):
            p.grad = n + 0.5 * p.detach()  # feeds back from the parameters: any drift grows


def quiet_step(opt: torch.optim.Optimizer) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # kron_torch prints its memory use on the first step
        opt.step()


# (kron_torch kwargs, PSGDKron kwargs)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "defaults": ({}, {}),
    "probability": ({"preconditioner_update_probability": 0.3}, {"preconditioner_update_probability": 0.3}),
    "options": (
        {"b1": 0.8, "weight_decay": 0.1, "memory_save_mode": "one_diag", "precond_lr": 0.2},
        {"beta": 0.8, "weight_decay": 0.1, "memory_save_mode": "one_diag", "precond_lr": 0.2},
    ),
    "smart_one_diag": ({"memory_save_mode": "smart_one_diag"}, {"memory_save_mode": "smart_one_diag"}),
    "all_diag_small_triangular": (
        {"memory_save_mode": "all_diag", "max_size_triangular": 3},
        {"memory_save_mode": "all_diag", "max_size_triangular": 3},
    ),
    "gradient_into_precond_no_merge": (
        {"momentum_into_precond_update": False, "merge_dims": False, "precond_init_scale": 2.0},
        {"momentum_into_precond_update": False, "merge_dims": False, "precond_init_scale": 2.0},
    ),
    "bf16_momentum": ({"mu_dtype": torch.bfloat16}, {"mu_dtype": "bfloat16"}),
    "f64_preconditioner": ({"precond_dtype": torch.float64}, {"precond_dtype": "float64"}),
    "schedule": (
        {"preconditioner_update_probability": kron_torch.precond_update_prob_schedule(flat_start=2, decay=0.2)},
        {"preconditioner_update_probability": kron_update_probability(flat_start=2, decay=0.2)},
    ),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", list(CASES))
def test_equals_kron_torch(case: str, dtype: torch.dtype) -> None:
    ref_kw, kw = CASES[case]
    ps, qs = make(dtype)
    lr = 0.01
    opt = tz.Modular(ps, tz.m.PSGDKron(**kw), tz.m.LR(lr))
    ref = kron_torch.Kron(qs, lr=lr, **ref_kw)
    for t in range(22):
        set_grads(t, ps, qs)
        torch.manual_seed(t)
        quiet_step(ref)
        torch.manual_seed(t)
        opt.step()
        for i, (p, q) in enumerate(zip(ps, qs, strict=True)):
            assert torch.equal(p, q), f"step {t}, parameter {i} {tuple(p.shape)}: max diff {(p - q).abs().max()}"


def test_two_param_groups_equal_kron_torch() -> None:
    """Per-group settings (the update decision and its probability are the first group's in both)."""
    ps, qs = make(torch.float32)
    opt = tz.Modular(
        [{"params": ps[:2], "beta": 0.8, "weight_decay": 0.1}, {"params": ps[2:], "memory_save_mode": "one_diag"}],
        tz.m.PSGDKron(preconditioner_update_probability=0.5),
        tz.m.LR(0.01),
    )
    ref = kron_torch.Kron(
        [{"params": qs[:2], "b1": 0.8, "weight_decay": 0.1}, {"params": qs[2:], "memory_save_mode": "one_diag"}],
        lr=0.01,
        preconditioner_update_probability=0.5,
    )
    for t in range(8):
        set_grads(t, ps, qs)
        torch.manual_seed(t)
        quiet_step(ref)
        torch.manual_seed(t)
        opt.step()
        for p, q in zip(ps, qs, strict=True):
            assert torch.equal(p, q)


def test_scalar_parameter_is_a_one_element_vector() -> None:
    """kron_torch fails on 0-dim parameters; the rule treats them as 1-element vectors."""
    (p,), (q,) = make(torch.float32, ((),))
    q = q.detach().reshape(1).requires_grad_()
    opt = tz.Modular([p], tz.m.PSGDKron(), tz.m.LR(0.01))
    ref = kron_torch.Kron([q], lr=0.01)
    for t in range(5):
        p.grad = torch.tensor(0.3 * t - 0.5) + p.detach()
        q.grad = p.grad.reshape(1).clone()
        torch.manual_seed(t)
        quiet_step(ref)
        torch.manual_seed(t)
        opt.step()
        assert torch.equal(p.detach().reshape(1), q.detach())


def test_schedule_matches_kron_torch() -> None:
    mine, theirs = kron_update_probability(), kron_torch.precond_update_prob_schedule()
    n = torch.arange(0, 6000, 7, dtype=torch.float32)
    assert torch.equal(torch.stack([mine(x) for x in n]), torch.stack([theirs(x) for x in n]))


@pytest.mark.parametrize("seed", [None, 3])
def test_mid_run_state_dict_resumes_bit_exactly(seed: int | None) -> None:
    ps, twin = make(torch.float32)

    def build(params: list[torch.Tensor]) -> tz.Modular:
        return tz.Modular(params, tz.m.PSGDKron(preconditioner_update_probability=0.5, seed=seed), tz.m.LR(0.01))

    o1, o2 = build(ps), build(twin)
    for t in range(25):  # the balancing draw (the 20th) falls after the reload
        set_grads(t, ps, twin)
        torch.manual_seed(t)
        o1.step()
        if t == 7:
            fresh = build(twin)
            fresh.load_state_dict(save_load(o2.state_dict()))
            o2 = fresh
        torch.manual_seed(t)
        o2.step()
    for p, q in zip(ps, twin, strict=True):
        assert torch.equal(p, q)


def test_seeded_noise_leaves_torch_generator_alone() -> None:
    ps, _ = make(torch.float32)
    opt = tz.Modular(ps, tz.m.PSGDKron(seed=0), tz.m.LR(0.01))
    set_grads(0, ps)
    torch.manual_seed(5)
    opt.step()
    after = torch.get_rng_state()
    torch.manual_seed(5)
    assert torch.equal(after, torch.get_rng_state())


def test_complex_parameters_are_refused() -> None:
    p = torch.nn.Parameter(torch.randn(3, 2, dtype=torch.complex64))
    p.grad = torch.randn(3, 2, dtype=torch.complex64)
    before = p.detach().clone()
    opt = tz.Modular([p], tz.m.PSGDKron(), tz.m.LR(0.01))
    with pytest.raises(TypeError, match="real parameters only"):
        opt.step()
    assert torch.equal(p, before)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"beta": 1.0}, "beta"),
        ({"memory_save_mode": "half_diag"}, "memory_save_mode"),
        ({"preconditioner_update_probability": 0.0}, "preconditioner_update_probability"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        tz.m.PSGDKron(**kwargs)
