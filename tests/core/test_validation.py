"""One validation mechanism: every module declares its settings' allowed values once (``schema``), and every
way a value enters an optimizer checks them before anything changes.

The table ``BAD`` lists, per module, values it must refuse and the allowed range its error states.  Each row is
tried at construction, in a param group of ``tz.Modular``, in ``set_params``, through ``add_param_group`` and in
a loaded state dict's param groups; after a refused call the optimizer (parameters, state, groups) is as
before.  ``TORCH_REJECTS`` holds torch.optim's own checks (its constructors' ``ValueError`` s and the error
inputs of its OptimizerInfo tests): torch refuses each, and so does the equivalent chain.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

import torchzero as tz
from torchzero.core.schema import Constraint, Setting

m = tz.m
O = torch.optim


@dataclasses.dataclass(frozen=True)
class Bad:
    """A value ``module`` refuses for ``key``; ``expected`` is how its error states the allowed range."""

    module: str
    key: str
    value: Any
    expected: str
    make: Callable[..., tz.Module] | None = None
    """builds a valid instance from keyword arguments (default: the class itself)"""
    option: bool = False
    """a constructor option, not a per-group setting: only construction can give it"""

    def build(self, **kw: Any) -> tz.Module:
        return (self.make or getattr(tz.m, self.module))(**kw)


def _wrap_sgd(**kw: Any) -> tz.Module:
    return m.Wrap(O.SGD, lr=1.0, **{"momentum": 0.9, "weight_decay": 0.0, **kw})


def _clip_value(**kw: Any) -> tz.Module:
    return m.ClipValue(**{"value": 1.0, **kw})


def _clip_norm(**kw: Any) -> tz.Module:
    return m.ClipNorm(**{"max_norm": 1.0, **kw})


def _add(**kw: Any) -> tz.Module:
    return m.Add(**{"other": 1.0, **kw})


def _sub(**kw: Any) -> tz.Module:
    return m.Sub(**{"other": 1.0, **kw})


def _mul(**kw: Any) -> tz.Module:
    return m.Mul(**{"other": 2.0, **kw})


def _div(**kw: Any) -> tz.Module:
    return m.Div(**{"other": 2.0, **kw})


def _lerp(**kw: Any) -> tz.Module:
    return m.Lerp(m.Grad(), **{"weight": 0.5, **kw})


NAN = math.nan
B = Bad
BAD: list[Bad] = [
    B("LR", "lr", -1e-3, "lr >= 0"),
    B("LR", "lr", torch.tensor([1e-3, 1e-3]), "one-element Tensor"),
    B("LR", "lr", "0.1", "lr >= 0"),
    B("LR", "lr", NAN, "lr >= 0"),
    B("LR", "scheduler_cls", 5, "scheduler_cls a callable", option=True),
    B("Adam", "betas", (0.9, 1.2), "betas[1] in [0, 1)"),
    B("Adam", "betas", (1.0, 0.999), "betas[0] in [0, 1)"),
    B("Adam", "betas", (-0.1, 0.999), "betas[0] in [0, 1)"),
    B("Adam", "betas", (0.9,), "a pair (beta1, beta2)"),
    B("Adam", "betas", (0.9, 0.99, 0.999), "a pair (beta1, beta2)"),
    B("Adam", "betas", 0.9, "a pair (beta1, beta2)"),
    B("Adam", "betas", (0.9, torch.tensor(0.99)), "all numbers or all Tensors"),
    B("Adam", "eps", -1e-8, "eps >= 0"),
    B("Adam", "amsgrad", "yes", "amsgrad True or False"),
    B("Adam", "alpha", NAN, "alpha a real number"),
    B("Adam", "fused", "yes", "fused True or False, or None", option=True),
    B("Adamax", "betas", (0.0, 1.0), "betas[1] in [0, 1)"),
    B("Adamax", "eps", -1.0, "eps >= 0"),
    B("NAdam", "betas", (1.0, 0.0), "betas[0] in [0, 1)"),
    B("NAdam", "momentum_decay", -0.2, "momentum_decay >= 0"),
    B("RAdam", "eps", -1.0, "eps >= 0"),
    B("Lion", "betas", (0.9, 1.0), "betas[1] in [0, 1)"),
    B("Adagrad", "lr_decay", -0.5, "lr_decay >= 0"),
    B("Adagrad", "initial_accumulator_value", -1.0, "initial_accumulator_value >= 0"),
    B("Adagrad", "eps", -1.0, "eps >= 0"),
    B("Adadelta", "rho", 1.1, "rho in [0, 1]"),
    B("Adadelta", "rho", -0.1, "rho in [0, 1]"),
    B("RMSprop", "smoothing", 1.5, "smoothing in [0, 1]"),
    B("RMSprop", "momentum", -1.0, "momentum >= 0"),
    B("RMSprop", "centered", 1, "centered True or False"),
    B("Rprop", "etas", (1.0, 0.5), "0 < eta_minus < 1 < eta_plus"),
    B("Rprop", "etas", (0.5, 1.0), "0 < eta_minus < 1 < eta_plus"),
    B("Rprop", "step_sizes", (1.0, 0.1), "0 <= min <= max"),
    B("Rprop", "step_sizes", (-1.0, 1.0), "0 <= min <= max"),
    B("Rprop", "alpha", -1.0, "alpha >= 0"),
    B("SGD", "momentum", -0.5, "momentum >= 0"),
    B("SGD", "dampening", 1.5, "dampening in [0, 1]"),
    B("SGD", "nesterov", 1, "nesterov True or False"),
    B("SGD", "alpha", "x", "alpha a real number"),
    B("HeavyBall", "momentum", -0.1, "momentum >= 0"),
    B("HeavyBall", "dampening", -0.1, "dampening in [0, 1]"),
    B("NesterovMomentum", "momentum", -0.1, "momentum >= 0"),
    B("Muon", "momentum", 1.0, "momentum in [0, 1)"),
    B("Muon", "momentum", -0.5, "momentum in [0, 1)"),
    B("Muon", "adjust_lr_fn", "arbitrary", "adjust_lr_fn in"),
    B("Muon", "ns_steps", 100, "ns_steps in [0, 100) (an integer)"),
    B("Muon", "ns_steps", 2.5, "ns_steps in [0, 100) (an integer)"),
    B("Muon", "ns_coefficients", (1.0, 2.0), "a tuple (a, b, c)"),
    B("Muon", "eps", 0.0, "eps > 0"),
    B("Muon", "nesterov", "no", "nesterov True or False"),
    B("Orthogonalize", "ns_dtype", "float33", "a torch dtype name"),
    B("Orthogonalize", "flatten", None, "flatten True or False"),
    B("WeightDecay", "weight_decay", -0.1, "weight_decay >= 0"),
    B("WeightDecay", "weight_decay", torch.tensor([0.1, 0.2]), "one-element Tensor"),
    B("WeightDecay", "scale_by_lr", "yes", "scale_by_lr True or False", option=True),
    B("EMA", "momentum", 1.0, "momentum in [0, 1)"),
    B("EMA", "debiased", "yes", "debiased True or False"),
    B("Centralize", "min_ndim", 1, "min_ndim >= 2"),
    B("Centralize", "min_ndim", 2.5, "min_ndim >= 2 (an integer)"),
    B("ClipValue", "value", 0.0, "value > 0", _clip_value),
    B("ClipNorm", "max_norm", -1.0, "max_norm > 0", _clip_norm),
    B("ClipNorm", "eps", -1.0, "eps >= 0", _clip_norm),
    B("ClipNorm", "ord", 0, "ord > 0", _clip_norm, option=True),
    B("ClipNorm", "per_tensor", "yes", "per_tensor True or False", _clip_norm, option=True),
    B("Normalize", "norm", -1.0, "norm >= 0"),
    B("Normalize", "eps", 0.0, "eps > 0"),
    B("Cautious", "eps", 0.0, "eps > 0"),
    B("Cautious", "normalize", "yes", "normalize True or False"),
    B("Add", "alpha", NAN, "alpha a real number", _add),
    B("Add", "other", NAN, "other a real number", _add),
    B("Sub", "alpha", "x", "alpha a real number", _sub),
    B("Mul", "other", NAN, "other a real number", _mul),
    B("Div", "other", 0.0, "other != 0", _div),
    B("Lerp", "weight", NAN, "weight a real number", _lerp),
    B("SAM", "rho", 0.0, "rho > 0"),
    B("SAM", "eta", -1.0, "eta >= 0"),
    B("SAM", "adaptive", "yes", "adaptive True or False"),
    B("ExactNewton", "damping", -1.0, "damping >= 0"),
    B("NewtonCG", "max_iters", 0, "max_iters >= 1 (an integer)"),
    B("NewtonCG", "tol", 0.0, "tol > 0"),
    B("NewtonCG", "damping", -1.0, "damping >= 0"),
    B("LBFGS", "history_size", 0, "history_size >= 1 (an integer)"),
    B("LBFGS", "history_size", 2.5, "history_size >= 1 (an integer)"),
    B("LBFGS", "tol_curvature", -1.0, "tol_curvature >= 0"),
    B("LBFGS", "scale_first", "yes", "scale_first True or False"),
    B("BFGS", "tol_curvature", -1.0, "tol_curvature >= 0"),
    B("BFGS", "scale_init", 1, "scale_init True or False"),
    B("SR1", "r", -1.0, "r >= 0"),
    B("FDM", "eps", 0.0, "eps > 0"),
    B("FDM", "formula", "five-point", "formula in ('forward', 'backward', 'central')"),
    B("RandomizedFDM", "n_samples", 0, "n_samples >= 1 (an integer)"),
    B("RandomizedFDM", "distribution", "uniform", "distribution in"),
    B("RandomizedFDM", "seed", 1.5, "seed an integer"),
    B("ForwardGradient", "n_samples", 0, "n_samples >= 1 (an integer)"),
    B("ForwardGradient", "distribution", "uniform", "distribution in"),
    B("Backtracking", "init", 0.0, "init > 0"),
    B("Backtracking", "beta", 1.5, "beta in (0, 1)"),
    B("Backtracking", "c1", 0.0, "c1 in (0, 1)"),
    B("Backtracking", "max_evals", 0, "max_evals >= 1 (an integer)"),
    B("Backtracking", "grow", 0.0, "grow > 0"),
    B("Backtracking", "adaptive", "yes", "adaptive True or False"),
    B("ArmijoTrials", "n_trials", 0, "n_trials >= 1 (an integer)"),
    B("ArmijoTrials", "beta", 0.0, "beta in (0, 1)"),
    B("ArmijoTrials", "c1", 1.0, "c1 in (0, 1)"),
    B("StrongWolfe", "c1", 0.0, "c1 in (0, 1)"),
    B("StrongWolfe", "c2", 1.0, "c2 in (0, 1)"),
    B("StrongWolfe", "tol", -1.0, "tol >= 0"),
    B("StrongWolfe", "max_evals", 2.5, "max_evals >= 1 (an integer)"),
    B("Wrap", "momentum", -1.0, "Invalid momentum value", _wrap_sgd),
    B("Wrap", "weight_decay", -1.0, "Invalid weight_decay value", _wrap_sgd),
    B(
        "WrapClosure",
        "momentum",
        -1.0,
        "Invalid momentum value",
        lambda **kw: m.WrapClosure(O.SGD, lr=1.0, **{"momentum": 0.9, **kw}),
    ),
]

IDS = [f"{b.module}-{b.key}-{i}" for i, b in enumerate(BAD)]
SETTINGS = [pytest.param(b, id=i) for b, i in zip(BAD, IDS, strict=True) if not b.option]


def _param(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, generator=torch.Generator().manual_seed(seed)).requires_grad_()


def _chain(module: tz.Module) -> list[tz.Module]:
    return [module] if isinstance(module, m.LR) else [module, m.LR(0.1)]


def _stepped(module: tz.Module) -> tuple[tz.Modular, list[torch.Tensor]]:
    """An optimizer over one parameter that has taken a step (so it has state)."""
    p = _param()
    opt = tz.Modular([p], *_chain(module))

    def closure(backward: bool = True) -> torch.Tensor:
        loss = ((p - 1) ** 2).sum() + (p**4).sum()
        if backward:
            p.grad = None
            loss.backward()
        return loss

    opt.step(closure)
    return opt, [p]


def _snapshot(opt: tz.Modular) -> Any:
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [id(p) for p in g["params"]]}
        for g in opt.param_groups
    ]
    values = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    return copy.deepcopy({"groups": groups, "values": values, "state": opt.state_dict()})


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}/{i}")
    else:
        assert a == b or (a != a and b != b), where


def _refused(bad: Bad, where: str = "") -> Any:
    """``pytest.raises`` for the row's error: module, setting, allowed range and where the value came from."""
    pattern = f"^{bad.module}: .*{bad.key}=.*{where}.* is invalid: .*{bad.expected}"
    return pytest.raises(ValueError, match=pattern.replace("(", r"\(").replace(")", r"\)").replace("[", r"\["))


