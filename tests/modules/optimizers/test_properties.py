"""Properties beyond the parity matrix: no host sync, the AdamW preset, orthogonalisation, Rprop with LR."""

from __future__ import annotations

import pytest
import torch

import torchzero as tz
from tests.parity import NoHostSync, make_params, run_parity, set_grads

from .registry import CASES, Case


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_step_never_reads_a_tensor_back_to_python(case):
    """No ``.item()``, ``float(t)``, ``bool(t)`` or tensor-as-number in a step (each blocks on a GPU)."""
    groups = make_params(torch.float32, case.shapes)
    flat = [p for ps in groups for p in ps]
    opt = tz.Modular([{"params": ps, **s} for ps, s in zip(groups, case.groups, strict=True)], *case.modules())
    set_grads(0, case.coupling, flat)
    opt.step()  # the first step creates the state
    with NoHostSync():
        with pytest.raises(AssertionError, match="host sync"):  # the guard itself works
            bool(torch.ones(()) > 0)
        for t in range(1, 3):
            set_grads(t, case.coupling, flat)
            opt.step()


def _run_steps(case, tensor_lr):
    groups = make_params(torch.float32, case.shapes)
    flat = [p for ps in groups for p in ps]
    settings = [{k: torch.tensor(v) if tensor_lr and k == "lr" else v for k, v in s.items()} for s in case.groups]
    opt = tz.Modular([{"params": ps, **s} for ps, s in zip(groups, settings, strict=True)], *case.modules())
    for t in range(3):
        set_grads(t, case.coupling, flat)
        if t == 0 or not tensor_lr:
            opt.step()
        else:
            with NoHostSync():
                opt.step()
    return flat


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES if "lr" in c.groups[0]])
def test_tensor_learning_rate_equals_float_and_stays_on_device(case):
    """A 0-dim tensor ``lr`` (as torch allows) gives the float-lr result without reading the tensor back."""
    expected = _run_steps(case, tensor_lr=False)
    got = _run_steps(case, tensor_lr=True)
    for p, q in zip(got, expected, strict=True):
        torch.testing.assert_close(p, q)


def test_adamw_preset_is_a_plain_chain_and_follows_a_scheduler():
    """The preset's modules are visible, and an lr scheduler on the Modular scales the decay like torch's AdamW."""
    chain = tz.m.AdamW(lr=0.05, weight_decay=0.2)
    assert [type(m).__name__ for m in chain.modules] == ["Adam", "WeightDecay", "LR"]
    a = make_params(torch.float32)
    b = [[p.detach().clone().requires_grad_() for p in ps] for ps in a]
    opt = tz.Modular([p for ps in a for p in ps], chain)
    ref = torch.optim.AdamW([p for ps in b for p in ps], lr=0.05, weight_decay=0.2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref, step_size=3, gamma=0.5)
    fa, fb = [p for ps in a for p in ps], [p for ps in b for p in ps]
    for t in range(10):
        set_grads(t, 0.5, fa, fb)
        opt.step()
        ref.step()
        sched.step()
        ref_sched.step()
        for p, q in zip(fa, fb, strict=True):
            torch.testing.assert_close(p, q, msg=lambda m, t=t: f"step {t + 1}: {m}")


def test_orthogonalize_gives_singular_values_near_one():
    """Five quintic Newton-Schulz steps map every singular value of a well-scaled matrix into about [0.6, 1.3]."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64) @ torch.diag(
        torch.linspace(0.2, 3.0, 5, dtype=torch.float64)
    )
    p = torch.zeros(8, 5, dtype=torch.float64, requires_grad=True)
    opt = tz.Modular([p], tz.m.Orthogonalize(ns_dtype=None, adjust_lr_fn="none"), tz.m.LR(1.0))
    p.grad = x.clone()
    opt.step()
    sv = torch.linalg.svdvals(-p.detach())
    assert sv.min() > 0.6 and sv.max() < 1.3, f"singular values after orthogonalisation: {sv.tolist()}"
    # and the direction is that of the polar factor U V^T
    u, _, vh = torch.linalg.svd(x, full_matrices=False)
    cos = torch.nn.functional.cosine_similarity((-p.detach()).flatten(), (u @ vh).flatten(), dim=0)
    assert cos > 0.95, f"cosine with U V^T is {cos.item():.3f}"


def test_orthogonalize_flatten_false_passes_higher_dim_tensors_through():
    p = torch.zeros(2, 3, 4, requires_grad=True)
    opt = tz.Modular([p], tz.m.Orthogonalize(flatten=False), tz.m.LR(0.1))
    g = torch.randn(2, 3, 4)
    p.grad = g.clone()
    opt.step()
    torch.testing.assert_close(p.detach(), -0.1 * g)


def test_rprop_followed_by_lr_scales_step_sizes_and_bounds():
    """``Rprop(step_sizes=(a, b)), LR(lr)`` is torch's Rprop with initial step lr and bounds (a*lr, b*lr)."""
    lr = 0.1
    case = Case(
        "rprop_lr", lambda: [tz.m.Rprop(step_sizes=(1e-3, 2.0)), tz.m.LR(lr)],
        lambda g: torch.optim.Rprop(g, lr=lr, step_sizes=(1e-3 * lr, 2.0 * lr)),
        groups=({}, {}), ref_groups=({}, {}),
    )  # fmt: skip
    run_parity(case, torch.float64)


