"""Declared settings: what values each setting of a module allows, checked in one place.

A module declares its settings once, next to its defaults, as a ``schema`` mapping each key to a
:class:`Setting` (a constraint, and a hint on how to fix a bad value)::

    class Adam(Transform):
        schema = {"betas": BETAS, "eps": EPS, "amsgrad": Setting(boolean()), "alpha": ALPHA}

Constraints between settings are :class:`Rule` objects in ``cross_checks``::

    cross_checks = (Rule(("nesterov", "momentum", "dampening"), lambda n, m, d: not n or (m > 0 and d == 0),
                         "momentum > 0 and dampening = 0 when nesterov=True"),)

:func:`validate` checks a mapping of settings against a module's schema and is the only check.  It runs
wherever values reach a module: its constructor, :meth:`~torchzero.Module.set_params`,
``Modular.add_param_group`` (which also adds the groups given to ``tz.Modular``) and
``Modular.load_state_dict`` (the saved groups).  A bad value raises ``ValueError`` naming the module, the
setting, the value and the allowed range, before anything changes.  In the optimizer, rules are checked on
the settings each module actually resolves to for a run of parameters (its param group, and the
``set_params`` groups those parameters are in), see :func:`check_groups`.

A key without a schema entry is not checked, so modules written elsewhere keep working unchanged.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import precision

if TYPE_CHECKING:
    from .modular import Modular
    from .module import Module


# ---------------------------------------------------------------------------------------------- constraints
class Constraint:
    """The values one setting allows."""

    def problem(self, name: str, value: Any) -> tuple[str, str] | None:
        """``(expected, got)`` when ``value`` is not allowed for the setting ``name``, else None."""
        raise NotImplementedError

    def convert(self, value: Any) -> Any:
        """The stored form of an allowed value (a tuple for a pair, an int for an integer, ...)."""
        return value


class Number(Constraint):
    """A real number (not a bool, not NaN) in a range, or a one-element Tensor holding one (a Tensor lr).

    ``integer``: an int, or an integral float (stored as an int); Tensors are not integers.
    """

    def __init__(
        self,
        low: float | None = None,
        high: float | None = None,
        closed: str = "both",
        integer: bool = False,
        nonzero: bool = False,
    ) -> None:
        self.low, self.high, self.integer, self.nonzero = low, high, integer, nonzero
        self.low_closed = closed in ("both", "left")
        self.high_closed = closed in ("both", "right")

    def describe(self, name: str) -> str:
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            text = f"{name} in {'[' if self.low_closed else '('}{lo}, {hi}{']' if self.high_closed else ')'}"
        elif lo is not None:
            text = f"{name} {'>=' if self.low_closed else '>'} {lo}"
        elif hi is not None:
            text = f"{name} {'<=' if self.high_closed else '<'} {hi}"
        elif self.nonzero:
            text = f"{name} != 0"
        else:
            return f"{name} an integer" if self.integer else f"{name} a real number"
        return f"{text} (an integer)" if self.integer else text

    def problem(self, name: str, value: Any) -> tuple[str, str] | None:
        expected = self.describe(name)
        if isinstance(value, Tensor):
            if self.integer or value.is_complex() or value.dtype == torch.bool:
                return expected, f"a Tensor of dtype {value.dtype}"
            if value.numel() != 1:
                return f"{expected}, as a number or a one-element Tensor", f"a Tensor of shape {tuple(value.shape)}"
            x = float(value.detach().item())  # reads the value back (once, here; never on the step path)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            x = float(value)
            if self.integer and not x.is_integer():
                return expected, repr(value)
        else:
            return expected, f"{value!r} ({type(value).__name__})"
        if math.isnan(x):
            return expected, repr(value)
        if self.low is not None and not (x >= self.low if self.low_closed else x > self.low):
            return expected, repr(value)
        if self.high is not None and not (x <= self.high if self.high_closed else x < self.high):
            return expected, repr(value)
        if self.nonzero and x == 0:
            return expected, repr(value)
        return None

    def convert(self, value: Any) -> Any:
        if isinstance(value, Tensor):  # a one-element Tensor as a 0-dim view (foreach ops take 0-dim scalars)
            return value if value.ndim == 0 else value.reshape(())
        return int(value) if self.integer else value


class Items(Constraint):
    """A tuple or list of fixed length whose items have their own constraints; stored as a tuple."""

    def __init__(
        self, items: Sequence[Constraint], what: str, same_kind: bool = False, ascending: bool = False
    ) -> None:
        self.items, self.what, self.same_kind, self.ascending = tuple(items), what, same_kind, ascending

    def problem(self, name: str, value: Any) -> tuple[str, str] | None:
        if not isinstance(value, (tuple, list)) or len(value) != len(self.items):
            return f"{name} to be {self.what}", repr(value)
        for i, (item, v) in enumerate(zip(self.items, value, strict=True)):
            found = item.problem(f"{name}[{i}]", v)
            if found is not None:
                return found
        if self.same_kind and len({isinstance(v, Tensor) for v in value}) > 1:
            return f"{name} to be all numbers or all Tensors", repr(value)
        if self.ascending and any(bool(a > b) for a, b in zip(value, value[1:], strict=False)):
            return f"{name} in ascending order", repr(value)
        return None

    def convert(self, value: Any) -> Any:
        return tuple(item.convert(v) for item, v in zip(self.items, value, strict=True))


class OneOf(Constraint):
    def __init__(self, choices: Sequence[Any]) -> None:
        self.choices = tuple(choices)

    def problem(self, name: str, value: Any) -> tuple[str, str] | None:
        if isinstance(value, Tensor) or not any(
            value is c or (type(value) is type(c) and value == c) for c in self.choices
        ):
            return f"{name} in {self.choices!r}", repr(value)
        return None


class Satisfies(Constraint):
    """Any predicate, with the text of what it expects (``{name}`` is replaced by the setting's name)."""

    def __init__(self, test: Callable[[Any], bool], expected: str, convert: Callable[[Any], Any] | None = None) -> None:
        self.test, self.expected, self.converter = test, expected, convert

    def problem(self, name: str, value: Any) -> tuple[str, str] | None:
        return None if self.test(value) else (self.expected.format(name=name), repr(value))

    def convert(self, value: Any) -> Any:
        return value if self.converter is None else self.converter(value)


class OrNone(Constraint):
    def __init__(self, inner: Constraint) -> None:
        self.inner = inner

    def problem(self, name: str, value: Any) -> tuple[str, str] | None:
        if value is None:
            return None
        found = self.inner.problem(name, value)
        return None if found is None else (f"{found[0]}, or None", found[1])

    def convert(self, value: Any) -> Any:
        return None if value is None else self.inner.convert(value)


def at_least(low: float) -> Number:
    """``low <= x`` (a one-element Tensor too)."""
    return Number(low, closed="left")


def greater_than(low: float) -> Number:
    """``low < x``."""
    return Number(low, closed="neither")


def in_range(low: float, high: float, closed: str = "both") -> Number:
    """``low <= x <= high``; ``closed`` is ``"both"``, ``"left"`` (``[low, high)``), ``"right"`` or ``"neither"``."""
    return Number(low, high, closed)


def real(nonzero: bool = False) -> Number:
    """Any real number (not NaN), optionally not 0."""
    return Number(nonzero=nonzero)


def integer(low: int | None = None, high: int | None = None, closed: str = "both") -> Number:
    """An integer (an integral float is stored as an int) in a range."""
    return Number(low, high, closed, integer=True)


def pair_of(first: Constraint, second: Constraint | None = None, names: str = "(a, b)", **kw: Any) -> Items:
    """Two values, e.g. ``betas``; ``same_kind=True``: both numbers or both Tensors; ``ascending=True``."""
    return Items((first, second or first), f"a pair {names}", **kw)


def tuple_of(item: Constraint, n: int, names: str) -> Items:
    return Items((item,) * n, f"a tuple {names} of {n} values")


def one_of(*choices: Any) -> OneOf:
    return OneOf(choices)


def boolean() -> Satisfies:
    return Satisfies(lambda v: isinstance(v, bool), "{name} True or False")


def optional(inner: Constraint) -> OrNone:
    """``inner``, or None."""
    return OrNone(inner)


def anything() -> Satisfies:
    """No constraint of its own (a setting checked by a :class:`Rule`, or passed on to torch)."""
    return Satisfies(lambda v: True, "")


def a_callable() -> Satisfies:
    return Satisfies(callable, "{name} a callable")


def dtype_name() -> Satisfies:
    """A torch floating dtype or its name (``"bfloat16"``), stored as the name; or None."""

    def name_of(v: Any) -> str | None:
        return None if v is None else str(v).removeprefix("torch.")

    def test(v: Any) -> bool:
        return v is None or (
            isinstance(v, (str, torch.dtype)) and isinstance(getattr(torch, name_of(v) or "", None), torch.dtype)
        )

    return Satisfies(test, "{name} a torch dtype name such as 'bfloat16' or 'float32', or None", name_of)


# ---------------------------------------------------------------------------------------------- declarations
@dataclass(frozen=True)
class Setting:
    """A setting's allowed values.

    Attributes:
        constraint: what is allowed.
        fix: how to fix a bad value (appended to the error).
        expected: replaces the constraint's own text of what is allowed (for constraints on several parts).
    """

    constraint: Constraint
    fix: str = ""
    expected: str | None = None


@dataclass(frozen=True)
class Rule:
    """A constraint between settings, checked on the combination a module resolves to.

    ``holds`` gets the values of ``keys`` in that order and returns whether they are allowed together; it may
    raise ``ValueError`` to say why not (a wrapped torch optimizer's own checks do).  A rule is checked only
    where all its keys are known (a ``set_params`` group giving one of them is checked when the optimizer is
    built, with the values the others resolve to).
    """

    keys: tuple[str, ...]
    holds: Callable[..., Any]
    expected: str
    fix: str = ""


Schema = Mapping[str, Setting | Constraint]


def validate(module: Module, values: Mapping[str, Any], where: str = "", rules: bool = True) -> dict[str, Any]:
    """Check ``values`` (some or all of ``module``'s settings) against its schema; return them converted.

    Raises ``ValueError`` on the first value (or combination, when ``rules``) the module does not allow.
    ``where`` says where the values came from (``" in param group 1"``).
    """
    cls = type(module).__name__
    out = _check_values(cls, module.schema, values, where)
    for rule in module.cross_checks if rules else ():
        if not all(k in out for k in rule.keys):
            continue
        detail = ""
        try:
            ok = rule.holds(*(out[k] for k in rule.keys))
        except ValueError as e:
            ok, detail = False, f", got: {e}"
        if not ok:
            given = ", ".join(f"{k}={out[k]!r}" for k in rule.keys)
            what = f" {given}{where} is invalid:" if given else f"{where}"
            fix = f" {rule.fix}" if rule.fix else ""
            raise ValueError(f"{cls}:{what} expected {rule.expected}{detail}.{fix}")
    return out


def _check_values(owner: str, schema: Schema, values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``values`` converted, after checking each one that ``schema`` declares (``owner`` names it in errors)."""
    out = dict(values)
    for key, value in values.items():
        spec = schema.get(key)
        if spec is None:
            continue
        setting = spec if isinstance(spec, Setting) else Setting(spec)
        found = setting.constraint.problem(key, value)
        if found is not None:
            expected, got = found if setting.expected is None else (setting.expected, repr(value))
            fix = f" {setting.fix}" if setting.fix else ""
            raise ValueError(f"{owner}: {key}={value!r}{where} is invalid: expected {expected}, got {got}.{fix}")
        out[key] = setting.constraint.convert(value)
    return out


def check_optimizer_settings(group: Mapping[str, Any], where: str = "") -> None:
    """Check the optimizer's own settings in a param group (``maximize``; see ``settings.OPTIMIZER_KEYS``)."""
    _check_values("tz.Modular", OPTIMIZER_SCHEMA, {k: group[k] for k in OPTIMIZER_SCHEMA if k in group}, where)


# ---------------------------------------------------------------------------------------------- optimizer entry points
def check_new_group(opt: Modular, group: dict[str, Any], index: int) -> None:
    """Check a param group about to be added (the module settings it gives), then store its values converted.

    Its parameters are in no ``set_params`` group (those are fixed when the optimizer is built), so every
    module resolves one combination for it.  While ``tz.Modular`` adds its first groups the ``set_params``
    groups are not placed yet: rules wait for :func:`check_groups` then.
    """
    from . import settings as S  # settings imports the module base class, which imports this file

    check_optimizer_settings(group, f" in param group {index}")
    given = frozenset(k for k in group if k not in S.FRAMEWORK_KEYS)
    plan = opt.plan
    sig = (-1,) * len(plan.partitioned)
    built = not getattr(opt, "_building", True)
    converted: dict[str, Any] = {}
    for m in plan.leaves:
        resolved = S.resolve(m, group, given, opt.defaults, plan.owners, sig, plan.partitioned)
        checked = validate(m, resolved, f" in param group {index}", rules=built)
        converted.update((k, checked[k]) for k in given if k in resolved and resolved[k] is group[k])
    group.update(converted)  # only once everything passed


def check_groups(opt: Modular, groups: Sequence[Mapping[str, Any]], source: str = "param group") -> None:
    """Check what every module resolves to in every run of parameters of ``groups`` (values and rules).

    A run is a param group and the ``set_params`` groups (of any module) its parameters are in; ``groups`` are
    the optimizer's own or those of a state dict about to be loaded (same layout, checked before).
    """
    from . import settings as S

    plan = opt.plan
    parts = plan.positions
    for gi, group in enumerate(groups):
        check_optimizer_settings(group, f" in {source} {gi}")
        sigs = {tuple(part.get((gi, i), -1) for part in parts) for i in range(len(group["params"]))}
        for sig in sorted(sigs or {(-1,) * len(parts)}):
            own = [
                f"{type(m).__name__}.set_params group {j}" for m, j in zip(plan.partitioned, sig, strict=True) if j >= 0
            ]
            where = f" in {source} {gi}" + (f" with {', '.join(own)}" if own else "")
            for m in plan.leaves:
                validate(
                    m, S.resolve(m, group, plan.given[gi], opt.defaults, plan.owners, sig, plan.partitioned), where
                )


# ---------------------------------------------------------------------------------------------- shared settings
BETAS = Setting(
    pair_of(in_range(0, 1, closed="left"), names="(beta1, beta2)", same_kind=True),
    "Each beta must be in [0, 1), e.g. (0.9, 0.999); Tensor betas must both be Tensors.",
)
EPS = Setting(at_least(0), "Use a small positive value such as 1e-8.")
ALPHA = Setting(real(), "alpha multiplies the step; use a number such as 1.0 (and tz.m.LR for the learning rate).")
MOMENTUM = Setting(at_least(0), "Use a value such as 0.9 (0 disables momentum).")
DAMPENING = Setting(in_range(0, 1), "Use 0 (no dampening) or a fraction such as 0.1.")
FLAG = Setting(boolean())

OPTIMIZER_SCHEMA: Schema = {
    "maximize": Setting(boolean(), "maximize=True ascends the loss (as torch.optim's maximize); the default is False."),
    "state_dtype": Setting(
        Satisfies(
            precision.is_state_dtype,
            "{name} one of 'bfloat16', 'float16', 'float32', 'float64' (or the torch dtype), or None",
            precision.state_dtype_name,
        ),
        "state_dtype is the dtype modules keep their per-parameter state in; None keeps it in the parameter's dtype.",
    ),
    "param_update": Setting(
        one_of(*precision.PARAM_UPDATES),
        "'kahan' or 'stochastic_rounding' keep the small steps that rounding bf16/fp16 parameters would lose; "
        "'plain' (the default) rounds to nearest, as torch.optim.",
    ),
}
"""the optimizer's own settings (``settings.OPTIMIZER_KEYS``), checked in every param group"""
