"""The contract every public module of ``tz.m`` must keep, run over the registry in ``contract_registry.py``.

For each registry entry (a module in a sensible chain, two param groups with different settings); the
check names are the keys of ``Entry.xfail`` and ``CHECKS``:

* ``run`` / ``bf16``: fp32, fp64 (and bf16), a few steps with ``closure(backward)``: finite parameters, a
  loss that does not blow up, ``step`` returns the loss at the start and ``last_info`` counts the calls;
* ``roundtrip``: a ``state_dict`` (before any step, or mid-run; f64, f32, c64) through ``torch.save`` /
  ``torch.load(weights_only=True)`` into a fresh optimizer on fresh parameters continues bit for bit like
  the uninterrupted run; loaded back into the same optimizer (a rollback) it forgets the steps since;
* ``reset`` / ``deepcopy`` / ``state``: ``reset()`` equals a fresh module, ``copy.deepcopy(opt)``
  continues like the original, state tensors live in ``opt.state`` in their parameter's dtype and device,
  ``global_state`` holds primitives, and declared capabilities (``modifies_update_inplace = False``) hold;
* ``reference``: ``tz.foreach.reference_mode()`` (per-tensor ops) equals the foreach path, and
  ``fuse=False`` equals the fused chain;
* ``noarg``: a no-argument closure, or one zeroing ``.grad`` in place, gives what ``closure(backward)``
  gives (or a clear error where the module needs the backward argument); chains without closure needs
  equal ``backward(); step()``; chains that never ask for backward leave ``.grad`` alone;
* ``needs_closure``: ``step()`` without a closure raises before anything changes;
* ``zero_grad`` / ``nonfinite`` / ``closure_error``: a zero gradient stays finite; a NaN loss raises
  ``NonFiniteLossError`` before anything changes; NaN or an exception at a trial point leaves x0 exactly;
* ``empty_param`` / ``noncontiguous`` / ``no_grad`` / ``join``: a parameter with no elements, a
  transposed-view parameter, a parameter without ``.grad``, a param group added mid-run;
* ``complex``: complex64 parameters give exactly what the real-view problem gives (the foreach
  layer's promise), or a clear error naming complex support where the module documents it;
* ``split`` / ``set_params`` / ``set_params_other`` / ``uniform``: per-group settings reach their
  parameters (two groups, one mixing fp32 and fp64, or ``set_params`` of the module or of another module,
  equal one optimizer per tensor); whole-vector modules refuse differing settings at build;
* ``tensor_lr`` / ``host_sync`` / ``differentiable``: a tensor lr equals the float lr, no tensor value is
  read back to Python on the step path, ``differentiable=True`` takes the same steps and backpropagates;
* ``repr``, and the docstring (an example and a reference/math section, and every argument documented:
  reported as warnings only).

A new module of ``tz.m`` fails ``test_every_public_module_has_an_entry`` until it gets an entry.  Tests of
specific bugs found while writing the contract are at the end of the file.
"""

from __future__ import annotations

import copy
import inspect
import io
import math
import re
from typing import Any

import pytest
import torch
from torch import Tensor

import torchzero as tz
from tests.modules.contract_registry import CHECKS, REGISTRY, Entry, Problem, entries, public_modules

try:
    from tests.parity import NoHostSync
except ImportError:  # pragma: no cover
    NoHostSync = None  # type: ignore[assignment,misc]


def _cases(check: str, applies: Any = lambda e: True) -> list[Any]:
    assert check in CHECKS
    out = []
    for e in REGISTRY:
        if not applies(e):
            continue
        marks = []
        if check in e.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=e.xfail[check]))
        out.append(pytest.param(e, id=e.id, marks=marks))
    return out


def _requires_closure(e: Entry) -> bool:
    return tz.m.Chain(*e.chain()).requires_closure


def _build(e: Entry, problem: Problem) -> tz.Modular:
    return tz.Modular(problem.groups(e.groups), *e.chain(), **e.options)


def _save_load(sd: dict[str, Any]) -> dict[str, Any]:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _run(e: Entry, dtype: torch.dtype, *, style: str = "backward", steps: int | None = None,
         reference: bool = False, real_view: bool = False) -> tuple[Problem, tz.Modular, list[Tensor]]:  # fmt: skip
    problem = Problem(dtype, real_view=real_view)
    opt = _build(e, problem)
    closure = problem.closure(style)
    losses = []
    with tz.foreach.reference_mode(reference):
        for _ in range(e.steps if steps is None else steps):
            losses.append(opt.step(closure))
    return problem, opt, losses


# ------------------------------------------------------------------------------------------------ registry
def test_every_public_module_has_an_entry():
    known = {e.name for e in REGISTRY}
    missing = [n for n in public_modules() if n not in known]
    assert not missing, (
        f"tz.m exports {missing} without an entry in tests/modules/contract_registry.py. Add an Entry for each "
        "(a factory building a sensible chain around the module, two groups with different settings where the "
        "module allows it, and what it promises for complex parameters), so the module runs through the contract."
    )


def test_no_stale_entries():
    stale = sorted({e.name for e in entries().values()} - set(public_modules()))
    assert not stale, f"registry entries {stale} name no public module of tz.m; remove or rename them"


# ------------------------------------------------------------------------------------------------ run
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("e", _cases("run"))
def test_run(e: Entry, dtype: torch.dtype):
    _check_run(e, dtype)


@pytest.mark.parametrize("e", _cases("bf16"))
def test_run_bf16(e: Entry):
    _check_run(e, torch.bfloat16)