def test_adagrad_initial_accumulator_per_group():
    """Per group, unlike torch (which reads the constructor value only): each group equals torch built with its value."""
    a = make_params(torch.float64)
    ref = [[p.detach().clone().requires_grad_() for p in ps] for ps in a]
    opt = tz.Modular([{"params": a[0]}, {"params": a[1], "initial_accumulator_value": 1.0}],
                     tz.m.Adagrad(initial_accumulator_value=0.1), tz.m.LR(0.1))  # fmt: skip
    refs = [torch.optim.Adagrad(ref[0], lr=0.1, initial_accumulator_value=0.1),
            torch.optim.Adagrad(ref[1], lr=0.1, initial_accumulator_value=1.0)]  # fmt: skip
    fa, fr = [p for ps in a for p in ps], [p for ps in ref for p in ps]
    for t in range(5):
        set_grads(t, 0.5, fa, fr)
        opt.step()
        for r in refs:
            r.step()
    for p, q in zip(fa, fr, strict=True):
        torch.testing.assert_close(p, q)


def test_heavyball_with_dampening_differs_from_sgd_only_in_the_first_buffer():
    """SGD starts its buffer at the first update; HeavyBall at zero (documented): with dampening they differ."""
    p = torch.ones(3, requires_grad=True)
    q = torch.ones(3, requires_grad=True)
    hb = tz.Modular([p], tz.m.HeavyBall(0.9, dampening=0.5), tz.m.LR(1.0))
    sgd = tz.Modular([q], tz.m.SGD(0.9, dampening=0.5), tz.m.LR(1.0))
    p.grad, q.grad = torch.ones(3), torch.ones(3)
    hb.step()
    sgd.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), 0.5))  # 1 - (1 - 0.5) * 1
    torch.testing.assert_close(q.detach(), torch.zeros(3))  # 1 - 1


def test_nadam_reads_a_checkpoint_in_the_old_product_format():
    """0.1.0 kept NAdam's momentum products as ``{"group#count": product}``; such a checkpoint resumes exactly."""
    torch.manual_seed(0)
    init = [torch.randn(5, 3), torch.randn(3)]
    grads = [[torch.randn_like(p) for p in init] for _ in range(6)]

    def run(steps, opt=None, params=None):
        params = params or [p.clone().requires_grad_() for p in init]
        opt = opt or tz.Modular(
            [{"params": params[:1]}, {"params": params[1:], "lr": 5e-2}], tz.m.NAdam(), tz.m.LR(1e-2)
        )
        for gs in steps:
            for p, g in zip(params, gs, strict=True):
                p.grad = g.clone()
            opt.step()
        return opt, params

    straight, expected = run(grads)
    saved, params = run(grads[:3])
    sd = saved.state_dict()
    products = sd["torchzero"]["modules"]["0"]["mu_product"]
    assert set(products) == {"0", "1"}
    sd["torchzero"]["modules"]["0"]["mu_product"] = {f"{k}#{c}": p for k, pairs in products.items() for c, p in pairs}
    resumed = tz.Modular([{"params": params[:1]}, {"params": params[1:], "lr": 5e-2}], tz.m.NAdam(), tz.m.LR(1e-2))
    resumed.load_state_dict(sd)
    assert resumed.modules[0].global_state["mu_product"] == products
    _, got = run(grads[3:], resumed, params)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