# ---------------------------------------------------------------------------------------------- the table
@pytest.mark.parametrize("bad", [pytest.param(b, id=i) for b, i in zip(BAD, IDS, strict=True)])
def test_construction_refuses(bad: Bad) -> None:
    with _refused(bad):
        bad.build(**{bad.key: bad.value})


@pytest.mark.parametrize("bad", SETTINGS)
def test_param_group_of_modular_refuses(bad: Bad) -> None:
    module = bad.build()
    with _refused(bad, "in param group 1"):
        tz.Modular([{"params": [_param(0)]}, {"params": [_param(1)], bad.key: bad.value}], *_chain(module))


@pytest.mark.parametrize("bad", SETTINGS)
def test_set_params_refuses(bad: Bad) -> None:
    module = bad.build()
    with _refused(bad, "in set_params group 0"):
        module.set_params([{"params": [_param()], bad.key: bad.value}])
    assert module.own_groups is None


@pytest.mark.parametrize("bad", SETTINGS)
def test_add_param_group_refuses_and_changes_nothing(bad: Bad) -> None:
    opt, _ = _stepped(bad.build())
    before = _snapshot(opt)
    group = {"params": [_param(1)], bad.key: bad.value}
    keys = set(group)
    with _refused(bad, "in param group 1"):
        opt.add_param_group(group)
    _assert_same(before, _snapshot(opt))
    assert set(group) == keys  # the refused group was not filled in either