def _check_run(e: Entry, dtype: torch.dtype) -> None:
    problem = Problem(dtype)
    opt = _build(e, problem)
    inner = problem.closure()
    calls = [0]

    def closure(backward: bool = True) -> Tensor:
        calls[0] += 1
        return inner(backward)

    with torch.no_grad():
        initial = problem.loss()
    for t in range(e.steps):
        with torch.no_grad():
            before = problem.loss()
        calls[0] = 0
        loss = opt.step(closure)
        assert isinstance(loss, Tensor) and loss.ndim == 0, f"step {t}: step(closure) returned {loss!r}"
        assert opt.last_info["closure_calls"] == calls[0], (
            f"{e.name}, step {t}: last_info['closure_calls'] is {opt.last_info['closure_calls']}, but the closure "
            f"was called {calls[0]} times"
        )
        torch.testing.assert_close(
            loss.to(dtype), before, msg=lambda m, t=t: f"step {t}: step() must return f(x0): {m}"
        )
        for i, p in enumerate(problem.params):
            assert torch.isfinite(p).all(), f"step {t}: parameter {i} is not finite: {p}"
    with torch.no_grad():
        final = problem.loss()
    assert math.isfinite(final) and final <= e.max_growth * initial, (
        f"{e.name}: the loss went from {float(initial):.4g} to {float(final):.4g} in {e.steps} steps"
    )


# ------------------------------------------------------------------------------------------------ state
@pytest.mark.parametrize(("dtype", "split"), [(torch.float64, 2), (torch.float64, 1), (torch.float64, 0), (torch.float32, 3), (torch.complex64, 2)],
                         ids=["f64-at2", "f64-at1", "f64-before_any_step", "f32-at3", "c64-at2"])  # fmt: skip
@pytest.mark.parametrize("e", _cases("roundtrip"))
def test_state_dict_roundtrip_continues_bit_for_bit(e: Entry, dtype: torch.dtype, split: int):
    if dtype.is_complex and e.complex.startswith("raises:"):
        pytest.skip(f"{e.name} does not support complex parameters")
    full, _, _ = _run(e, dtype)

    problem, opt, _ = _run(e, dtype, steps=split)
    saved = _save_load(opt.state_dict())
    fresh = Problem(dtype)
    fresh.load(problem.snapshot())
    opt2 = _build(e, fresh)
    opt2.load_state_dict(saved)
    closure = fresh.closure()
    for _ in range(e.steps - split):
        opt2.step(closure)
    for i, (a, b) in enumerate(zip(full.params, fresh.params, strict=True)):
        assert torch.equal(a, b), (
            f"{e.name}: after a save/load at step {split}, parameter {i} differs from the uninterrupted run "
            f"(max abs diff {(a - b).abs().max():.3g}): some state is not in state_dict or is not restored"
        )


@pytest.mark.parametrize("e", _cases("roundtrip"))
def test_rollback_into_the_same_optimizer_continues_bit_for_bit(e: Entry):
    """Loading an older state_dict into an optimizer that has stepped since (a rollback) forgets those steps."""
    dtype, split = torch.float64, 2
    full, _, _ = _run(e, dtype)

    problem, opt, _ = _run(e, dtype, steps=split)
    saved, values = _save_load(opt.state_dict()), problem.snapshot()
    closure = problem.closure()
    for _ in range(2):
        opt.step(closure)
    opt.load_state_dict(saved)
    problem.load(values)
    for _ in range(e.steps - split):
        opt.step(closure)
    for i, (a, b) in enumerate(zip(full.params, problem.params, strict=True)):
        assert torch.equal(a, b), (
            f"{e.name}: after loading the step-{split} state_dict back into the same optimizer, parameter {i} "
            f"differs from the uninterrupted run (max abs diff {(a - b).abs().max():.3g}): something outside "
            "the state_dict (a cache or attribute) survived the load"
        )


def _resettable(e: Entry) -> bool:
    return any(callable(getattr(m, "reset", None)) for m in tz.m.Chain(*e.chain()).walk())


@pytest.mark.parametrize("e", _cases("reset", _resettable))
def test_reset_behaves_like_a_fresh_module(e: Entry):
    dtype, split = torch.float64, 3
    problem, opt, _ = _run(e, dtype, steps=split)
    for m in opt.modules:
        if callable(getattr(m, "reset", None)):
            m.reset()
    fresh = Problem(dtype)
    fresh.load(problem.snapshot())
    opt2 = _build(e, fresh)
    closure, closure2 = problem.closure(), fresh.closure()
    for _ in range(3):
        opt.step(closure)
        opt2.step(closure2)
    for i, (a, b) in enumerate(zip(problem.params, fresh.params, strict=True)):
        torch.testing.assert_close(
            a, b, msg=lambda m, i=i: f"{e.name}: after reset(), parameter {i} differs from a fresh optimizer's: {m}"
        )


@pytest.mark.parametrize("e", _cases("deepcopy", lambda e: e.deepcopy))
def test_deepcopy_continues_like_the_original(e: Entry):
    """``copy.deepcopy(opt)`` mid-run is an independent optimizer (on copied parameters) that continues the same way."""
    problem, opt, _ = _run(e, torch.float64, steps=2)
    clone = copy.deepcopy(opt)
    twin = Problem(torch.float64)
    twin.params = [p for g in clone.param_groups for p in g["params"]]
    for p, q in zip(problem.params, twin.params, strict=True):
        assert p is not q and torch.equal(p, q)
    for _ in range(3):
        opt.step(problem.closure())
        clone.step(twin.closure())
    for i, (p, q) in enumerate(zip(problem.params, twin.params, strict=True)):
        assert torch.equal(p, q), f"{e.name}: parameter {i} of a deep-copied optimizer differs from the original's"


@pytest.mark.parametrize("e", _cases("state"))
def test_state_lives_in_the_optimizer(e: Entry):
    _, opt, _ = _run(e, torch.float32, steps=3)
    owned = {id(t) for st in opt.state.values() for t in _tensors(st)}
    for p, st in opt.state.items():
        for t in _tensors(st):
            assert t.device == p.device and (not t.is_floating_point() or t.dtype == p.dtype), (
                f"{e.name}: a state tensor of a {p.dtype} parameter is {t.dtype} on {t.device}; state follows its "
                "parameter's dtype and device (torch casts it so on load)"
            )
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    for m in opt.modules:
        assert _primitive(m.global_state), (
            f"{type(m).__name__}.global_state must hold Python primitives only (it is saved as is), "
            f"got {m.global_state!r}"
        )
        for name, value in vars(m).items():
            if name in ("_opt", "optimizer", "scheduler", "global_state", "own_groups", "defaults"):
                continue
            for t in _tensors(value):
                assert id(t) in owned or id(t) in params, (
                    f"{type(m).__name__}.{name} keeps a tensor outside opt.state; a checkpoint loses it"
                )


