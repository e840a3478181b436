"""AdEMAMix against ``pytorch_optimizer.AdEMAMix`` 4.1.0 (the parity harness of ``tests.parity``).

Two param groups with different settings, 20 steps with gradients that feed back from the parameters, a
save/load round trip into a fresh optimizer in the middle; float32 and float64 (the reference refuses
complex parameters; torchzero treats them as their real views, checked by the contract suite).  The
warm-up schedules of alpha and beta3 are covered with a warm-up shorter and longer than the run.  Default
tolerance of ``torch.testing.assert_close``: the same operations in the same order as the reference
(``addcdiv_`` of the mixed momentum by the corrected root), and the schedules are the same Python floats.
"""

from __future__ import annotations

import pytest
import torch
from pytorch_optimizer import AdEMAMix as RefAdEMAMix

import torchzero as tz
from tests.parity import DTYPES, Case, make_params, run_parity, save_load, set_grads
from torchzero.modules.optimizers.ademamix import warm_alpha, warm_beta3

WD = ({"lr": 1e-2, "weight_decay": 0.1}, {"lr": 3e-2, "weight_decay": 0.03})
CASES = [
    Case("ademamix", lambda: [tz.m.AdEMAMix(), tz.m.LR(1e-2)], lambda g: RefAdEMAMix(g, lr=1e-2),
         groups=({"lr": 1e-2, "eps": 1e-6}, {"lr": 3e-2, "betas": (0.8, 0.99, 0.999), "alpha": 2.0}),
         dtypes=("f32", "f64")),
    Case("ademamix_warmup", lambda: [tz.m.AdEMAMix(t_alpha_beta3=8), tz.m.LR(1e-2)],
         lambda g: RefAdEMAMix(g, lr=1e-2, t_alpha_beta3=8),
         groups=({"lr": 1e-2}, {"lr": 3e-2, "t_alpha_beta3": 50, "betas": (0.8, 0.99, 0.995), "alpha": 8.0}),
         dtypes=("f32", "f64")),
    Case("ademamix_weight_decay", lambda: [tz.m.WeightDecay(0.0), tz.m.AdEMAMix(), tz.m.LR(1e-2)],
         lambda g: RefAdEMAMix(g, lr=1e-2), groups=WD, dtypes=("f32", "f64")),
    Case("ademamix_decoupled_weight_decay",
         lambda: [tz.m.AdEMAMix(t_alpha_beta3=5), tz.m.LR(1e-2), tz.m.WeightDecay(0.0, scale_by_lr=True)],
         lambda g: RefAdEMAMix(g, lr=1e-2, t_alpha_beta3=5, weight_decouple=True), groups=WD, dtypes=("f32", "f64")),
]  # fmt: skip

MATRIX = [pytest.param(c, d, id=f"{c.name}-{d}") for c in CASES for d in c.dtypes]


@pytest.mark.parametrize(("case", "dtype"), MATRIX)
def test_ademamix_equals_pytorch_optimizer(case, dtype):
    run_parity(case, DTYPES[dtype])


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_ademamix_unfused_chain_equals_pytorch_optimizer(case):
    run_parity(case, torch.float64, fuse=False)


@pytest.mark.parametrize("t", [1, 2, 5, 10, 11, 100])
def test_ademamix_schedules_equal_the_reference(t):
    assert warm_alpha(t, 5.0, 10) == RefAdEMAMix.schedule_alpha(10, t, 5.0)
    assert warm_beta3(t, 0.9, 0.9999, 10) == RefAdEMAMix.schedule_beta3(10, t, 0.9, 0.9999)
    assert warm_beta3(t, 0.9, 0.9999, None) == 0.9999


def test_ademamix_warmup_needs_positive_beta1():
    with pytest.raises(ValueError, match="beta1 > 0"):
        tz.m.AdEMAMix(betas=(0.0, 0.999, 0.9999), t_alpha_beta3=10)


def test_ademamix_state_dict_resumes_bit_exactly():
    (a,) = make_params(torch.float32, (((3, 2), (4,)),))
    b = [p.detach().clone().requires_grad_() for p in a]

    def build(ps):
        return tz.Modular(ps, tz.m.AdEMAMix(t_alpha_beta3=6), tz.m.LR(0.05))

    opt_a, opt_b = build(a), build(b)
    for t in range(10):
        set_grads(t, 0.5, a, b)
        opt_a.step()
        opt_b.step()
        if t == 3:
            opt_b = build(b)
            opt_b.load_state_dict(save_load(opt_a.state_dict()))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