@pytest.mark.parametrize("bad", SETTINGS)
def test_load_state_dict_refuses_and_changes_nothing(bad: Bad) -> None:
    opt, _ = _stepped(bad.build())
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][0][bad.key] = bad.value
    before = _snapshot(opt)
    with _refused(bad, "in the state dict's param group 0"):
        opt.load_state_dict(sd)
    _assert_same(before, _snapshot(opt))
    del sd["param_groups"][0][bad.key]
    opt.load_state_dict(sd)  # the same state dict without the bad value loads


def test_message_says_what_was_expected_what_came_and_how_to_fix() -> None:
    with pytest.raises(ValueError) as info:
        m.Adam(betas=(0.9, 1.2))
    assert str(info.value) == (
        "Adam: betas=(0.9, 1.2) is invalid: expected betas[1] in [0, 1), got 1.2. Each beta must be in [0, 1), "
        "e.g. (0.9, 0.999); Tensor betas must both be Tensors."
    )


# ---------------------------------------------------------------------------------------------- good edge values
GOOD: list[tuple[Callable[[], tz.Module], dict[str, Any]]] = [
    (lambda: m.LR(0.0), {"lr": 0.0}),
    (lambda: m.LR(torch.tensor(1e-3)), {"lr": torch.tensor(1e-3)}),
    (lambda: m.LR(torch.tensor([1e-3])), {"lr": torch.tensor([1e-3])}),
    (lambda: m.Adam(betas=(0.0, 0.999)), {"betas": (0.0, 0.999)}),
    (lambda: m.Adam(betas=(torch.tensor(0.9), torch.tensor(0.999))), {"eps": 0.0}),
    (lambda: m.SGD(momentum=0.9, nesterov=True), {"dampening": 0.0}),
    (lambda: m.SGD(momentum=0.0, dampening=1.0), {"momentum": 0.0}),
    (lambda: m.Adadelta(rho=1.0), {"rho": 0.0}),
    (lambda: m.RMSprop(smoothing=0.0), {"smoothing": 1.0}),
    (lambda: m.EMA(0.0), {"momentum": 0.0}),
    (lambda: m.Muon(momentum=0.0), {"ns_steps": 0}),
    (lambda: m.Rprop(step_sizes=(0.0, 0.0), alpha=0.0), {"step_sizes": (0.0, 0.0)}),
    (lambda: m.WeightDecay(0.0), {"weight_decay": torch.tensor(0.1)}),
    (lambda: m.Centralize(min_ndim=2), {"min_ndim": 3}),
    (lambda: m.Div(-2.0), {"other": -0.5}),
]