def _declares_no_inplace(e: Entry) -> bool:
    return any(not getattr(m, "modifies_update_inplace", True) for m in tz.m.Chain(*e.chain()).walk())


@pytest.mark.parametrize("e", _cases("state", _declares_no_inplace))
def test_modules_keep_their_declared_capabilities(e: Entry):
    """A module declaring ``modifies_update_inplace = False`` leaves the incoming update tensors as they were."""
    problem = Problem(torch.float64)
    opt = _build(e, problem)
    # an LR fused into the stage before it never runs a step of its own: the stage is checked as its head
    fused = {id(f) for c in opt.root.walk() if isinstance(c, tz.m.Chain) for _, f in c.stages() if f is not None}
    if all(id(m) in fused for m in opt.modules if not getattr(m, "modifies_update_inplace", True)):
        pytest.skip(f"{e.name}: only modules fused into another stage declare modifies_update_inplace = False")
    checked = []
    for m in opt.modules:
        if getattr(m, "modifies_update_inplace", True) or m.creates_update or id(m) in fused:
            continue
        original = m.step

        def step(ctx: Any, *args: Any, _m: Any = m, _original: Any = original) -> None:
            incoming = list(ctx.update)
            values = [t.clone() for t in incoming]
            _original(ctx, *args)
            for i, (t, v) in enumerate(zip(incoming, values, strict=True)):
                assert torch.equal(t, v), (
                    f"{type(_m).__name__} declares modifies_update_inplace = False but wrote into incoming update "
                    f"tensor {i}"
                )
            checked.append(type(_m).__name__)

        m.step = step  # type: ignore[method-assign]
    closure = problem.closure()
    for _ in range(3):
        opt.step(closure)
    assert checked, f"{e.name}: the checked modules never ran"


def _tensors(x: Any) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    return []


def _primitive(x: Any) -> bool:
    if x is None or isinstance(x, (bool, int, float, str)):
        return True
    if isinstance(x, (list, tuple)):
        return all(_primitive(v) for v in x)
    if isinstance(x, dict):
        return all(isinstance(k, (str, int)) and _primitive(v) for k, v in x.items())
    return False


# ------------------------------------------------------------------------------------------------ paths
@pytest.mark.parametrize("e", _cases("reference"))
def test_reference_mode_equals_foreach(e: Entry):
    a, _, _ = _run(e, torch.float64)
    b, _, _ = _run(e, torch.float64, reference=True)
    for i, (p, q) in enumerate(zip(a.params, b.params, strict=True)):
        torch.testing.assert_close(p, q, msg=lambda m, i=i: f"{e.name}: parameter {i}, foreach vs reference: {m}")


@pytest.mark.parametrize("e", _cases("reference"))
def test_fusion_does_not_change_the_result(e: Entry):
    """``fuse=False`` (every module its own pass) gives what the fused chain gives."""
    a, b = Problem(torch.float64), Problem(torch.float64)
    opt_a = tz.Modular(a.groups(e.groups), *e.chain(), **{**e.options, "fuse": True})
    opt_b = tz.Modular(b.groups(e.groups), *e.chain(), **{**e.options, "fuse": False})
    for _ in range(4):
        opt_a.step(a.closure())
        opt_b.step(b.closure())
    for i, (p, q) in enumerate(zip(a.params, b.params, strict=True)):
        torch.testing.assert_close(q, p, msg=lambda m, i=i: f"{e.name}: parameter {i}, fuse=False vs fuse=True: {m}")


@pytest.mark.parametrize("e", _cases("noarg", lambda e: _requires_closure(e)))
def test_noarg_closure_equals_backward_closure(e: Entry):
    a, _, _ = _run(e, torch.float64)
    if e.noarg.startswith("raises:"):
        problem = Problem(torch.float64)
        opt = _build(e, problem)
        before = problem.snapshot()
        with pytest.raises(TypeError, match=e.noarg.removeprefix("raises:")):
            opt.step(problem.closure("noarg"))
        for p, q in zip(problem.params, before, strict=True):
            assert torch.equal(p, q), f"{e.name}: the parameters changed before the closure error"
        return
    b, _, _ = _run(e, torch.float64, style="noarg")
    for i, (p, q) in enumerate(zip(a.params, b.params, strict=True)):
        torch.testing.assert_close(
            p, q, msg=lambda m, i=i: f"{e.name}: parameter {i}, closure() vs closure(backward): {m}"
        )


@pytest.mark.parametrize("e", _cases("noarg", lambda e: _requires_closure(e)))
def test_closure_zeroing_grads_in_place_equals_set_to_none(e: Entry):
    """``opt.zero_grad(set_to_none=False)`` in the closure reuses the .grad tensors a module may still hold."""
    a, _, _ = _run(e, torch.float64)
    b, _, _ = _run(e, torch.float64, style="inplace")
    for i, (p, q) in enumerate(zip(a.params, b.params, strict=True)):
        torch.testing.assert_close(
            p,
            q,
            msg=lambda m, i=i: f"{e.name}: parameter {i}, closure zeroing .grad in place vs setting it to None: {m}",
        )


@pytest.mark.parametrize("e", _cases("noarg", lambda e: not _requires_closure(e)))
def test_step_with_closure_equals_backward_then_step(e: Entry):
    """For chains that need no closure, ``step(closure)`` is ``closure(); step()`` (no extra evaluations)."""
    a, _, _ = _run(e, torch.float64)
    b = Problem(torch.float64)
    opt = _build(e, b)
    for _ in range(e.steps):
        b.closure()(True)
        opt.step()
    for i, (p, q) in enumerate(zip(a.params, b.params, strict=True)):
        assert torch.equal(p, q), f"{e.name}: parameter {i} differs between step(closure) and backward + step()"


