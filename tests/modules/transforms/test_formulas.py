"""Every transform against a written-out formula: fp32 and fp64, two param groups with different settings,
foreach path and per-tensor reference path (``tz.foreach.reference_mode``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import torchzero as tz
from tests.parity import NoHostSync

from .helpers import grads_for, modular, two_groups

# A reference gets, for every parameter, (param, grad, settings of its group, per-parameter state dict)
# and the step number, and returns the update the chain must subtract.
Ref = Callable[[list[tuple[torch.Tensor, torch.Tensor, dict, dict]], int], list[torch.Tensor]]


@dataclass
class Case:
    name: str
    chain: Callable[[], list[Any]]
    settings: list[dict]  # settings of group 0 and group 1 (as the Modular's param groups)
    defaults: dict
    ref: Ref
    extra: dict = field(default_factory=dict)


def each(fn):
    """A reference that works tensor by tensor."""
    return lambda items, t: [fn(p, g, s, st, t) for p, g, s, st in items]


def cautious(p, g, s, st, t):
    u = g + 0.3  # Add(0.3) first, so the update and the gradient disagree somewhere
    m = (u * g > 0).to(g.dtype)
    if s["normalize"]:
        m = m / torch.clamp(m.mean(), min=s["eps"])
    return u * m


def weight_decay(p, g, s, st, t):
    return g + s["weight_decay"] * p


def clip_norm_global(items, t):
    total = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g, s_ord(items)) for _, g, _, _ in items]), s_ord(items)
    )
    return [g * torch.clamp(s["max_norm"] / (total + s["eps"]), max=1.0) for _, g, s, _ in items]


def s_ord(items):
    return items[0][2].get("ord", 2)


def clip_norm_tensor(p, g, s, st, t):
    return g * min(1.0, s["max_norm"] / (torch.linalg.vector_norm(g, s.get("ord", 2)).item() + s["eps"]))


def normalize_global(items, t):
    total = math.sqrt(sum(float((g**2).sum()) for _, g, _, _ in items))
    return [g * (s["norm"] / max(total, s["eps"])) for _, g, s, _ in items]


def normalize_tensor(p, g, s, st, t):
    return g * (s["norm"] / max(torch.linalg.vector_norm(g).item(), s["eps"]))


def clip_value(p, g, s, st, t):
    return torch.clamp(g, -s["value"], s["value"])


def centralize(p, g, s, st, t):
    if g.ndim < s["min_ndim"]:
        return g
    return g - g.mean(dim=tuple(range(1, g.ndim)), keepdim=True)


def ema(p, g, s, st, t):
    m = st.setdefault("m", torch.zeros_like(g))
    m.mul_(s["momentum"]).add_((1 - s["momentum"]) * g)
    return m / (1 - s["momentum"] ** t) if s["debiased"] else m.clone()


def lerp_grad(p, g, s, st, t):
    u = 2 * g
    return u + s["weight"] * (g - u)


CASES = [
    Case(
        "Cautious",
        lambda: [tz.m.Add(0.3), tz.m.Cautious()],
        [{"normalize": True}, {"eps": 0.5, "normalize": True}],
        {"normalize": False, "eps": 1e-3},
        each(cautious),
    ),
    Case(
        "Cautious-plain",
        lambda: [tz.m.Add(0.3), tz.m.Cautious()],
        [{}, {"normalize": True}],
        {"normalize": False, "eps": 1e-3},
        each(cautious),
    ),
    Case(
        "WeightDecay",
        lambda: [tz.m.WeightDecay(0.1)],
        [{}, {"weight_decay": 0.5}],
        {"weight_decay": 0.1},
        each(weight_decay),
    ),
    Case(
        "ClipNorm",
        lambda: [tz.m.ClipNorm(1.0)],
        [{}, {"max_norm": 3.0}],
        {"max_norm": 1.0, "eps": 1e-6},
        clip_norm_global,
    ),
    Case(
        "ClipNorm-inf",
        lambda: [tz.m.ClipNorm(0.5, ord=float("inf"))],
        [{}, {"max_norm": 0.7}],
        {"max_norm": 0.5, "eps": 1e-6, "ord": float("inf")},
        clip_norm_global,
    ),
    Case(
        "ClipNorm-per-tensor",
        lambda: [tz.m.ClipNorm(1.0, per_tensor=True)],
        [{}, {"max_norm": 2.5, "eps": 0.1}],
        {"max_norm": 1.0, "eps": 1e-6},
        each(clip_norm_tensor),
    ),
    Case(
        "Normalize", lambda: [tz.m.Normalize(2.0)], [{}, {"norm": 0.5}], {"norm": 2.0, "eps": 1e-12}, normalize_global
    ),
    Case(
        "Normalize-per-tensor",
        lambda: [tz.m.Normalize(per_tensor=True)],
        [{"norm": 3.0}, {}],
        {"norm": 1.0, "eps": 1e-12},
        each(normalize_tensor),
    ),
    Case("ClipValue", lambda: [tz.m.ClipValue(0.5)], [{}, {"value": 1.2}], {"value": 0.5}, each(clip_value)),
    Case("Centralize", lambda: [tz.m.Centralize()], [{}, {"min_ndim": 3}], {"min_ndim": 2}, each(centralize)),
    Case("Sign", lambda: [tz.m.Sign()], [{}, {}], {}, each(lambda p, g, s, st, t: torch.sign(g))),
    Case(
        "EMA",
        lambda: [tz.m.EMA(0.9)],
        [{}, {"momentum": 0.5, "debiased": True}],
        {"momentum": 0.9, "debiased": False},
        each(ema),
    ),
    Case(
        "Add",
        lambda: [tz.m.Add(0.25, alpha=2.0)],
        [{}, {"other": -1.0, "alpha": 0.5}],
        {"other": 0.25, "alpha": 2.0},
        each(lambda p, g, s, st, t: g + s["alpha"] * s["other"]),
    ),
    Case(
        "Sub",
        lambda: [tz.m.Sub(0.25)],
        [{}, {"other": -1.5, "alpha": 3.0}],
        {"other": 0.25, "alpha": 1.0},
        each(lambda p, g, s, st, t: g - s["alpha"] * s["other"]),
    ),
    Case(
        "Mul",
        lambda: [tz.m.Mul(0.5)],
        [{}, {"other": -2.0}],
        {"other": 0.5},
        each(lambda p, g, s, st, t: g * s["other"]),
    ),
    Case(
        "Div",
        lambda: [tz.m.Div(4.0)],
        [{}, {"other": -0.5}],
        {"other": 4.0},
        each(lambda p, g, s, st, t: g / s["other"]),
    ),
    Case("Neg", lambda: [tz.m.Neg()], [{}, {}], {}, each(lambda p, g, s, st, t: -g)),
    Case(
        "Lerp-Grad",
        lambda: [tz.m.Mul(2.0), tz.m.Lerp(tz.m.Grad(), 0.25)],
        [{}, {"weight": 0.75}],
        {"weight": 0.25},
        each(lerp_grad),
    ),
    Case(
        "Mul-branch",
        lambda: [tz.m.Mul([tz.m.Grad(), tz.m.Sign()])],
        [{}, {}],
        {},
        each(lambda p, g, s, st, t: g * torch.sign(g)),
    ),
    Case("Grad-restart", lambda: [tz.m.Mul(3.0), tz.m.Grad()], [{}, {}], {}, each(lambda p, g, s, st, t: g)),
    Case("Clone", lambda: [tz.m.Clone(), tz.m.Mul(0.5)], [{}, {}], {}, each(lambda p, g, s, st, t: 0.5 * g)),
]


@pytest.mark.parametrize("reference", [False, True], ids=["foreach", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_transform_matches_formula(case: Case, dtype: torch.dtype, reference: bool) -> None:
    groups = two_groups(dtype)
    opt = modular(groups, case.settings, *case.chain())
    expected = [[p.detach().clone() for p in ps] for ps in groups]
    states: list[dict] = [{} for _ in range(sum(len(ps) for ps in groups))]
    params = [p for ps in groups for p in ps]
    for t in range(1, 6):
        grads = grads_for(params, t)
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        with tz.foreach.reference_mode(reference):
            opt.step()
        items, i = [], 0
        for gi, ps in enumerate(expected):
            s = {**case.defaults, **case.settings[gi]}
            for p in ps:
                items.append((p, grads[i], s, states[i]))
                i += 1
        for (p, _, _, _), u in zip(items, case.ref(items, t), strict=True):
            p.sub_(u)
        for got, want in zip(params, [p for ps in expected for p in ps], strict=True):
            torch.testing.assert_close(got.detach(), want, msg=lambda m, t=t: f"{case.name}, step {t}: {m}")


def test_clone_leaves_grad_untouched_and_grad_sees_raw_gradient() -> None:
    (ps, _) = two_groups(torch.float32)
    opt = tz.Modular(ps, tz.m.Clone(), tz.m.Mul(0.0), tz.m.Add(tz.m.Grad()))
    grads = grads_for(ps, 0)
    for p, g in zip(ps, grads, strict=True):
        p.grad = g.clone()
    before = [p.detach().clone() for p in ps]
    opt.step()
    for p, g, b in zip(ps, grads, before, strict=True):
        torch.testing.assert_close(p.grad, g)  # Clone: .grad is not the update
        torch.testing.assert_close(p.detach(), b - g)  # 0 * u + g


def test_centralize_complex_averages_real_and_imaginary_parts_separately() -> None:
    p = torch.randn(3, 4, dtype=torch.complex64, requires_grad=True)
    start = p.detach().clone()
    g = torch.randn(3, 4, dtype=torch.complex64)
    p.grad = g.clone()
    tz.Modular([p], tz.m.Centralize()).step()
    torch.testing.assert_close(p.detach(), start - (g - g.mean(dim=1, keepdim=True)))


def test_cautious_declares_raw_grad_and_gets_it_after_other_modules() -> None:
    assert tz.m.Cautious.needs_raw_grad and tz.m.Grad.needs_raw_grad
    p = torch.tensor([1.0, -1.0, 2.0], requires_grad=True)
    p.grad = torch.tensor([1.0, 1.0, -1.0])
    # Neg flips every sign: all components now disagree with the raw gradient, so nothing is left
    tz.Modular([p], tz.m.Neg(), tz.m.Cautious()).step()
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, -1.0, 2.0]))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: tz.m.ClipNorm(0.0), "max_norm > 0"),
        (lambda: tz.m.ClipNorm(1.0, ord=0), "ord > 0"),
        (lambda: tz.m.ClipValue(-1.0), "positive bound"),
        (lambda: tz.m.Centralize(min_ndim=1), "min_ndim >= 2"),
        (lambda: tz.m.EMA(1.0), "0 <= momentum < 1"),
        (lambda: tz.m.WeightDecay(-0.1), "weight_decay >= 0"),
        (lambda: tz.m.Add("grad"), "tz.m.Grad"),
        (lambda: tz.m.Lerp(0.5, 0.1), "tz.m.Mul"),
    ],
)
def test_bad_arguments_say_what_to_do(make, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize(
    "chain",
    [
        lambda: [tz.m.ClipNorm(1.0), tz.m.Adam(), tz.m.Cautious(normalize=True), tz.m.LR(1e-2)],
        lambda: [
            tz.m.Normalize(),
            tz.m.EMA(0.9, debiased=True),
            tz.m.LR(1e-2),
            tz.m.WeightDecay(1e-2, scale_by_lr=True),
        ],
        lambda: [
            tz.m.ClipNorm(1.0, per_tensor=True),
            tz.m.ClipValue(0.1),
            tz.m.Centralize(),
            tz.m.Sign(),
            tz.m.LR(1e-2),
        ],
        lambda: [tz.m.Adam(), tz.m.Lerp(tz.m.Grad(), 0.1), tz.m.WeightDecay(), tz.m.LR(1e-2)],
    ],
)
def test_no_host_sync_on_step(chain) -> None:
    groups = two_groups(torch.float32)
    opt = modular(groups, [{"lr": 0.1}, {}], *chain())
    params = [p for ps in groups for p in ps]
    for p, g in zip(params, grads_for(params, 0), strict=True):
        p.grad = g
    with NoHostSync():  # sees C++ reads of a value too (a tensor where a number is expected)
        opt.step()
        opt.step()


def test_debiased_ema_counts_each_parameters_own_steps() -> None:
    """b has no gradient in the first 3 steps: its EMA is debiased with its own count (t = 1 on its first step),
    like torch.optim.Adam's first moment (written out: m = 0.9 m + 0.1 g, x -= 0.1 m / (1 - 0.9^t_p))."""
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(4, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen, dtype=torch.float64)]
    params = [t.clone().requires_grad_() for t in init]
    expected = [t.clone() for t in init]
    avg = [torch.zeros_like(t) for t in init]
    count = [0, 0]
    opt = tz.Modular(params, tz.m.EMA(0.9, debiased=True), tz.m.LR(0.1))
    for t in range(6):
        for i, p in enumerate(params):
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            p.grad = None if (i == 1 and t < 3) else g.clone()
            if p.grad is not None:
                count[i] += 1
                avg[i] = 0.9 * avg[i] + 0.1 * g
                expected[i] = expected[i] - 0.1 * avg[i] / (1 - 0.9 ** count[i])
        opt.step()
        for p, q in zip(params, expected, strict=True):
            torch.testing.assert_close(p.detach(), q, msg=lambda m, t=t: f"step {t}: {m}")