@pytest.mark.parametrize(("make", "group"), GOOD)
def test_edge_values_are_accepted_everywhere(make: Callable[[], tz.Module], group: dict[str, Any]) -> None:
    opt, params = _stepped(make())
    q = _param(1)
    opt.add_param_group({"params": [q], **group})
    make().set_params([{"params": [q], **group}])
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][0].update({k: opt.param_groups[1][k] for k in group})  # as stored: a Tensor lr is 0-dim
    opt.load_state_dict(sd)
    for p in (*params, q):
        p.grad = torch.ones_like(p)
    opt.step()
    assert all(torch.isfinite(p).all() for p in (*params, q))


def test_values_are_stored_in_their_canonical_form() -> None:
    assert m.Adam(betas=[0.9, 0.99]).defaults["betas"] == (0.9, 0.99)
    assert m.Orthogonalize(ns_dtype=torch.float32).defaults["ns_dtype"] == "float32"
    history = m.LBFGS(history_size=3.0).defaults["history_size"]
    assert history == 3 and type(history) is int
    p = _param()
    opt = tz.Modular([p], m.LBFGS(), m.LR(0.1))
    opt.add_param_group({"params": [_param(1)], "history_size": 10.0})
    assert type(opt.param_groups[1]["history_size"]) is int
    module = m.Adam().set_params([{"params": [p], "betas": [0.5, 0.9]}])
    assert module.own_groups is not None and module.own_groups[0]["betas"] == (0.5, 0.9)