def _loss_only(e: Entry) -> bool:
    first = tz.Modular([torch.zeros(1, requires_grad=True)], *e.chain()).modules[0]
    backward_trials = any(getattr(m, "backward_trials", False) for m in tz.m.Chain(*e.chain()).walk())
    return first.creates_update and not backward_trials


@pytest.mark.parametrize("style", ["noarg", "backward"])
@pytest.mark.parametrize("e", _cases("noarg", _loss_only))
def test_loss_only_chain_leaves_grad_alone(e: Entry, style: str):
    """A chain that never asks for a backward pass (its first module builds the update) never touches ``.grad``."""
    if style == "noarg" and e.noarg != "equal":
        pytest.skip(f"{e.name} needs the backward argument")
    problem = Problem(torch.float64)
    opt = _build(e, problem)
    gen = torch.Generator().manual_seed(9)
    for _ in range(2):
        sentinel = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in problem.params]
        for p, g in zip(problem.params, sentinel, strict=True):
            p.grad = g
        values = [g.clone() for g in sentinel]
        opt.step(problem.closure(style))
        for i, (p, g, v) in enumerate(zip(problem.params, sentinel, values, strict=True)):
            assert p.grad is g and torch.equal(g, v), f"{e.name}: a loss-only step changed .grad of parameter {i}"


@pytest.mark.parametrize("e", _cases("needs_closure", lambda e: _requires_closure(e)))
def test_step_without_closure_raises_before_changing_anything(e: Entry):
    problem, opt, _ = _run(e, torch.float64, steps=1)
    problem.closure()(True)  # fresh .grad, as a user who forgot the closure would have
    params = problem.snapshot()
    sd = copy.deepcopy(opt.state_dict())
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()
    for p, q in zip(problem.params, params, strict=True):
        assert torch.equal(p, q), f"{e.name}: step() without a closure changed the parameters before raising"
    _assert_same_state(sd, opt.state_dict(), e.name)


def _assert_same_state(a: Any, b: Any, name: str, path: str = "state_dict") -> None:
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and torch.equal(a, b), f"{name}: {path} changed"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{name}: keys of {path} changed"
        for k in a:
            _assert_same_state(a[k], b[k], name, f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{name}: {path} changed length"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_state(x, y, name, f"{path}[{i}]")
    else:
        assert a == b, f"{name}: {path} changed from {a!r} to {b!r}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64], ids=["f32", "c64"])
@pytest.mark.parametrize("e", _cases("zero_grad"))
def test_zero_gradient_stays_finite(e: Entry, dtype: torch.dtype):
    """At an exact minimum (gradient exactly 0) every module hands on a finite update (no 0/0, no inf*0)."""
    if dtype.is_complex and e.complex.startswith("raises:"):
        pytest.skip(f"{e.name} does not support complex parameters")
    problem = Problem(dtype)
    with torch.no_grad():
        problem.Y = problem.X @ problem.params[0] + problem.params[1]  # residual exactly 0
    opt = _build(e, problem)
    closure = problem.closure()
    for t in range(3):
        opt.step(closure)
        for i, p in enumerate(problem.params):
            assert torch.isfinite(torch.view_as_real(p) if p.is_complex() else p).all(), (
                f"{e.name}: with a zero gradient, parameter {i} became non-finite at step {t}: {p}"
            )


def _nan_closure(problem: Problem, when: Any) -> Any:
    inner = problem.closure()

    def closure(backward: bool = True) -> Tensor:
        loss = inner(backward)
        return loss * float("nan") if when() else loss

    return closure


@pytest.mark.parametrize("e", _cases("nonfinite"))
def test_nonfinite_loss_raises_before_changing_anything(e: Entry):
    problem, opt, _ = _run(e, torch.float64, steps=1)
    params, sd = problem.snapshot(), copy.deepcopy(opt.state_dict())
    with pytest.raises(tz.NonFiniteLossError):
        opt.step(_nan_closure(problem, lambda: True))
    for p, q in zip(problem.params, params, strict=True):
        assert torch.equal(p, q), f"{e.name}: a NaN loss changed the parameters before the error"
    _assert_same_state(sd, opt.state_dict(), e.name)


@pytest.mark.parametrize("e", _cases("nonfinite", lambda e: _requires_closure(e)))
def test_nonfinite_loss_away_from_x0(e: Entry):
    """NaN at every point but the step's start: a trial is rejected, or the step raises with x0 restored exactly."""
    problem, opt, _ = _run(e, torch.float64, steps=1)
    x0 = problem.snapshot()
    closure = _nan_closure(problem, lambda: any(not torch.equal(p, q) for p, q in zip(problem.params, x0, strict=True)))
    try:
        opt.step(closure)
    except tz.NonFiniteLossError:
        for p, q in zip(problem.params, x0, strict=True):
            assert torch.equal(p, q), f"{e.name}: the parameters were left at a trial point after the error"
        return
    for i, p in enumerate(problem.params):
        assert torch.isfinite(p).all(), f"{e.name}: NaN trial losses led to a non-finite parameter {i}: {p}"


class _ClosureFailed(Exception):
    pass


@pytest.mark.parametrize("e", _cases("closure_error", lambda e: _requires_closure(e)))
def test_closure_error_mid_step_leaves_params_at_x0(e: Entry):
    """An exception from the closure at a trial point propagates with the parameters back at x0, bit for bit.

    The closure raises at the step's second evaluation (the first is at x0).
    """
    problem, opt, _ = _run(e, torch.float64, steps=1)
    x0 = problem.snapshot()
    inner, calls = problem.closure(), [0]

    def closure(backward: bool = True) -> Tensor:
        calls[0] += 1
        if calls[0] > 1:  # the step's second evaluation: a trial point (or ForwardGradient's second tangent)
            raise _ClosureFailed("data loader died")
        return inner(backward)

    try:
        opt.step(closure)
    except _ClosureFailed:
        pass
    else:
        pytest.skip(f"{e.name} evaluated the closure only once in this step")
    for i, (p, q) in enumerate(zip(problem.params, x0, strict=True)):
        assert torch.equal(p, q), f"{e.name}: after the closure raised at a trial point, parameter {i} was left there"


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex64], ids=["f64", "c64"])
@pytest.mark.parametrize("e", _cases("noncontiguous", lambda e: e.noncontiguous))
def test_noncontiguous_parameter(e: Entry, dtype: torch.dtype):
    """A parameter that is a transposed view (tied or transposed weights) gives what its contiguous copy gives."""
    if dtype.is_complex and e.complex.startswith("raises:"):
        pytest.skip(f"{e.name} does not support complex parameters")
    a, b = Problem(dtype), Problem(dtype)
    W = b.params[0].detach()
    view = torch.empty(W.shape[1], W.shape[0], dtype=dtype).T
    view.copy_(W)
    b.params[0] = view.requires_grad_()
    opt_a, opt_b = _build(e, a), _build(e, b)
    for _ in range(4):
        opt_a.step(a.closure())
        opt_b.step(b.closure())
    # a transposed weight changes the summation order of the loss: last-bit differences, amplified by the rule
    tol = {"rtol": 1.3e-6 * e.rounding_gain, "atol": 1e-5 * e.rounding_gain} if dtype is torch.complex64 else {}
    for i, (p, q) in enumerate(zip(a.params, b.params, strict=True)):
        torch.testing.assert_close(
            q, p, **tol, msg=lambda m, i=i: f"{e.name}: parameter {i}, non-contiguous vs contiguous: {m}"
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex64], ids=["f64", "c64"])
@pytest.mark.parametrize("e", _cases("empty_param"))
def test_parameter_with_no_elements(e: Entry, dtype: torch.dtype):
    """A parameter with no elements (an empty FSDP shard, a zero-width layer) changes nothing for the others."""
    if dtype.is_complex and e.complex.startswith("raises:"):
        pytest.skip(f"{e.name} does not support complex parameters")
    a, b = Problem(dtype), Problem(dtype)
    empty = torch.zeros(0, 3, dtype=dtype, requires_grad=True)
    groups = b.groups(e.groups)
    groups[-1]["params"].append(empty)
    opt_a, opt_b = _build(e, a), tz.Modular(groups, *e.chain(), **e.options)
    inner = b.closure()

    def closure(backward: bool = True) -> Tensor:
        empty.grad = None
        loss = inner(backward)
        if backward:
            empty.grad = torch.zeros_like(empty)
        return loss

    for _ in range(3):
        opt_a.step(a.closure())
        opt_b.step(closure)
    for i, (p, q) in enumerate(zip(a.params, b.params, strict=True)):
        torch.testing.assert_close(q, p, msg=lambda m, i=i: f"{e.name}: parameter {i} next to an empty parameter: {m}")


