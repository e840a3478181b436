"""Low precision: ``state_dtype`` (state kept in another dtype than the parameters) and ``param_update``
(Kahan-compensated or stochastically rounded writes of bf16/fp16 parameters), see ``torchzero/core/precision.py``.

References are runs that can differ: the same chain with fp32 state or fp32 parameters, and the uninterrupted run
for checkpoints.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from torch import Tensor

import torchzero as tz
from tests.modules.contract_registry import REGISTRY, Entry, Problem
from tests.parity import assert_resume_is_bit_exact
from torchzero.foreach import policy, rounding

m = tz.m


# ------------------------------------------------------------------------------------------------ the stall problem
def _regression() -> tuple[Tensor, Tensor, Tensor]:
    """Least squares whose solution has entries in [4, 7): bf16 spacing there is 2**-5, so a step below 2**-6 is
    lost by a plain bf16 write.  The start is exactly representable in bf16 (every run starts at the same point)."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(64, 8, generator=gen, dtype=torch.float64)
    w_star = 4 + 3 * torch.rand(8, generator=gen, dtype=torch.float64)
    w0 = (w_star + 0.5 * torch.randn(8, generator=gen, dtype=torch.float64)).to(torch.bfloat16).double()
    return X, X @ w_star, w0


def _train(dtype: torch.dtype, chain: list[Any], steps: int, **options: Any) -> tuple[Tensor, tz.Modular]:
    X, y, w0 = _regression()
    w = w0.to(dtype).requires_grad_()
    opt = tz.Modular([w], *chain, **options)
    for _ in range(steps):
        loss = ((X.to(dtype) @ w - y.to(dtype)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach().double(), opt


STALL_CASES = {
    # name: (chain factory, steps, options common to every run)
    "sgd": (lambda: [m.LR(1e-2)], 400, {}),  # the update is subtracted by the core's final write
    "adam": (lambda: [m.Adam(), m.LR(1e-3)], 1000, {"state_dtype": "float32"}),  # the sink's fused-LR write
    "adam_fused": (lambda: [m.Adam(), m.LR(1e-3)], 1000, {}),  # torch's fused kernel into the sink's buffer
}
# measured (gap = |w - w_fp32| / |w0 - w_fp32| after the run): sgd plain 0.81, kahan 0.029, stochastic 0.026;
# adam (fp32 state) plain 1.0, kahan 0.019, stochastic 0.17; adam_fused (bf16 state, the step rounded to bf16 by
# the kernel) plain 1.0, kahan 0.071, stochastic 0.22.  Adam's steps have the size lr whatever the gradient, so
# random rounding walks around the solution by about one bf16 spacing; the bf16 spacing bounds how close any
# bf16 run can get.
GAP = {
    ("sgd", "kahan"): 0.05,
    ("sgd", "stochastic_rounding"): 0.05,
    ("adam", "kahan"): 0.05,
    ("adam", "stochastic_rounding"): 0.25,
    ("adam_fused", "kahan"): 0.12,
    ("adam_fused", "stochastic_rounding"): 0.3,
}


@pytest.mark.parametrize("mode", ["kahan", "stochastic_rounding"])
@pytest.mark.parametrize("case", sorted(STALL_CASES))
def test_compensated_bf16_tracks_fp32_where_plain_bf16_stalls(case, mode):
    make, steps, options = STALL_CASES[case]
    ref, _ = _train(torch.float32, make(), steps)
    _, _, w0 = _regression()
    start = (w0 - ref).norm()
    plain, _ = _train(torch.bfloat16, make(), steps, **options)
    compensated, opt = _train(torch.bfloat16, make(), steps, param_update=mode, **options)
    plain_gap, gap = float((plain - ref).norm() / start), float((compensated - ref).norm() / start)
    assert plain_gap > 0.5, f"plain bf16 writes should stall on this problem (gap {plain_gap:.3f})"
    tol = GAP[case, mode]
    assert gap < tol, f"{mode}: the bf16 run is {gap:.3f} of the way from the fp32 run (plain: {plain_gap:.3f})"
    if mode == "kahan":
        (w,) = opt.param_groups[0]["params"]
        assert opt.state[w]["param_update"]["kahan"].dtype == torch.bfloat16


def test_fp16_parameters_are_compensated_too():
    make, steps, _ = STALL_CASES["sgd"]
    ref, _ = _train(torch.float32, make(), steps)
    start = (_regression()[2] - ref).norm()
    for mode in ("kahan", "stochastic_rounding"):
        w, _ = _train(torch.float16, make(), steps, param_update=mode)
        assert float((w - ref).norm() / start) < 0.05, mode


def test_rounding_kernels_against_float64():
    """Kahan keeps theta + comp equal to the float64 sum; stochastic rounding is unbiased (mean of 4096 draws)."""
    gen = torch.Generator().manual_seed(1)
    theta = [torch.full((4096,), 1.0, dtype=torch.bfloat16)]
    comp = [torch.zeros_like(theta[0])]
    delta = [torch.full((4096,), 1e-4)]
    exact = 1.0
    for _ in range(50):
        rounding.kahan_sub_(theta, comp, delta)
        exact -= 1e-4
    held = theta[0].double() + comp[0].double()
    # comp is bf16: each step rounds it by at most 2**-8 of its size, itself at most half a spacing (2**-9 below 1)
    assert torch.allclose(held, torch.full_like(held, exact), rtol=0, atol=50 * 2**-17)
    assert (theta[0].double() - exact).abs().max() <= 2**-9  # and theta is the nearest bf16 value (plain: 1.0)
    sr = [torch.full((4096,), 1.0, dtype=torch.bfloat16)]
    for _ in range(50):
        rounding.stochastic_sub_(sr, delta, gen)
    # each element is exact within one spacing (2**-8 below 1); the mean of 4096 is within 4 standard errors
    assert abs(sr[0].double().mean().item() - exact) < 4 * 2**-8 / 64


# ------------------------------------------------------------------------------------------------ every module with state
def _state_dtypes(opt: tz.Modular) -> dict[str, torch.dtype]:
    out = {}
    for st in opt.state.values():
        for key, ms in st.items():
            if key == "param_update" or not isinstance(ms, dict):
                continue
            for name, t in ms.items():
                if isinstance(t, Tensor) and t.is_floating_point():
                    out[f"{key}.{name}"] = t.dtype
    return out


def _stateful(e: Entry) -> bool:
    return any(mod.keeps_state for mod in tz.m.Chain(*e.chain()).walk())


STATEFUL = [pytest.param(e, id=e.id) for e in REGISTRY if _stateful(e)]
# |theta(bf16 state) - theta(fp32 state)| / |theta(fp32 state) - theta0| after the entry's steps: measured at most
# 0.035 (SOAP; every elementwise rule at most 0.01), 0.08 for Shampoo updating its momentum every second step
TRACK = 0.05
TRACK_WIDER = {"Shampoo-momentum_every_2": 0.15}


def _run_entry(e: Entry, dtype: torch.dtype, **options: Any) -> tuple[list[Tensor], tz.Modular, list[Tensor]]:
    problem = Problem(dtype)
    x0 = [p.detach().clone() for p in problem.params]
    opt = tz.Modular(problem.groups(e.groups), *e.chain(), **{**e.options, **options})
    closure = problem.closure()
    for _ in range(e.steps):
        opt.step(closure)
    return [p.detach() for p in problem.params], opt, x0


@pytest.mark.parametrize("e", [pytest.param(e, id=e.id) for e in REGISTRY])
def test_modules_with_state_declare_keeps_state(e: Entry):
    """The declaration ``state_dtype`` is checked against: every module that kept floating state declares it."""
    _, opt, _ = _run_entry(e, torch.float32)
    holders = {key.rsplit(".", 1)[0] for key in _state_dtypes(opt)}
    # a wrapped torch optimizer keeps its own state and declares writes_params instead (both settings refused)
    undeclared = [
        type(mod).__name__ for mod in opt.modules if mod.key in holders and not (mod.keeps_state or mod.writes_params)
    ]
    assert not undeclared, f"{undeclared} keep per-parameter state but do not declare keeps_state"


@pytest.mark.parametrize("e", STATEFUL)
def test_bf16_state_of_fp32_parameters_tracks_fp32_state(e: Entry):
    ref, ref_opt, x0 = _run_entry(e, torch.float32)
    if not _state_dtypes(ref_opt):
        pytest.skip("keeps no floating state in this configuration (SGD without momentum)")
    got, opt, _ = _run_entry(e, torch.float32, state_dtype="bfloat16")
    exact = {k for k in _state_dtypes(opt) if _declared_exact(opt, k)}
    dtypes = _state_dtypes(opt)
    assert dtypes, f"{e.id} declares keeps_state but kept no floating state"
    assert {k: d for k, d in dtypes.items() if k not in exact} == dict.fromkeys(set(dtypes) - exact, torch.bfloat16)
    assert all(dtypes[k] == torch.float32 for k in exact), "exact_state is kept in the compute dtype"
    assert _state_dtypes(ref_opt) == dict.fromkeys(dtypes, torch.float32)
    move = max(float((r - a).abs().max()) for r, a in zip(ref, x0, strict=True))
    err = max(float((r - g).abs().max()) for r, g in zip(ref, got, strict=True))
    assert err <= TRACK_WIDER.get(e.id, TRACK) * move, f"{e.id}: off by {err:.3g} for a move of {move:.3g}"


@pytest.mark.parametrize("e", STATEFUL)
def test_fp32_state_of_bf16_parameters(e: Entry):
    """State kept wider than the parameters: every module computes in fp32 and keeps fp32 state; the run stays
    as close to the fp32 run as the plain bf16 run does, up to one bf16 rounding of the move (2**-7 of it, x4)."""
    ref, ref_opt, x0 = _run_entry(e, torch.float32)
    if not _state_dtypes(ref_opt):
        pytest.skip("keeps no floating state in this configuration (SGD without momentum)")
    plain, _, _ = _run_entry(e, torch.bfloat16)
    got, opt, _ = _run_entry(e, torch.bfloat16, state_dtype="float32")
    assert set(_state_dtypes(opt).values()) == {torch.float32}
    assert all(torch.isfinite(g).all() for g in got)
    move = max(float((r - a).abs().max()) for r, a in zip(ref, x0, strict=True))
    err = max(float((r - g.float()).abs().max()) for r, g in zip(ref, got, strict=True))
    plain_err = max(float((r - g.float()).abs().max()) for r, g in zip(ref, plain, strict=True))
    assert err <= max(2 * plain_err, 4 * 2**-7 * move), f"{e.id}: {err:.3g} vs plain bf16 {plain_err:.3g}"


def _declared_exact(opt: tz.Modular, key: str) -> bool:
    module_key, name = key.rsplit(".", 1)
    module = next(mod for mod in opt.modules if mod.key == module_key)
    return any(name == x or (x.endswith("*") and name.startswith(x[:-1])) for x in module.exact_state)


# ------------------------------------------------------------------------------------------------ checkpoints
def _save_load(sd: dict[str, Any]) -> dict[str, Any]:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize(
    ("dtype", "options"),
    [
        (torch.float32, {"state_dtype": "bfloat16"}),
        (torch.bfloat16, {"state_dtype": "float32", "param_update": "kahan"}),
        (torch.bfloat16, {"param_update": "stochastic_rounding", "rounding_seed": 3}),
        (torch.float16, {"state_dtype": "float32", "param_update": "stochastic_rounding"}),
    ],
    ids=["f32-bf16state", "bf16-f32state-kahan", "bf16-stochastic", "f16-f32state-stochastic"],
)
def test_resume_is_bit_exact_and_keeps_dtypes(dtype, options):
    def build(groups: list[list[Tensor]]) -> tz.Modular:
        return tz.Modular([{"params": ps} for ps in groups], m.Adam(), m.LR(1e-2), **options)

    o1, o2 = assert_resume_is_bit_exact(build, dtype=dtype)
    assert _state_dtypes(o2) == _state_dtypes(o1)
    want = getattr(torch, options.get("state_dtype") or str(dtype).removeprefix("torch."))
    assert set(_state_dtypes(o2).values()) == {want}
    if options.get("param_update") == "kahan":
        kahan = [st["param_update"]["kahan"] for st in o2.state.values()]
        assert kahan and all(k.dtype == dtype for k in kahan)
        assert any(k.abs().sum() > 0 for k in kahan)  # something was compensated (not a vacuous round trip)


def test_loading_keeps_the_saved_state_dtype():
    """torch's loader casts floating state to the parameter's dtype; fp32 state of bf16 parameters stays fp32."""
    w = torch.randn(5, dtype=torch.bfloat16, requires_grad=True)
    opt = tz.Modular([w], m.Adam(), m.LR(1e-2), state_dtype="float32")
    w.grad = torch.randn(5, dtype=torch.bfloat16)
    opt.step()
    sd = _save_load(opt.state_dict())
    fresh = tz.Modular([w], m.Adam(), m.LR(1e-2), state_dtype="float32")
    fresh.load_state_dict(sd)
    for name, t in fresh.state[w]["0"].items():
        if isinstance(t, Tensor) and t.is_floating_point():
            assert t.dtype == torch.float32, name
            assert torch.equal(t, opt.state[w]["0"][name])
    plain = tz.Modular([w], m.Adam(), m.LR(1e-2))  # without state_dtype torch's rule applies, as before
    plain.load_state_dict(
        sd | {"param_groups": [{k: v for k, v in sd["param_groups"][0].items() if k != "state_dtype"}]}
    )
    assert plain.state[w]["0"]["exp_avg"].dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------ groups and kernels
def test_per_group_settings():
    a = torch.randn(4, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    opt = tz.Modular([{"params": [a], "state_dtype": torch.bfloat16}, {"params": [b]}], m.Adam(), m.LR(1e-2))
    assert opt.param_groups[0]["state_dtype"] == torch.bfloat16 and "state_dtype" not in opt.param_groups[1]
    a.grad, b.grad = torch.randn(4), torch.randn(4)
    opt.step()
    assert opt.state[a]["0"]["exp_avg"].dtype == torch.bfloat16
    assert opt.state[b]["0"]["exp_avg"].dtype == torch.float32
    c = torch.randn(3, requires_grad=True)
    opt = tz.Modular([a], m.Adam(), m.LR(1e-2), state_dtype="half")
    opt.add_param_group({"params": [c], "state_dtype": None})
    assert [g.get("state_dtype") for g in opt.param_groups] == ["float16", None]


def test_no_fused_kernel_bypasses_state_dtype_or_compensation(monkeypatch):
    """A fused kernel never runs on state kept in another dtype; with compensated writes it runs, but writes its
    step into the sink's buffer, never into the parameters (the sink adds the step with compensation)."""
    assert policy.fused_ok(torch.device("cpu"), torch.float32, 1e-3, {torch.float32}) == policy.fused_ok(
        torch.device("cpu"), torch.float32, 1e-3, {torch.float32}, state_dtype=torch.float32
    )
    assert not policy.fused_ok(torch.device("cpu"), torch.float32, 1e-3, {torch.float32}, state_dtype=torch.bfloat16)
    targets: list[Tensor] = []
    for name in ("_fused_adam_", "_fused_sgd_"):
        kernel = getattr(torch, name)

        def spy(params: list[Tensor], *args: Any, _kernel: Any = kernel, **kwargs: Any) -> Any:
            targets.extend(params)
            return _kernel(params, *args, **kwargs)

        monkeypatch.setattr(torch, name, spy)
    for dtype, chain, options, fused in [
        (torch.float32, [m.Adam(), m.LR(1e-2)], {"state_dtype": "bfloat16"}, False),
        (torch.bfloat16, [m.Adam(), m.LR(1e-2)], {"state_dtype": "float32"}, False),
        (torch.float32, [m.SGD(momentum=0.9), m.LR(1e-2)], {"state_dtype": "float16"}, False),
        (torch.bfloat16, [m.Adam(), m.LR(1e-2)], {"param_update": "kahan"}, True),
        (torch.bfloat16, [m.SGD(momentum=0.9), m.LR(1e-2)], {"param_update": "stochastic_rounding"}, True),
        (torch.bfloat16, [m.Adam(), m.LR(1e-2)], {}, True),  # the spy sees kernels: plain writes use them
    ]:
        targets.clear()
        w = torch.randn(6, dtype=dtype, requires_grad=True)
        opt = tz.Modular([w], *chain, **options)
        for _ in range(2):
            w.grad = torch.randn(6, dtype=dtype)
            opt.step()
        assert bool(targets) == fused, (options, len(targets))
        writes_params = any(t is w for t in targets)
        assert writes_params == (fused and not options), "a kernel wrote compensated parameters itself"


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"state_dtype": "int8"}, "state_dtype"),
        ({"state_dtype": "bfloat"}, "state_dtype"),
        ({"state_dtype": torch.complex64}, "state_dtype"),
        ({"param_update": "kahn"}, "param_update"),
        ({"param_update": None}, "param_update"),
    ],
)
def test_bad_values_are_refused(options, text):
    w = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match=text):
        tz.Modular([w], m.Adam(), m.LR(1e-2), **options)
    with pytest.raises(ValueError, match=text):
        tz.Modular([{"params": [w], **options}], m.Adam(), m.LR(1e-2))
    opt = tz.Modular([w], m.Adam(), m.LR(1e-2))
    with pytest.raises(ValueError, match=text):
        opt.add_param_group({"params": [torch.randn(2, requires_grad=True)], **options})
    assert len(opt.param_groups) == 1


