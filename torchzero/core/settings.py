"""The one settings mechanism.

Per-group values come from ``param_groups`` (plain dicts in torch's format).  For a module and a run of
parameters, the value of a setting is, in order of precedence:

1. the module's own groups from :meth:`Module.set_params`, if the parameter is in one of them;
2. keys in *another* module's ``set_params`` groups that that module does not declare (``lr`` given to
   ``Adam().set_params``): they act like the optimizer's param group for the listed parameters;
3. the optimizer's param group, if the module declares the key (see *exposed keys* below);
4. the module's constructor value.

**Exposed keys.**  ``lr`` (owned by the first ``LR`` module), ``betas``, ``momentum`` and ``weight_decay``
(owned by the first module that has them) are also put into ``optimizer.defaults`` and every group, because
torch schedulers and hosts need them there (``OneCycleLR(cycle_momentum=True)`` looks for ``betas`` or
``momentum``; Lightning's ``LearningRateMonitor(log_weight_decay=True)`` reads ``weight_decay``).
Such a key always applies to its owner.  It applies to other modules that declare it only when the
user gave it in that group or something (a scheduler) changed it from the default, so a default
filled in by torch never leaks from one module into another.

**Inert keys.**  A chain without a weight-decay module still shows ``weight_decay=0`` in its groups, as
torch's optimizers do, so monitors can read it.  No module uses it, so any other value (given in a group or
written later by a scheduler or by hand) is refused with an error instead of being silently ignored.

**Optimizer keys.**  ``maximize`` is a setting of the optimizer itself, not of a module: it is in every group
(``False`` unless given), as in torch's optimizers, may differ per group and change between steps
(``optimizer.defaults`` keeps only the chain's exposed keys).  The core reads it where it collects the gradient and calls the closure; it never reaches a
module, even one with a setting of the same name (``Wrap(torch.optim.SGD, maximize=True)`` keeps its own).

**Low-precision keys.**  ``state_dtype`` and ``param_update`` (see :mod:`torchzero.core.precision`) are
settings of the optimizer too, per group, read by the core where state is created and parameters are written.
Unlike ``maximize`` they are in a group only when given (in the group, or for all groups to ``tz.Modular``):
absent, the default applies (state in the parameter's dtype, plain writes).

**Metadata keys.**  Keys that torch, its schedulers, SWA and hosts keep in groups (``initial_lr``,
``swa_lr``, Lightning's ``name``, ...) are accepted and never reach a module; any other key that no module
declares is a misspelt setting and is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor

from . import precision
from .module import Module
from .schema import check_optimizer_settings

EXPOSED_KEYS = ("lr", "betas", "momentum", "weight_decay")
"""keys that ``optimizer.defaults`` and every group carry, for torch schedulers"""

FRAMEWORK_KEYS = frozenset(
    {
        "params",
        "param_names",
        "differentiable",
        "initial_lr",
        "max_lr",
        "min_lr",
        "base_lr",
        "base_momentum",
        "max_momentum",
        "swa_lr",  # torch.optim.swa_utils.SWALR
        "name",  # Lightning's LearningRateMonitor names its logged keys after it; users label groups with it
    }
)
"""keys torch, its schedulers and hosts keep in groups; never an error, never a module setting"""

INERT_KEYS: dict[str, Any] = {"weight_decay": 0}  # torch.optim.SGD/Adam default to the int 0
"""exposed keys that every group carries even when no module of the chain uses them, at this (no-op) value"""


OPTIMIZER_KEYS: dict[str, Any] = {"maximize": False}
"""settings of the optimizer itself, in every group (see :func:`closure_negated`)"""

PRECISION_KEYS: dict[str, Any] = dict(precision.KEYS)
"""settings of the optimizer itself, in a group only when given (see :mod:`torchzero.core.precision`)"""


def same_value(a: Any, b: Any) -> bool:
    """Equality that never syncs with a device: tensors compare by identity."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return a is b
    if not isinstance(a, tuple) and a is b:  # dynamo cannot trace `is` between two tuples (Lion's betas)
        return True
    try:
        return bool(a == b)
    except Exception:  # values with odd __eq__
        return False