# ------------------------------------------------------------------------------------------------ complex
@pytest.mark.parametrize("e", _cases("complex"))
def test_complex_params(e: Entry):
    if e.complex.startswith("raises:"):
        problem = Problem(torch.complex64)
        opt = _build(e, problem)
        before = problem.snapshot()
        with pytest.raises((TypeError, ValueError, RuntimeError), match=e.complex.removeprefix("raises:")):
            opt.step(problem.closure())
        for p, q in zip(problem.params, before, strict=True):
            assert torch.equal(p, q), f"{e.name}: the parameters changed before the complex-support error"
        return
    c, _, _ = _run(e, torch.complex64)
    for i, p in enumerate(c.params):
        assert p.dtype == torch.complex64 and torch.isfinite(torch.view_as_real(p)).all(), (
            f"{e.name}: complex parameter {i} is not finite: {p}"
        )
    with torch.no_grad():
        start = Problem(torch.complex64).loss()
        final = c.loss()
    assert final <= e.max_growth * start, f"{e.name}: complex loss went from {float(start):.4g} to {float(final):.4g}"
    if e.complex == "equiv":
        r, _, _ = _run(e, torch.complex64, real_view=True)
        for i, (p, q) in enumerate(zip(c.params, r.params, strict=True)):
            torch.testing.assert_close(
                torch.view_as_real(p), q,
                msg=lambda m, i=i: f"{e.name}: complex parameter {i} differs from the same problem on its real view: {m}",
            )  # fmt: skip


# ------------------------------------------------------------------------------------------------ groups
SPLIT_SHAPES = (((3, 2), torch.float64, 0), ((2,), torch.float32, 0), ((4, 3), torch.float32, 1))
"""(shape, dtype, group): group 0 mixes fp64 and fp32, so its settings are resolved in two segments"""


def _split_params() -> list[Tensor]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(d).requires_grad_() for s, d, _ in SPLIT_SHAPES]


def _split_grads(step: int, *lists: list[Tensor]) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    noise = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in lists[0]]
    for params in lists:
        for p, n in zip(params, noise, strict=True):
            p.grad = (n + 0.5 * p.detach().double()).to(p.dtype)


@pytest.mark.parametrize("e", _cases("split", lambda e: e.separable))
def test_group_settings_reach_their_group(e: Entry):
    joint, alone = _split_params(), _split_params()
    groups = [{"params": [p for p, (_, _, g) in zip(joint, SPLIT_SHAPES, strict=True) if g == gi], **e.groups[gi]}
              for gi in range(2)]  # fmt: skip
    _matches_one_optimizer_per_param(e, tz.Modular(groups, *e.chain(), **e.options), e.groups, joint, alone, "groups")


def _matches_one_optimizer_per_param(e: Entry, opt, settings, joint, alone, source: str) -> None:
    """Four steps of ``opt`` over ``joint`` equal one optimizer per parameter of ``alone`` with its group's settings."""
    singles = [
        tz.Modular([{"params": [p], **settings[g]}], *e.chain(), **e.options)
        for p, (_, _, g) in zip(alone, SPLIT_SHAPES, strict=True)
    ]
    for t in range(4):
        _split_grads(t, joint, alone)
        opt.step()
        for o in singles:
            o.step()
    for i, (p, q) in enumerate(zip(joint, alone, strict=True)):
        torch.testing.assert_close(
            p, q,
            msg=lambda m, i=i: f"{e.name}: parameter {i} ({SPLIT_SHAPES[i][1]}, group {SPLIT_SHAPES[i][2]}) with "
            f"settings from {source} differs from an optimizer of its own with the same settings: {m}",
        )  # fmt: skip