def test_tensor_lr_keeps_working() -> None:
    p = _param()
    opt = tz.Modular([p], m.Adam(), m.LR(torch.tensor(1e-2)))
    q = _param(1)
    opt.add_param_group({"params": [q], "lr": torch.tensor([1e-3])})
    for x in (p, q):
        x.grad = torch.ones_like(x)
    before = [p.detach().clone(), q.detach().clone()]
    opt.step()
    assert not torch.equal(p, before[0]) and not torch.equal(q, before[1])


# ---------------------------------------------------------------------------------------------- rules between settings
def test_nesterov_needs_momentum_and_no_dampening_at_construction() -> None:
    with pytest.raises(ValueError, match=r"^SGD: nesterov=True, momentum=0.0, dampening=0.0 is invalid"):
        m.SGD(nesterov=True)
    with pytest.raises(ValueError, match="Nesterov momentum requires momentum > 0 and dampening = 0"):
        m.SGD(momentum=0.9, dampening=0.5, nesterov=True)
    with pytest.raises(ValueError, match=r"expected 0 < c1 < c2 < 1"):
        m.StrongWolfe(c1=0.5, c2=0.1)


def test_rules_are_checked_on_what_each_group_resolves_to() -> None:
    a, b = _param(0), _param(1)
    # the group's nesterov meets SGD's default momentum of 0
    with pytest.raises(ValueError, match=r"^SGD: nesterov=True, momentum=0.0, dampening=0.0 in param group 0 is"):
        tz.Modular([{"params": [a], "nesterov": True}], m.SGD(), m.LR(0.1))
    tz.Modular([{"params": [a], "nesterov": True}], m.SGD(momentum=0.9), m.LR(0.1))
    # set_params gives only momentum: checked when the optimizer is built, with the group's nesterov
    sgd = m.SGD(momentum=0.9, nesterov=True).set_params([{"params": [a], "momentum": 0.0}])
    with pytest.raises(ValueError, match=r"in param group 0 with SGD.set_params group 0 is invalid"):
        tz.Modular([a, b], sgd, m.LR(0.1))
    # ... and a combination no parameter has is not refused: a's momentum comes from set_params
    sgd = m.SGD().set_params([{"params": [a], "momentum": 0.9}])
    tz.Modular([{"params": [a], "nesterov": True}, {"params": [b]}], sgd, m.LR(0.1))
    # a set_params group that gives every key of the rule is refused right away
    with pytest.raises(ValueError, match=r"in set_params group 0 is invalid"):
        m.SGD().set_params([{"params": [a], "nesterov": True, "momentum": 0.0, "dampening": 0.0}])
    # a key one module does not declare, given in its set_params, is checked against the module that has it
    with pytest.raises(ValueError, match=r"^LR: lr=-1.0 in param group 0 with Adam.set_params group 0 is invalid"):
        tz.Modular([a], m.Adam().set_params([{"params": [a], "lr": -1.0}]), m.LR(0.1))


