"""``maximize=True`` in a param group: torch.optim's ``maximize`` for first-order rules, ``-loss`` for closures."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import torchzero as tz
from tests.modules.optimizers.registry import CASES
from tests.parity import Case, build_reference, build_tz, clone_params, make_params, save_load, set_grads


def _takes_maximize(case: Case) -> bool:
    """Whether the case's reference is a torch.optim optimizer with a ``maximize`` setting."""
    probe = torch.zeros(2, 2, requires_grad=True)
    return "maximize" in case.reference([{"params": [probe]}]).defaults


TORCH_CASES = [c for c in CASES if _takes_maximize(c)]


def _with_maximize(case: Case, flags: tuple[bool, bool]) -> Case:
    ref_groups = case.groups if case.ref_groups is None else case.ref_groups
    return dataclasses.replace(
        case,
        groups=tuple({**g, "maximize": f} for g, f in zip(case.groups, flags, strict=True)),
        ref_groups=tuple({**g, "maximize": f} for g, f in zip(ref_groups, flags, strict=True)),
    )


def _run_against_torch(case: Case, dtype: torch.dtype, steps: int = 12) -> None:
    """Step both side by side (a save/load round trip of the torchzero side halfway); compare every step and
    check that ``.grad`` is what the test put there."""
    groups = make_params(dtype, case.shapes)
    ref_groups = clone_params(groups)
    flat, ref_flat = [p for ps in groups for p in ps], [p for ps in ref_groups for p in ps]
    opt, ref = build_tz(case, groups), build_reference(case, ref_groups)
    for t in range(steps):
        set_grads(t, case.coupling, flat, ref_flat)
        grads = [p.grad.clone() for p in flat]
        opt.step()
        ref.step()
        for i, (p, q) in enumerate(zip(flat, ref_flat, strict=True)):
            torch.testing.assert_close(p, q, msg=lambda m, t=t, i=i: f"{case.name}: step {t + 1}, param {i}: {m}")
        for p, g in zip(flat, grads, strict=True):
            assert torch.equal(p.grad, g), f"{case.name}: the step wrote into .grad"
        if t == steps // 2:
            fresh = build_tz(case, groups)
            fresh.load_state_dict(save_load(opt.state_dict()))
            assert [g["maximize"] for g in fresh.param_groups] == [g["maximize"] for g in opt.param_groups]
            opt = fresh


def test_the_table_covers_torchs_first_order_rules():
    names = {c.name for c in TORCH_CASES}
    for rule in ("sgd", "adam", "adamw", "adamax", "nadam", "radam", "rmsprop", "adagrad", "adadelta", "rprop"):
        assert any(n.startswith(rule) for n in names), rule
    assert any("centered" in n for n in names) and any("nesterov" in n for n in names)


@pytest.mark.parametrize("flags", [(True, True), (False, True)], ids=["both", "second_only"])
@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: c.name)
def test_maximize_equals_torch_maximize(case, flags):
    _run_against_torch(_with_maximize(case, flags), torch.float64)


@pytest.mark.parametrize("name", ["adam", "adam_foreach_no_fused_kernel", "sgd_nesterov", "rmsprop"])
def test_maximize_equals_torch_maximize_float32_and_complex(name):
    case = _with_maximize(next(c for c in TORCH_CASES if c.name == name), (True, False))
    _run_against_torch(case, torch.float32)
    _run_against_torch(case, torch.complex64)


def test_maximize_without_it_would_differ():
    """The parity above is not vacuous: maximize=True changes the trajectory."""
    case = next(c for c in TORCH_CASES if c.name == "adam")
    with pytest.raises(AssertionError):
        _run_against_torch(dataclasses.replace(_with_maximize(case, (True, True)), groups=case.groups), torch.float64)


def test_groups_in_several_buckets():
    """Maximize and minimize groups interleaved over (device, dtype) buckets, each bucket negated in one pass."""
    dtypes = (torch.float32, torch.float64)
    shapes = ((3, 2), (4,))
    make = lambda seed: [  # noqa: E731
        p
        for dt in dtypes
        for s in shapes
        for p in [torch.randn(s, generator=torch.Generator().manual_seed(seed), dtype=dt)]
    ]
    params = [p.requires_grad_() for i in range(3) for p in make(i)]
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    flags = (True, False, True)
    groups = [{"params": params[4 * i : 4 * i + 4], "maximize": f} for i, f in enumerate(flags)]
    ref_groups = [{"params": ref_params[4 * i : 4 * i + 4], "maximize": f} for i, f in enumerate(flags)]
    opt = tz.Modular(groups, tz.m.Adam(), tz.m.LR(1e-2))
    ref = torch.optim.Adam(ref_groups, lr=1e-2)
    for t in range(6):
        set_grads(t, 0.5, params, ref_params)
        opt.step()
        ref.step()
        for p, q in zip(params, ref_params, strict=True):
            torch.testing.assert_close(p, q)