def _set_params_cases() -> list[Any]:
    applies = lambda e: e.separable and not issubclass(getattr(tz.m, e.name), tz.m.Chain)  # noqa: E731
    own = [pytest.param(*p.values, "own", id=f"{p.id}-own", marks=p.marks) for p in _cases("set_params", applies)]
    other = [
        pytest.param(*p.values, "other", id=f"{p.id}-other", marks=p.marks) for p in _cases("set_params_other", applies)
    ]
    return own + other


@pytest.mark.parametrize(("e", "carrier"), _set_params_cases())
def test_set_params_settings_reach_their_group(e: Entry, carrier: str):
    """The same as above with the settings given by ``set_params`` (one torch group): of the module itself, or of
    another module (a ``Clone`` put first) that does not declare them, so they apply as group settings."""
    joint, alone = _split_params(), _split_params()
    chain = e.chain()
    target = next(m for m in chain if type(m).__name__ == e.name)
    own = [{k: v for k, v in g.items() if k in target.defaults} for g in e.groups]
    groups = [
        {"params": [p for p, (_, _, g) in zip(joint, SPLIT_SHAPES, strict=True) if g == gi], **own[gi]}
        for gi in range(2)
    ]
    if carrier == "own":
        target.set_params(groups)
    else:
        chain = [tz.m.Clone().set_params(groups), *chain]
    if e.set_params.startswith("raises:"):
        with pytest.raises(ValueError, match=e.set_params.removeprefix("raises:")):
            tz.Modular(joint, *chain, **e.options)
        return
    _matches_one_optimizer_per_param(e, tz.Modular(joint, *chain, **e.options), own, joint, alone, "set_params")


@pytest.mark.parametrize("e", _cases("no_grad", lambda e: not _requires_closure(e)))
def test_parameter_without_grad_keeps_value_and_state(e: Entry):
    problem = Problem(torch.float64)
    opt = _build(e, problem)
    W, b = problem.params
    for t in range(4):
        problem.closure()(True)
        if t == 2:
            b.grad = None
            value, state = b.detach().clone(), copy.deepcopy(opt.state[b])
            if e.no_grad.startswith("raises:"):
                params, sd = problem.snapshot(), copy.deepcopy(opt.state_dict())
                with pytest.raises((ValueError, RuntimeError), match=e.no_grad.removeprefix("raises:")):
                    opt.step()
                for p, q in zip(problem.params, params, strict=True):
                    assert torch.equal(p, q), f"{e.name}: the parameters changed before the missing-grad error"
                _assert_same_state(sd, opt.state_dict(), e.name)
                return
        opt.step()
        if t == 2:
            assert torch.equal(b, value), f"{e.name}: a parameter without .grad was changed by the step"
            _assert_same_state(state, opt.state[b], e.name, "opt.state[param without grad]")
    for i, p in enumerate(problem.params):
        assert torch.isfinite(p).all(), f"{e.name}: parameter {i} is not finite after a step with a missing grad"