def test_rules_refused_in_add_param_group_and_load_state_dict_change_nothing() -> None:
    opt, _ = _stepped(m.SGD())
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="Nesterov"):
        opt.add_param_group({"params": [_param(1)], "nesterov": True})
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][0]["nesterov"] = True
    with pytest.raises(ValueError, match="in the state dict's param group 0 is invalid"):
        opt.load_state_dict(sd)
    _assert_same(before, _snapshot(opt))


def test_exposed_keys_are_checked_only_where_they_apply() -> None:
    """``momentum`` is owned by HeavyBall (>= 0); EMA (< 1) takes the group's value only if it was given."""
    opt = tz.Modular([_param()], m.HeavyBall(momentum=1.5), m.EMA(0.9), m.LR(0.1))
    with pytest.raises(ValueError, match=r"^EMA: momentum=1.5 in param group 1 is invalid"):
        opt.add_param_group({"params": [_param(1)], "momentum": 1.5})


# ---------------------------------------------------------------------------------------------- against torch.optim
def _tz_chain(cls: type[torch.optim.Optimizer], kwargs: dict[str, Any]) -> list[tz.Module]:
    """The tz chain that equals ``cls(**kwargs)``."""
    kw = dict(kwargs)
    lr, wd = kw.pop("lr", None), kw.pop("weight_decay", None)
    if cls is O.AdamW:
        return [m.AdamW(**kw, **({} if lr is None else {"lr": lr}), **({} if wd is None else {"weight_decay": wd}))]
    if cls is O.Rprop:
        return [m.Rprop(**kw, **({} if lr is None else {"alpha": lr}))]
    if cls is O.RMSprop and "alpha" in kw:
        kw["smoothing"] = kw.pop("alpha")
    return [
        *([] if wd is None else [m.WeightDecay(wd)]),
        getattr(m, cls.__name__)(**kw),
        *([] if lr is None else [m.LR(lr)]),
    ]