def test_state_dtype_on_a_chain_without_state_is_an_error():
    w = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="keeps per-parameter state"):
        tz.Modular([w], m.Normalize(), m.LR(1e-2), state_dtype="bfloat16")
    opt = tz.Modular([w], m.Normalize(), m.LR(1e-2))
    opt.param_groups[0]["state_dtype"] = "bfloat16"  # set by hand between steps: refused before the step changes w
    w.grad = torch.ones(3)
    before = w.detach().clone()
    with pytest.raises(ValueError, match="keeps per-parameter state"):
        opt.step()
    assert torch.equal(w, before)
    tz.Modular([w], m.Normalize(), m.LR(1e-2), param_update="kahan")  # compensated writes need no state


def test_a_wrapped_optimizer_refuses_low_precision():
    """It writes the parameters (rounded) and keeps its own state: neither setting could apply."""
    w = torch.randn(3, requires_grad=True)
    for options in ({"param_update": "kahan"}, {"state_dtype": "bfloat16"}, {"state_dtype": "float32"}):
        with pytest.raises(ValueError, match="moves the parameters itself"):
            tz.Modular([w], m.Adam(), m.Wrap(torch.optim.SGD, lr=1e-2), **options)


def test_differentiable_mode_refuses_low_precision():
    w = torch.randn(3, requires_grad=True).clone()
    with pytest.raises(ValueError, match="differentiable"):
        tz.Modular([w], m.Adam(), m.LR(1e-2), differentiable=True, param_update="kahan")