# ---------------------------------------------------------------- the setting itself
def test_default_is_false_and_shown_in_every_group_like_torch():
    ps = make_params(torch.float32)
    opt = tz.Modular([{"params": ps[0]}, {"params": ps[1], "maximize": True}], tz.m.Adam(), tz.m.LR(1e-3))
    assert "maximize" not in opt.defaults  # defaults hold the modules' exposed keys; maximize lives in the groups
    assert [g["maximize"] for g in opt.param_groups] == [False, True]
    opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)]})
    assert opt.param_groups[-1]["maximize"] is False
    lines = repr(opt).splitlines()
    assert "  group 1: 2 params, maximize=True" in lines and "  group 0: 2 params" in lines
    assert "maximize" in torch.optim.Adam(ps[0]).defaults  # the key torch's optimizers carry too


@pytest.mark.parametrize("bad", ["yes", 1, None, torch.tensor(True)])
def test_a_non_bool_is_refused_at_construction(bad):
    ps = make_params(torch.float32)
    with pytest.raises(ValueError, match=r"maximize=.* in param group 1 is invalid: expected maximize True or False"):
        tz.Modular([{"params": ps[0]}, {"params": ps[1], "maximize": bad}], tz.m.Adam(), tz.m.LR(1e-3))


def test_a_non_bool_is_refused_in_add_param_group_and_load_state_dict():
    ps = make_params(torch.float32)
    opt = tz.Modular(ps[0], tz.m.Adam(), tz.m.LR(1e-3))
    with pytest.raises(ValueError, match="maximize='yes'"):
        opt.add_param_group({"params": ps[1], "maximize": "yes"})
    assert len(opt.param_groups) == 1
    sd = opt.state_dict()
    sd["param_groups"][0]["maximize"] = "no"
    with pytest.raises(ValueError, match="maximize='no' in the state dict's param group 0"):
        opt.load_state_dict(sd)
    assert opt.param_groups[0]["maximize"] is False


def test_a_non_bool_written_between_steps_is_refused_before_anything_changes():
    ps = make_params(torch.float32)
    flat = [p for g in ps for p in g]
    opt = tz.Modular(flat, tz.m.Adam(), tz.m.LR(1e-2))
    set_grads(0, 0.0, flat)
    opt.param_groups[0]["maximize"] = "yes"
    before = [p.detach().clone() for p in flat]
    with pytest.raises(ValueError, match="maximize='yes' in param group 0"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(flat, before, strict=True)) and not opt.state


def test_a_hand_or_scheduler_write_between_steps_takes_effect():
    case = next(c for c in TORCH_CASES if c.name == "sgd_nesterov")
    groups = make_params(torch.float64, case.shapes)
    ref_groups = clone_params(groups)
    flat, ref_flat = [p for ps in groups for p in ps], [p for ps in ref_groups for p in ps]
    opt, ref = build_tz(case, groups), build_reference(case, ref_groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)  # a scheduler on the optimizer, as usual
    for t in range(10):
        if t == 3:
            opt.param_groups[1]["maximize"] = ref.param_groups[1]["maximize"] = True
        if t == 7:
            opt.param_groups[1]["maximize"] = ref.param_groups[1]["maximize"] = False
            opt.param_groups[0]["maximize"] = ref.param_groups[0]["maximize"] = True
        set_grads(t, case.coupling, flat, ref_flat)
        opt.step()
        ref.step()
        sched.step()
        for p, q in zip(flat, ref_flat, strict=True):
            torch.testing.assert_close(p, q)


# ---------------------------------------------------------------- the chain sees -f: raw gradient readers
FIRST_ORDER_CHAINS = {
    "adam_cautious": lambda: [tz.m.Adam(), tz.m.Cautious(), tz.m.LR(1e-2)],
    "grad_lerp": lambda: [tz.m.Adam(), tz.m.Lerp(tz.m.Grad(), 0.3), tz.m.LR(1e-2)],
    "clip_sgd": lambda: [tz.m.ClipNorm(0.5), tz.m.SGD(momentum=0.9), tz.m.LR(1e-2)],
    "wrap_adam": lambda: [tz.m.Wrap(torch.optim.Adam, lr=1.0), tz.m.LR(1e-2)],
    "lion": lambda: [tz.m.Lion(), tz.m.LR(1e-2)],
    # an in-place module before a raw-gradient reader: the negated gradient is copied before it is written
    "inplace_then_grad": lambda: [tz.m.Mul(0.5), tz.m.ClipValue(0.3), tz.m.Add(tz.m.Grad()), tz.m.LR(1e-2)],
}