WITH_WEIGHT_DECAY = [O.SGD, O.Adam, O.AdamW, O.Adagrad, O.Adamax, O.Adadelta, O.NAdam, O.RAdam, O.RMSprop, O.Muon]
ALL = [*WITH_WEIGHT_DECAY, O.Rprop, O.LBFGS]
TORCH_REJECTS: list[tuple[type[torch.optim.Optimizer], dict[str, Any]]] = [
    *[(cls, {"lr": -1e-2}) for cls in ALL],
    *[(cls, {"lr": torch.tensor([1e-3, 1e-3])}) for cls in ALL],
    *[(cls, {"weight_decay": -1.0}) for cls in WITH_WEIGHT_DECAY],
    (O.SGD, {"momentum": -0.5}),
    (O.SGD, {"nesterov": True}),
    (O.SGD, {"momentum": 0.9, "dampening": 0.5, "nesterov": True}),
    *[
        (cls, kw)
        for cls in (O.Adam, O.AdamW)
        for kw in (
            {"betas": (1.0, 0.0)},
            {"betas": (0.0, 1.0)},
            {"eps": -1.0},
            {"betas": (0.9, torch.tensor(0.99))},
            {"betas": (torch.tensor(0.9), 0.99)},
        )
    ],
    (O.Adagrad, {"lr_decay": -0.5}),
    (O.Adagrad, {"initial_accumulator_value": -1.0}),
    (O.Adagrad, {"eps": -1.0}),
    (O.Adamax, {"betas": (0.0, 1.0)}),
    (O.Adamax, {"betas": (1.0, 0.0)}),
    (O.Adamax, {"eps": -1.0}),
    (O.Adadelta, {"rho": 1.1}),
    (O.Adadelta, {"rho": -0.1}),
    (O.Adadelta, {"eps": -1.0}),
    (O.NAdam, {"betas": (1.0, 0.0)}),
    (O.NAdam, {"momentum_decay": -0.2}),
    (O.NAdam, {"eps": -1.0}),
    (O.RAdam, {"betas": (1.0, 0.0)}),
    (O.RAdam, {"eps": -1.0}),
    (O.RMSprop, {"momentum": -1.0}),
    (O.RMSprop, {"alpha": -0.1}),
    (O.RMSprop, {"eps": -1.0}),
    (O.Rprop, {"etas": (1.0, 0.5)}),
    (O.Muon, {"momentum": -0.5}),
    (O.Muon, {"adjust_lr_fn": "arbitrary"}),
]
TORCH_ACCEPTS: list[tuple[type[torch.optim.Optimizer], dict[str, Any]]] = [
    *[(cls, {"lr": 0.0}) for cls in ALL],
    *[(cls, {"lr": torch.tensor(1e-3)}) for cls in (O.SGD, O.Adagrad, O.Adamax, O.NAdam, O.RAdam, O.RMSprop, O.Rprop)],
    (O.Adam, {"betas": (0.0, 0.999), "eps": 0.0, "weight_decay": 0.0}),
    (O.SGD, {"momentum": 0.0, "dampening": 1.0}),
    (O.Adadelta, {"rho": 1.0}),
    (O.RMSprop, {"alpha": 0.0, "momentum": 0.0}),
]


def _ids(cases: list[tuple[type, dict[str, Any]]]) -> list[str]:
    return [f"{cls.__name__}-{'-'.join(f'{k}={v!r}' for k, v in kw.items())}" for cls, kw in cases]