def test_changing_state_dtype_between_steps_converts_the_state():
    w = torch.randn(4, requires_grad=True)
    opt = tz.Modular([w], m.Adam(), m.LR(1e-2))
    w.grad = torch.randn(4)
    opt.step()
    kept = opt.state[w]["0"]["exp_avg"].clone()
    opt.param_groups[0]["state_dtype"] = "bfloat16"
    w.grad = torch.zeros(4)
    opt.step()
    assert opt.state[w]["0"]["exp_avg"].dtype == torch.bfloat16
    # two roundings to bf16 (the conversion, then the write back), each at most 2**-8 relative
    torch.testing.assert_close(opt.state[w]["0"]["exp_avg"].float(), kept * 0.9, rtol=2**-7, atol=0)


# ------------------------------------------------------------------------------------------------ bounded temporaries
@pytest.mark.parametrize(
    ("make", "options"),
    [
        (lambda: [m.Adam(), m.LR(1e-2)], {"state_dtype": "bfloat16"}),
        (lambda: [m.Lamb(), m.LR(1e-2)], {"state_dtype": "bfloat16"}),
        (lambda: [m.Prodigy(), m.LR(1.0)], {"state_dtype": "float16"}),
        (lambda: [m.SGD(momentum=0.9), m.LR(1e-2)], {"state_dtype": "bfloat16", "param_update": "kahan"}),
    ],
    ids=["adam", "lamb", "prodigy", "sgd-kahan"],
)
def test_narrow_state_is_upcast_piece_by_piece_with_the_same_result(monkeypatch, make, options):
    """Segments with narrow state are cut into pieces of at most ``precision.CHUNK`` elements (so the fp32
    temporaries never cover the whole model); elementwise math gives bit-identical results either way."""
    from torchzero.core import precision

    shapes = [(10,), (5, 3), (20,), (4,), (3, 3)]

    def run(chunk: int) -> tuple[list[Tensor], int]:
        monkeypatch.setattr(precision, "CHUNK", chunk)
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
        opt = tz.Modular(params, *make(), **options)
        rule = opt.modules[0]
        calls = []
        apply = type(rule).apply if hasattr(rule, "apply") else None
        if apply is not None:
            monkeypatch.setattr(
                rule, "apply", lambda ctx, seg, *rest: (calls.append(len(seg)), apply(rule, ctx, seg, *rest))[1]
            )
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        return [p.detach().clone() for p in params], len(calls)

    whole, calls_whole = run(1 << 20)
    cut, calls_cut = run(16)
    for a, b in zip(whole, cut, strict=True):
        assert torch.equal(a, b)
    if calls_whole:
        assert calls_cut > calls_whole, "the segments were not cut"