@pytest.mark.parametrize("flags", [(True, True), (False, True)], ids=["both", "second_only"])
@pytest.mark.parametrize("chain", FIRST_ORDER_CHAINS.values(), ids=FIRST_ORDER_CHAINS.keys())
def test_maximize_equals_minimizing_with_the_gradient_negated_by_hand(chain, flags):
    """Modules that read the raw gradient (``ctx.get_grad()``) see the negated one too."""
    groups = make_params(torch.float64)
    ref_groups = clone_params(groups)
    opt = tz.Modular([{"params": ps, "maximize": f} for ps, f in zip(groups, flags, strict=True)], *chain())
    ref = tz.Modular([{"params": ps} for ps in ref_groups], *chain())
    flat, ref_flat = [p for ps in groups for p in ps], [p for ps in ref_groups for p in ps]
    for t in range(8):
        set_grads(t, 0.5, flat, ref_flat)
        for ps, f in zip(ref_groups, flags, strict=True):
            for p in ps:
                p.grad = -p.grad if f else p.grad
        grads = [p.grad.clone() for p in flat]
        opt.step()
        ref.step()
        for p, q in zip(flat, ref_flat, strict=True):
            torch.testing.assert_close(p, q)
        assert all(torch.equal(p.grad, g) for p, g in zip(flat, grads, strict=True))


def test_wrap_keeps_its_own_maximize_setting():
    """``Wrap(..., maximize=True)`` is the wrapped optimizer's own setting; the groups' maximize=False never
    reaches it (and maximize in the groups is applied by the core, not handed to the wrapped optimizer)."""
    ps = make_params(torch.float64)[0]
    qs = clone_params([ps])[0]
    opt = tz.Modular(ps, tz.m.Wrap(torch.optim.SGD, lr=0.1, momentum=0.9, maximize=True))
    ref = torch.optim.SGD(qs, lr=0.1, momentum=0.9, maximize=True)
    for t in range(5):
        set_grads(t, 0.5, ps, qs)
        opt.step()
        ref.step()
    for p, q in zip(ps, qs, strict=True):
        torch.testing.assert_close(p, q)


# ---------------------------------------------------------------- closures
def concave(x, y):
    """A concave objective, maximal at x = 1, y = -2 (value 0)."""
    return -((x - 1) ** 2).sum() - 3 * ((y + 2) ** 2).sum() - 0.1 * ((x - 1) ** 4).sum()


def _value(x, y):
    with torch.no_grad():
        return float(concave(x, y))


def _pair(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, generator=g, dtype=dtype).requires_grad_(), torch.randn(
        3, generator=g, dtype=dtype
    ).requires_grad_()


def _closure(opt, params, sign, calls=None):
    def closure(backward=True):
        if calls is not None:
            calls.append(backward)
        value = sign * concave(*params)
        if backward:
            opt.zero_grad()
            value.backward()
        return value

    return closure