@pytest.mark.parametrize(("cls", "kwargs"), TORCH_REJECTS, ids=_ids(TORCH_REJECTS))
def test_what_torch_optim_rejects_is_rejected(cls: type[torch.optim.Optimizer], kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        cls([torch.zeros(2, 2, requires_grad=True)], **kwargs)
    with pytest.raises(ValueError, match="is invalid: expected"):
        tz.Modular([torch.zeros(2, 2, requires_grad=True)], *_tz_chain(cls, kwargs))


@pytest.mark.parametrize(("cls", "kwargs"), TORCH_ACCEPTS, ids=_ids(TORCH_ACCEPTS))
def test_what_torch_optim_accepts_at_the_edge_is_accepted(
    cls: type[torch.optim.Optimizer], kwargs: dict[str, Any]
) -> None:
    cls([torch.zeros(2, 2, requires_grad=True)], **kwargs)
    tz.Modular([torch.zeros(2, 2, requires_grad=True)], *_tz_chain(cls, kwargs))


# ---------------------------------------------------------------------------------------------- the registry
PUBLIC = [n for n in tz.m.__all__ if n not in {"Module", "Transform", "Chain"}]
NEEDS_ARGUMENTS: dict[str, Callable[[], tz.Module]] = {
    "ClipValue": _clip_value,
    "ClipNorm": _clip_norm,
    "Add": _add,
    "Sub": _sub,
    "Mul": _mul,
    "Div": _div,
    "Lerp": _lerp,
    "Wrap": lambda: m.Wrap(O.SGD, lr=1.0, momentum=0.9, nesterov=True),
    "WrapClosure": lambda: m.WrapClosure(O.LBFGS, history_size=3),
    "Split": lambda: m.Split("hidden", true=[m.Adam()], false=[m.SGD(momentum=0.9)]),
}


@pytest.mark.parametrize("name", PUBLIC)
def test_every_setting_of_every_module_is_declared(name: str) -> None:
    module = NEEDS_ARGUMENTS.get(name, getattr(tz.m, name))()
    for sub in module.walk():
        cls = type(sub).__name__
        missing = [k for k in sub.defaults if k not in sub.schema]
        assert not missing, f"{cls} has settings {missing} with no schema entry: declare their allowed values"
        for key, spec in sub.schema.items():
            assert isinstance(spec, (Setting, Constraint)), f"{cls}.schema[{key!r}] is {spec!r}"
        arguments = set(inspect.signature(type(sub)).parameters)
        stale = set(sub.schema) - set(sub.defaults) - arguments
        assert not stale, f"{cls}.schema declares {stale}, which are neither settings nor constructor arguments"


@pytest.mark.parametrize("name", PUBLIC)
def test_no_module_checks_values_by_hand(name: str) -> None:
    """Range checks live in the schema; a constructor raises TypeError at most (a wrong kind of argument)."""
    for cls in getattr(tz.m, name).__mro__:
        if cls.__module__.startswith("torchzero.modules") and "__init__" in vars(cls):
            source = inspect.getsource(vars(cls)["__init__"])
            assert "raise ValueError" not in source, f"{cls.__name__}.__init__ checks a value itself"


def test_wrap_checks_its_arguments_with_the_wrapped_optimizer() -> None:
    with pytest.raises(ValueError, match=r"^Wrap: expected settings SGD accepts, got: Invalid learning rate: -1.0"):
        m.Wrap(O.SGD, lr=-1.0)
    with pytest.raises(ValueError, match=r"^Wrap: nesterov=True is invalid: .*Nesterov momentum requires"):
        m.Wrap(O.SGD, lr=1.0, nesterov=True)
    # a value is checked with the constructor's other arguments ...
    wrap = m.Wrap(O.SGD, lr=1.0, momentum=0.9, nesterov=True)
    with pytest.raises(ValueError, match=r"^Wrap: momentum=0.0 in param group 0 is invalid: .*Nesterov momentum"):
        tz.Modular([{"params": [_param()], "momentum": 0.0}], wrap, m.LR(0.1))
    # ... and the combination each group resolves to when the optimizer is built
    p = _param()
    wrap = m.Wrap(O.SGD, lr=1.0, momentum=0.9, nesterov=False).set_params([{"params": [p], "momentum": 0.0}])
    with pytest.raises(ValueError, match=r"^Wrap: momentum=0.0, nesterov=True in param group 0 with Wrap.set_params"):
        tz.Modular([{"params": [p], "nesterov": True}], wrap, m.LR(0.1))


def test_a_module_without_a_schema_is_not_checked() -> None:
    class Custom(tz.Transform):
        def __init__(self, c: float = -1.0) -> None:
            super().__init__({"c": c})

        def apply(self, ctx: Any, seg: Any) -> None:
            pass

    tz.Modular([{"params": [_param()], "c": "anything"}], Custom(), m.LR(0.1))