def same_settings(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a.keys() == b.keys() and all(same_value(v, b[k]) for k, v in a.items())


def find_owners(leaves: Iterable[Module]) -> dict[str, Module]:
    owners: dict[str, Module] = {}
    for m in leaves:
        for key in EXPOSED_KEYS:
            if key in m.defaults and key not in owners:
                owners[key] = m
    return owners


def check_group_keys(group: Mapping[str, Any], index: int, leaves: list[Module]) -> None:
    """Raise if a group sets a key that no module of the chain declares."""
    declared = {k for m in leaves for k in m.defaults}
    unknown = [
        k
        for k in group
        if k not in declared
        and k not in FRAMEWORK_KEYS
        and k not in OPTIMIZER_KEYS
        and k not in PRECISION_KEYS
        and not (k in INERT_KEYS and same_value(group[k], INERT_KEYS[k]))
    ]
    if not unknown:
        return
    by_module = "; ".join(f"{type(m).__name__}: {', '.join(m.defaults) or '(none)'}" for m in leaves)
    hint = ""
    if "lr" in unknown:
        hint = " The chain has no learning rate: add tz.m.LR(lr) to it (usually after the update rule)."
    elif "weight_decay" in unknown:
        hint = (
            " Weight decay is a module here: add tz.m.WeightDecay(...) to the chain (the groups of a chain without "
            "one show weight_decay=0.0, and only that value is accepted)."
        )
    raise KeyError(
        f"param group {index} sets {unknown}, but no module in this chain has a setting of that name, so "
        f"it would be ignored. Settings by module: {by_module}.{hint}"
    )


def check_own_group_keys(module: Module, leaves: list[Module]) -> None:
    """Raise if ``module.set_params`` groups set a key no module of the chain declares."""
    declared = {k for m in leaves for k in m.defaults}
    for i, group in enumerate(module.own_groups or []):
        unknown = sorted(k for k in group if k != "params" and k not in declared)
        if unknown:
            raise KeyError(
                f"{type(module).__name__}.set_params: group {i} sets {unknown}, but no module in this chain has a "
                f"setting of that name. {type(module).__name__}'s settings are {sorted(module.defaults)}."
            )


def resolve(
    module: Module,
    group: Mapping[str, Any],
    given: frozenset[str],
    defaults: Mapping[str, Any],
    owners: Mapping[str, Module],
    sig: tuple[int, ...],
    partitioned: Iterable[Module] = (),
) -> dict[str, Any]:
    """Settings of ``module`` for one run of parameters (see the module docstring for the rules)."""
    settings = dict(module.defaults)
    for key in settings:
        if key in group and key not in OPTIMIZER_KEYS and key not in PRECISION_KEYS:
            owner = owners.get(key)
            if owner is None or owner is module or key in given or not same_value(group[key], defaults[key]):
                settings[key] = group[key]
    for other in partitioned:  # keys put in another module's set_params groups that it does not declare
        idx = sig[other.partition] if other is not module and other.partition is not None else -1
        if idx >= 0 and other.own_groups is not None:  # a Split's partitions carry no settings
            for key, value in other.own_groups[idx].items():
                if key in settings and key not in other.defaults:
                    settings[key] = value
    if module.partition is not None and module.own_groups is not None:
        idx = sig[module.partition]
        if idx >= 0:
            for key, value in module.own_groups[idx].items():
                if key != "params":
                    settings[key] = value
    return settings


def check_inert_keys(groups: Iterable[Mapping[str, Any]], declared: Iterable[str]) -> None:
    """Raise if a group holds a value for an inert key that no module of the chain uses (see above)."""
    declared = set(declared)
    for i, group in enumerate(groups):
        for key, inert in INERT_KEYS.items():
            if key not in declared and key in group and not same_value(group[key], inert):
                raise RuntimeError(
                    f"param group {i} has {key}={group[key]!r}, but no module of this chain uses {key!r} (the "
                    f"groups show {key}={inert!r} only so that monitors can read it), so it would be silently "
                    "ignored. Add tz.m.WeightDecay(...) to the chain, or leave the value at "
                    f"{inert!r}. Nothing was changed."
                )


def closure_negated(groups: Sequence[Mapping[str, Any]], needs_closure: bool) -> bool:
    """Check every group's ``maximize`` (once per step, before anything changes); True when all maximize.

    The gradient is negated per group (:meth:`StepContext.collect_grad`), but a closure is one objective: the
    loss it returns is negated only when every group maximizes, and a chain that needs the closure (line
    searches, L-BFGS, finite differences) refuses groups that disagree.
    """
    flags = []
    for i, group in enumerate(groups):
        check_optimizer_settings(group, f" in param group {i}")
        flags.append(group.get("maximize", False))
    if needs_closure and len(set(flags)) > 1:
        on = [i for i, f in enumerate(flags) if f]
        off = [i for i, f in enumerate(flags) if not f]
        raise ValueError(
            f"param groups {on} have maximize=True but groups {off} have maximize=False, and this chain calls the "
            "closure (a line search, L-BFGS, finite differences, ...), whose loss is one objective for all "
            "parameters: it cannot be maximized for some and minimized for others. Give every group the same "
            "maximize. Nothing was changed."
        )
    return bool(flags) and all(flags)