@pytest.mark.parametrize("e", _cases("differentiable", lambda e: not _requires_closure(e)))
def test_differentiable_mode(e: Entry):
    """``differentiable=True``: the same steps as the normal mode, and the result backpropagates to the start."""
    plain = Problem(torch.float64)
    problem = Problem(torch.float64)
    leaves = problem.params
    problem.params = [p * 1.0 for p in leaves]  # non-leaf parameters, as torch's differentiable mode requires
    opt_plain = _build(e, plain)
    if e.differentiable.startswith("raises:"):
        with pytest.raises((ValueError, TypeError, RuntimeError), match=e.differentiable.removeprefix("raises:")):
            tz.Modular(problem.groups(e.groups), *e.chain(), differentiable=True, **e.options)
        return
    opt_d = tz.Modular(problem.groups(e.groups), *e.chain(), differentiable=True, **e.options)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in plain.params]
        for p, q, g in zip(plain.params, problem.params, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt_plain.step()
        opt_d.step()
    for i, (p, q) in enumerate(zip(plain.params, problem.params, strict=True)):
        torch.testing.assert_close(
            q.detach(), p, msg=lambda m, i=i: f"{e.name}: parameter {i}, differentiable mode: {m}"
        )
    sum(p.sum() for p in problem.params).backward()
    for i, leaf in enumerate(leaves):
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all(), (
            f"{e.name}: no finite gradient reached initial parameter {i} through the steps: {leaf.grad}"
        )


@pytest.mark.parametrize("e", _cases("join"))
def test_parameter_group_added_mid_run(e: Entry):
    """``add_param_group`` after a few steps: the new parameter is optimized too, nothing blows up."""
    problem = Problem(torch.float64)
    W, b = problem.params
    b.requires_grad_(False)
    opt = tz.Modular([{"params": [W], **e.groups[0]}], *e.chain(), **e.options)
    closure = problem.closure()
    for _ in range(2):
        opt.step(closure)
    b.requires_grad_(True)
    with torch.no_grad():
        before, b0 = problem.loss(), b.detach().clone()
    opt.add_param_group({"params": [b], **(e.groups[1] if len(e.groups) > 1 else {})})
    if e.join.startswith("raises:"):
        params = problem.snapshot()
        with pytest.raises((ValueError, RuntimeError, AssertionError), match=e.join.removeprefix("raises:")):
            opt.step(closure)
        for p, q in zip(problem.params, params, strict=True):
            assert torch.equal(p, q), f"{e.name}: the parameters changed before the error about the new group"
        return
    for _ in range(3):
        opt.step(closure)
    with torch.no_grad():
        after = problem.loss()
    assert all(torch.isfinite(p).all() for p in problem.params), f"{e.name}: non-finite parameters after a new group"
    assert after <= e.max_growth * before, f"{e.name}: loss {float(before):.4g} -> {float(after):.4g} after a new group"
    assert not torch.equal(b, b0), f"{e.name}: the parameter of the new group was never updated"


def _uniform_modules(e: Entry) -> list[Any]:
    return [m for m in tz.m.Chain(*e.chain()).walk() if getattr(m, "uniform_settings", False) and _other_value(m)]


def _other_value(m: Any) -> tuple[str, Any] | None:
    """A key of ``m`` and a valid value different from its default (numbers only)."""
    for key, value in m.defaults.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        return key, (value + 1 if isinstance(value, int) else value * 0.5)
    return None


@pytest.mark.parametrize("e", _cases("uniform", lambda e: bool(_uniform_modules(e))))
def test_whole_vector_modules_refuse_differing_group_settings_at_build(e: Entry):
    """A module that declares ``uniform_settings`` (one vector for all parameters) refuses groups that differ."""
    for m in _uniform_modules(e):
        key, value = _other_value(m)  # type: ignore[misc]
        problem = Problem(torch.float64)
        groups = problem.groups(({}, {key: value}))
        with pytest.raises(ValueError, match=type(m).__name__):
            tz.Modular(groups, *e.chain(), **e.options)


@pytest.mark.parametrize("name", public_modules())
def test_modules_reading_whole_vector_settings_declare_it(name: str):
    cls = getattr(tz.m, name)
    source = "".join(inspect.getsource(c) for c in cls.__mro__ if c.__module__.startswith("torchzero.modules"))
    if "ctx.settings(self)" in source:
        assert cls.uniform_settings, (
            f"{name} reads ctx.settings(self) (one set of settings for all parameters) but does not declare "
            "uniform_settings = True, so differing groups fail only when it runs, after earlier modules changed state"
        )


# ------------------------------------------------------------------------------------------------ host sync
@pytest.mark.skipif(NoHostSync is None, reason="tests/parity.py has no NoHostSync")
@pytest.mark.parametrize("e", _cases("host_sync", lambda e: not _requires_closure(e)))
def test_no_host_sync_on_the_step_path(e: Entry):
    problem = Problem(torch.float32)
    opt = _build(e, problem)
    for _ in range(3):
        problem.closure()(True)
        with NoHostSync():
            opt.step()


def _has_lr(e: Entry) -> bool:
    return not _requires_closure(e) and any(isinstance(m, tz.m.LR) for m in tz.m.Chain(*e.chain()).walk())


@pytest.mark.parametrize("e", _cases("tensor_lr", _has_lr))
def test_tensor_lr_equals_float_lr_without_host_sync(e: Entry):
    """A 0-dim tensor lr in the groups (what compiled/captured loops use) gives the float lr's result."""
    a, b = Problem(torch.float64), Problem(torch.float64)
    opt_a, opt_b = _build(e, a), _build(e, b)
    for g in opt_b.param_groups:
        g["lr"] = torch.tensor(float(g["lr"]), dtype=torch.float64)
    for _ in range(3):
        a.closure()(True)
        b.closure()(True)
        opt_a.step()
        if e.tensor_lr == "no_sync" and NoHostSync is not None:
            with NoHostSync():
                opt_b.step()
        else:
            opt_b.step()
    for i, (p, q) in enumerate(zip(a.params, b.params, strict=True)):
        torch.testing.assert_close(q, p, msg=lambda m, i=i: f"{e.name}: parameter {i}, tensor lr vs float lr: {m}")


@pytest.mark.parametrize("make", [lambda: tz.m.Adam(), lambda: tz.m.LR(0.1)], ids=["Adam", "LR"])
def test_a_module_belongs_to_one_optimizer(make: Any):
    module = make()
    tz.Modular(Problem(torch.float64).params, module)
    with pytest.raises(ValueError, match="already"):
        tz.Modular(Problem(torch.float32).params, module)


UNIFORM_LATE = (
    "core: settings of a module that treats all parameters as one vector (LineSearch, LBFGS, SAM, FDM, ... via "
    "ctx.settings) are only checked when that module runs, so tz.Modular(groups with c1 differing, LBFGS(), "
    "Backtracking()) builds fine and the first step raises after LBFGS already advanced its step counter and "
    "created prev_params/prev_grad. Fix: modules declare it (e.g. a class attribute `uniform_settings = True` "
    "on the modules that call ctx.settings), and Modular checks those modules' resolved settings across runs "
    "at build, in add_param_group, and at the start of step() before the first module runs (a scheduler may "
    "change a group's value), raising the same error before anything changes."
)


def test_differing_settings_of_a_whole_vector_module_fail_before_anything_changes():
    problem = Problem(torch.float64)
    with pytest.raises(ValueError, match="one vector"):  # refused at build
        tz.Modular(problem.groups([{"c1": 1e-4}, {"c1": 1e-3}]), tz.m.LBFGS(3), tz.m.Backtracking())
    # or when a group's value changes later (a scheduler, a user): the step refuses before anything changes
    opt = tz.Modular(problem.groups([{"c1": 1e-4}, {"c1": 1e-4}]), tz.m.LBFGS(3), tz.m.Backtracking())
    opt.step(problem.closure())
    opt.param_groups[1]["c1"] = 1e-3
    params, sd = problem.snapshot(), copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="same in every param group"):
        opt.step(problem.closure())
    for p, q in zip(problem.params, params, strict=True):
        assert torch.equal(p, q)
    _assert_same_state(sd, opt.state_dict(), "LBFGS + Backtracking")