def test_pieces():
    from torchzero.core.precision import pieces

    assert pieces([10, 15, 20, 4, 9], 16) == [(0, 1), (1, 2), (2, 3), (3, 5)]
    assert pieces([40], 16) == [(0, 1)]
    assert pieces([], 16) == []


# ------------------------------------------------------------------------------------------------ every write path
def _writes_params(e: Entry) -> bool:
    return any(mod.writes_params for mod in tz.m.Chain(*e.chain()).walk())


@pytest.mark.parametrize("mode", ["kahan", "stochastic_rounding"])
@pytest.mark.parametrize("e", [pytest.param(e, id=e.id) for e in REGISTRY])
def test_every_module_writes_bf16_parameters_with_compensation(e: Entry, mode: str):
    """Every chain of the registry (fused stages, emit_per_tensor, kernels, line searches that keep their trial
    point, the core's final write) goes through the compensated write; chains with a wrapped torch optimizer
    refuse it.  On these 5 steps, far above bf16's spacing, compensation has nothing to win: the run must stay
    within twice the plain bf16 run's distance from the fp32 run, plus 5% of the move (measured: the largest
    excess is Split with stochastic rounding, 0.035 of the move against 0.013 for plain writes)."""
    if _writes_params(e):
        with pytest.raises(ValueError, match="moves the parameters itself"):
            _run_entry(e, torch.bfloat16, param_update=mode)
        return
    ref, _, x0 = _run_entry(e, torch.float32)
    plain, _, _ = _run_entry(e, torch.bfloat16)
    got, opt, _ = _run_entry(e, torch.bfloat16, param_update=mode)
    assert all(torch.isfinite(g).all() for g in got)
    if mode == "kahan":
        buffers = [st["param_update"]["kahan"] for st in opt.state.values() if "param_update" in st]
        assert buffers and all(b.dtype == torch.bfloat16 for b in buffers)
    move = max(float((r - a).abs().max()) for r, a in zip(ref, x0, strict=True))
    err = max(float((r - g.float()).abs().max()) for r, g in zip(ref, got, strict=True))
    plain_err = max(float((r - g.float()).abs().max()) for r, g in zip(ref, plain, strict=True))
    assert err <= 2 * plain_err + 0.05 * move, f"{e.id}: {err:.3g} vs plain bf16 {plain_err:.3g}"