@pytest.mark.parametrize("reuse", [False, True])
def test_lbfgs_strong_wolfe_maximizes_a_concave_function(reuse):
    x, y = _pair()
    opt = tz.Modular([{"params": [x, y], "maximize": True}], tz.m.LBFGS(), tz.m.StrongWolfe(), reuse_evaluation=reuse)
    closure = _closure(opt, (x, y), 1.0)
    losses = [opt.step(closure) for _ in range(30)]
    torch.testing.assert_close(x.detach(), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(y.detach(), torch.full((3,), -2.0, dtype=torch.float64), rtol=0, atol=1e-5)
    # step returns the closure's loss (negative, rising to the maximum 0), not the negated one the chain minimizes
    assert float(losses[0]) < -1.0 and all(float(v) <= 0 for v in losses) and float(losses[-1]) > -1e-9
    assert float(losses[0]) == pytest.approx(_value(*_pair()))


def test_torch_lbfgs_has_no_maximize_so_compare_with_the_negated_closure_by_hand():
    assert "maximize" not in torch.optim.LBFGS([torch.zeros(1, requires_grad=True)]).defaults


CLOSURE_CHAINS = {
    "lbfgs_strong_wolfe": lambda: [tz.m.LBFGS(), tz.m.StrongWolfe()],
    "bfgs_backtracking": lambda: [tz.m.BFGS(), tz.m.Backtracking()],
    "adam_backtracking": lambda: [tz.m.Adam(), tz.m.Cautious(), tz.m.Backtracking()],
    "exact_newton": lambda: [tz.m.ExactNewton(), tz.m.LR(0.5)],
    "newton_cg": lambda: [tz.m.NewtonCG(max_iters=3), tz.m.StrongWolfe()],
    "fdm": lambda: [tz.m.FDM(), tz.m.LR(0.05)],
    "forward_gradient": lambda: [tz.m.ForwardGradient(), tz.m.LR(0.01)],
    "sam": lambda: [tz.m.SAM(rho=0.05), tz.m.SGD(momentum=0.9), tz.m.LR(0.05)],
    "wrap_closure": lambda: [tz.m.WrapClosure(torch.optim.LBFGS, lr=1.0, max_iter=3)],
    "adam_with_a_closure": lambda: [tz.m.Adam(), tz.m.LR(0.05)],
}


@pytest.mark.parametrize("reuse", [False, True])
@pytest.mark.parametrize("chain", CLOSURE_CHAINS.values(), ids=CLOSURE_CHAINS.keys())
def test_closure_chain_maximize_equals_minimizing_the_negated_closure(chain, reuse):
    x, y = _pair()
    x2, y2 = _pair()
    modules = chain()
    if isinstance(modules[0], tz.m.WrapClosure):  # torch.optim.LBFGS takes one param group
        opt = tz.Modular([{"params": [x, y], "maximize": True}], *modules, reuse_evaluation=reuse)
        ref = tz.Modular([x2, y2], *chain(), reuse_evaluation=reuse)
    else:
        opt = tz.Modular(
            [{"params": [x], "maximize": True}, {"params": [y], "maximize": True}], *modules, reuse_evaluation=reuse
        )
        ref = tz.Modular([{"params": [x2]}, {"params": [y2]}], *chain(), reuse_evaluation=reuse)
    mine, theirs = _closure(opt, (x, y), 1.0), _closure(ref, (x2, y2), -1.0)
    start = _value(x, y)
    for t in range(6):
        torch.manual_seed(t)  # random directions (forward gradients) alike on both sides
        got = opt.step(mine)
        torch.manual_seed(t)
        want = ref.step(theirs)
        torch.testing.assert_close(got, -want)
        torch.testing.assert_close(x, x2)
        torch.testing.assert_close(y, y2)
    assert _value(x, y) > start  # it climbed


def test_mixed_groups_in_a_closure_chain_are_refused_at_construction():
    x, y = _pair()
    with pytest.raises(ValueError, match=r"param groups \[1\] have maximize=True but groups \[0\] have maximize=False"):
        tz.Modular([{"params": [x]}, {"params": [y], "maximize": True}], tz.m.LBFGS(), tz.m.StrongWolfe())
    opt = tz.Modular([{"params": [x]}], tz.m.LBFGS(), tz.m.StrongWolfe())
    with pytest.raises(ValueError, match="maximize"):
        opt.add_param_group({"params": [y], "maximize": True})
    assert len(opt.param_groups) == 1


def test_mixed_groups_in_a_closure_chain_are_refused_at_step_before_anything_changes():
    x, y = _pair()
    opt = tz.Modular([{"params": [x]}, {"params": [y]}], tz.m.LBFGS(), tz.m.StrongWolfe())
    calls: list[bool] = []
    closure = _closure(opt, (x, y), 1.0, calls)
    opt.step(closure)
    before, state = [x.detach().clone(), y.detach().clone()], save_load(opt.state_dict())
    del state["param_groups"]
    n = len(calls)
    opt.param_groups[0]["maximize"] = True
    with pytest.raises(ValueError, match=r"groups \[0\] have maximize=True but groups \[1\] have maximize=False"):
        opt.step(closure)
    assert len(calls) == n and torch.equal(x, before[0]) and torch.equal(y, before[1])
    after = save_load(opt.state_dict())
    del after["param_groups"]
    assert str(after) == str(state)
    opt.param_groups[1]["maximize"] = True  # every group now: the chain climbs
    start = _value(x, y)
    for _ in range(5):
        opt.step(closure)
    assert _value(x, y) > start


def test_mixed_groups_are_fine_in_a_first_order_chain_with_a_closure():
    """Without a module that needs the closure its loss is only reported: as the closure returned it."""
    x, y = _pair()
    opt = tz.Modular([{"params": [x]}, {"params": [y], "maximize": True}], tz.m.Adam(), tz.m.LR(0.1))
    closure = _closure(opt, (x, y), 1.0)
    loss = opt.step(closure)
    assert float(loss) == pytest.approx(_value(*_pair()))


def test_differentiable_mode_maximizes_too():
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, dtype=torch.float64)
    p, q = w.clone(), w.detach().clone().requires_grad_()
    opt = tz.Modular([{"params": [p], "maximize": True}], tz.m.Adam(), tz.m.LR(0.1), differentiable=True)
    ref = torch.optim.Adam([q], lr=0.1, maximize=True)
    for _ in range(3):
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-6)
    assert p.requires_grad and torch.equal(p.grad, g)