@pytest.mark.parametrize(
    ("chain", "reference"),
    [
        (lambda: [tz.m.Adam(), tz.m.LR(0.01)], lambda p: torch.optim.Adam(p, lr=0.01)),
        (lambda: [tz.m.Adamax(), tz.m.LR(0.01)], lambda p: torch.optim.Adamax(p, lr=0.01)),
        (lambda: [tz.m.RAdam(), tz.m.LR(0.01)], lambda p: torch.optim.RAdam(p, lr=0.01)),
        (lambda: [tz.m.NAdam(), tz.m.LR(0.01)], lambda p: torch.optim.NAdam(p, lr=0.01)),
        (lambda: [tz.m.Adagrad(lr_decay=0.1), tz.m.LR(0.01)], lambda p: torch.optim.Adagrad(p, lr=0.01, lr_decay=0.1)),
    ],
    ids=["Adam", "Adamax", "RAdam", "NAdam", "Adagrad"],
)
def test_step_counts_are_per_parameter_like_torch(chain: Any, reference: Any):
    """Modules that ``counts_steps``: a parameter that first gets a gradient at step 4 starts its count at 1."""
    gen = torch.Generator().manual_seed(0)
    a0, b0 = torch.randn(4, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen, dtype=torch.float64)
    mine, theirs = (
        [a0.clone().requires_grad_(), b0.clone().requires_grad_()],
        [a0.clone().requires_grad_(), b0.clone().requires_grad_()],
    )
    opt, ref = tz.Modular(mine, *chain()), reference(theirs)
    for t in range(6):
        g = torch.Generator().manual_seed(10 + t)
        grads = [torch.randn(4, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)]
        for i, (p, q) in enumerate(zip(mine, theirs, strict=True)):
            p.grad, q.grad = (None, None) if (i == 1 and t < 3) else (grads[i].clone(), grads[i].clone())
        opt.step()
        ref.step()
        for p, q in zip(mine, theirs, strict=True):
            torch.testing.assert_close(p, q, msg=lambda m, t=t: f"step {t}: {m}")


def test_debiased_ema_counts_steps_per_parameter():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen, dtype=torch.float64)
    params = [a.clone().requires_grad_(), b.clone().requires_grad_()]
    expected, avg, count = (
        [a.clone(), b.clone()],
        [torch.zeros(4, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)],
        [0, 0],
    )
    opt = tz.Modular(params, tz.m.EMA(0.9, debiased=True), tz.m.LR(0.1))
    for t in range(6):
        g = torch.Generator().manual_seed(10 + t)
        grads = [torch.randn(4, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)]
        for i, p in enumerate(params):
            p.grad = None if (i == 1 and t < 3) else grads[i].clone()
            if p.grad is not None:  # written out: m = 0.9 m + 0.1 g, x -= 0.1 m / (1 - 0.9^t_p)
                count[i] += 1
                avg[i] = 0.9 * avg[i] + 0.1 * grads[i]
                expected[i] = expected[i] - 0.1 * avg[i] / (1 - 0.9 ** count[i])
        opt.step()
        for p, q in zip(params, expected, strict=True):
            torch.testing.assert_close(p.detach(), q, msg=lambda m, t=t: f"step {t}: {m}")


def test_reuse_evaluation_sees_writes_through_data():
    def run(reuse: bool) -> list[Tensor]:
        problem = Problem(torch.float64)
        opt = tz.Modular(problem.groups(({}, {})), tz.m.LBFGS(3), tz.m.StrongWolfe(), reuse_evaluation=reuse)
        closure = problem.closure()
        for _ in range(4):
            opt.step(closure)
            for p in problem.params:
                p.data.clamp_(-0.3, 0.3)  # weight clipping between steps
        return problem.params

    for p, q in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(p, q)


def test_wrap_belongs_to_one_optimizer():
    module = tz.m.Wrap(torch.optim.SGD, lr=0.1)
    tz.Modular(Problem(torch.float64).params, module)
    with pytest.raises(ValueError, match="already"):
        tz.Modular(Problem(torch.float32).params, module)


def _lbfgs_w(offset: float, join: bool) -> Tensor:
    """W after L-BFGS steps on 0.5 W'AW + |b - c|^2 with b and c shifted by ``offset`` (W's path must not move)."""
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    A = A @ A.T + torch.eye(4, dtype=torch.float64)
    W = torch.randn(4, generator=gen, dtype=torch.float64).requires_grad_()
    b = (torch.randn(2, generator=gen, dtype=torch.float64) + offset).requires_grad_(not join)
    c = torch.tensor([1.0, -2.0], dtype=torch.float64) + offset

    def closure(backward: bool = True) -> Tensor:
        loss = 0.5 * W @ A @ W + ((b - c) ** 2).sum()
        if backward:
            W.grad = b.grad = None
            loss.backward()
        return loss

    opt = tz.Modular([{"params": [W]}] if join else [{"params": [W]}, {"params": [b]}], tz.m.LBFGS(5), tz.m.LR(0.5))
    for t in range(6):
        if join and t == 2:
            b.requires_grad_(True)
            opt.add_param_group({"params": [b]})
        opt.step(closure)
    return W.detach()


@pytest.mark.parametrize("join", [False, True], ids=["from_start", "joins_later"])
def test_lbfgs_is_translation_invariant_when_a_parameter_joins_later(join: bool):
    torch.testing.assert_close(_lbfgs_w(0.0, join), _lbfgs_w(10.0, join))


# ------------------------------------------------------------------------------------------------ misc
@pytest.mark.parametrize("e", _cases("repr"))
def test_repr(e: Entry):
    _, opt, _ = _run(e, torch.float64, steps=1)
    text = repr(opt)
    for m in opt.modules:
        assert type(m).__name__ in text, f"repr(opt) does not name {type(m).__name__}:\n{text}"


@pytest.mark.parametrize("name", sorted({e.name for e in REGISTRY}))
def test_docstring(name: str):
    """Every public module documents itself: an Example, and every constructor argument under Args."""
    doc = getattr(tz.m, name).__doc__ or ""
    assert doc.strip(), f"tz.m.{name} has no docstring"
    assert "Example" in doc or ">>>" in doc, f"tz.m.{name}: the docstring has no Example"
    cls = getattr(tz.m, name)
    if cls.__init__ is tz.m.Module.__init__:
        return  # no arguments of its own
    params = inspect.signature(cls.__init__).parameters
    args = [n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    section = re.search(r"Args:\n(.*?)(?:\n\s*\n|\Z)", doc, re.S)
    documented = set()
    for line in (section.group(1) if section else "").splitlines():
        match = re.match(r"\s*([\w]+(?:,\s*\w+)*):\s", line)
        if match:
            documented.update(a.strip() for a in match.group(1).split(","))
    undocumented = [a for a in args if a not in documented]
    assert not undocumented, f"tz.m.{name}: arguments {undocumented} are not in the docstring's Args"