@pytest.mark.parametrize(
    "make",
    [
        lambda: [m.Adam(), m.LR(1e-2)],
        lambda: [m.SGD(momentum=0.9), m.LR(1e-2)],
        lambda: [m.Adafactor(), m.LR(1e-2)],
        lambda: [m.Shampoo(), m.LR(1e-2)],
        lambda: [m.Adam(), m.LR(1e-2), m.Lookahead(k=2)],
    ],
    ids=["adam", "sgd", "adafactor", "shampoo", "lookahead"],
)
def test_a_plain_group_beside_a_low_precision_one_is_unchanged(make):
    """The group without low-precision settings steps bit for bit as in an optimizer of its own (its state is
    neither converted nor copied because another group keeps bf16 state and writes with compensation)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, generator=gen).requires_grad_()
    b = torch.randn(5, 2, dtype=torch.float64, generator=gen).requires_grad_()
    alone = b.detach().clone().requires_grad_()
    opt = tz.Modular([{"params": [a], "state_dtype": "bfloat16", "param_update": "kahan"}, {"params": [b]}], *make())
    ref = tz.Modular([alone], *make())
    for _ in range(4):
        a.grad = torch.randn(a.shape, generator=gen)
        b.grad = torch.randn(b.shape, generator=gen, dtype=torch.float64)
        alone.grad = b.grad.clone()
        opt.step()
        ref.step()
    assert torch.equal(b, alone)
    assert {t.dtype for t in opt.state[b]["0"].values() if isinstance(t, Tensor) and t.is_floating_point()} == {
        torch.float64
    }
