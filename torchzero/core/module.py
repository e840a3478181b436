"""Modules: the links of a torchzero chain.

A :class:`Module` receives the :class:`~torchzero.core.context.StepContext` of a step, transforms
``ctx.update`` (initially the gradient) in place, keeps its own state, and hands the update on.
Only :class:`~torchzero.Modular` subtracts the final update from the parameters.

Subclass :class:`Transform` for elementwise rules: it calls :meth:`Transform.apply` once per
segment, a slice of parameters on one device with one dtype and one set of resolved settings.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from .schema import Constraint, Rule, Setting, validate

if TYPE_CHECKING:
    from .context import Segment, StepContext


class Module:
    """Base class of every module.

    Capabilities are declared, never guessed:

    * ``needs_closure``: the module calls ``ctx.evaluate`` and cannot work from ``.grad`` alone.
    * ``creates_update``: the module builds the update from scratch (ignoring the incoming one), so it
      must come first in the chain.
    * ``needs_raw_grad``: the module reads ``ctx.grad`` after earlier modules changed the update; the
      chain then keeps the gradient separate from the update (one copy per step) if a module before it
      ``modifies_update_inplace``.
    * ``modifies_update_inplace``: the module may write into the incoming update tensors (the default).
      A module that always hands on new tensors sets it to False, which spares that copy.
    * ``compilable``: ``torch.compile`` can trace the module's step into the step's one graph; a module that
      must run eagerly (a wrapped torch optimizer) sets it to False and ``tz.Modular(..., compile=True)`` refuses it.
    * ``uniform_settings``: the module treats all parameters as one vector (a line search, L-BFGS, finite
      differences) and reads its settings with ``ctx.settings``, so they must be equal in every param
      group; the optimizer checks this when it is built, when a group is added and before each step.
    * ``keeps_state``: the module keeps tensors per parameter (moments, buffers) through ``seg.state`` /
      ``ctx.state``, which the optimizer's ``state_dtype`` setting stores in that dtype.  A chain none of whose
      modules declares it refuses ``state_dtype`` (it would change nothing).  ``exact_state`` names the state
      that is kept in the dtype the module computes in whatever ``state_dtype`` says: copies of the parameters
      and shared scalars, whose rounding would move the parameters or the step size, unlike a moment's, and
      matrix preconditioners whose roots or eigenbases bf16 would spoil (an entry ending in ``*`` is a prefix).
    * ``writes_params``: the module moves the parameters itself (a wrapped torch optimizer) and keeps state the
      core does not create, so the optimizer refuses ``state_dtype`` and compensated ``param_update`` with it
      (the move is rounded to the parameters' dtype before the sink could see what was lost).
    * ``counts_steps``: the module needs each parameter's step count (bias corrections).  The optimizer
      keeps it per parameter in ``state[p][key]["step"]`` (like torch.optim) and hands it to the module
      as ``seg.step``; segments never mix parameters with different counts, so a parameter that joins
      later starts from step 1, as in torch.
    * ``full_matrices``: the module's math needs each tensor whole (a matrix function: orthogonalisation,
      Kronecker preconditioners), and it gets them through :meth:`StepContext.map_full`, which gathers the
      shards of FSDP2 parameters on one owner rank per tensor and scatters the result back.
    * ``supports_sharding``: the module runs on FSDP2-sharded (DTensor) parameters (the default).  A module
      that sets it to False is refused, with an error naming it and giving its ``sharding_note``, when the
      parameters are DTensors.

    Settings are declared with their allowed values in ``schema`` (and constraints between them in
    ``cross_checks``, see :mod:`torchzero.core.schema`); they are checked when the module is built, in
    :meth:`set_params`, and by the optimizer when groups are added or loaded.

    Args:
        defaults: the module's settings and their default values.  Every key can be overridden per
            param group, either in the groups of :class:`~torchzero.Modular` (applies to every module
            that declares the key) or in :meth:`set_params` (applies to this module only).
        options: constructor arguments that are not per-group settings (``ord``, ``fused``, ...), checked
            against the schema with the defaults but not stored.
    """

    per_segment: ClassVar[bool] = False
    """the module's step touches only its own segments (``ctx.segments(self)``), never the update as a whole, so
    it can run on a subset of the parameters (a ``Split`` branch)"""
    fusable_scale: ClassVar[bool] = False
    """the module multiplies the update by its per-group ``lr`` and nothing else (``LR``), so the stage before it
    may apply that scale itself (see :attr:`Transform.fuses_lr`)"""
    needs_closure: ClassVar[bool] = False
    creates_update: ClassVar[bool] = False
    needs_raw_grad: ClassVar[bool] = False
    modifies_update_inplace: ClassVar[bool] = True
    counts_steps: ClassVar[bool] = False
    keeps_state: ClassVar[bool] = False
    exact_state: ClassVar[frozenset[str]] = frozenset()
    writes_params: ClassVar[bool] = False
    uniform_settings: ClassVar[bool] = False
    full_matrices: ClassVar[bool] = False
    """the module computes on whole tensors through ``ctx.map_full`` (matrix functions); see the class docstring"""
    supports_sharding: ClassVar[bool] = True
    sharding_note: ClassVar[str] = ""
    """why a module with ``supports_sharding = False`` cannot run on FSDP2 shards (shown in the error)"""
    compilable: ClassVar[bool] = True
    """the module's step can be traced into one graph by ``torch.compile`` (``tz.Modular(..., compile=True)``);
    False for one that must run eagerly (a wrapped torch optimizer)"""
    schema: Mapping[str, Setting | Constraint] = {}
    """allowed values of each setting (and constructor option) by key"""
    cross_checks: Sequence[Rule] = ()
    """constraints between settings, checked on the combination each run of parameters resolves to"""

    def __init__(self, defaults: dict[str, Any] | None = None, options: dict[str, Any] | None = None) -> None:
        defaults = dict(defaults or {})
        checked = validate(self, {**(options or {}), **defaults})
        self.defaults: dict[str, Any] = {k: checked[k] for k in defaults}
        self.own_groups: list[dict[str, Any]] | None = None
        """groups given to :meth:`set_params`, or None"""
        self._own_index: dict[int, int] = {}
        self.global_state: dict[str, Any] = {}
        """per-module state that is not per parameter (counters, scalars); saved in ``state_dict``"""
        self.key: str | None = None
        """position in the chain (``"2"``, ``"1.0"``), set when a Modular binds the module"""
        self.partition: int | None = None
        """index of this module's partitions (``set_params`` groups) in the layout signature, set when bound"""
        self.branches: list[tuple[Module, int]] = []
        """``(split, branch)`` for each ``Split`` this module sits in: it is applied to that branch's parameters"""

    # ---------------------------------------------------------------- settings
    def set_params(self, param_groups: Iterable[Any]) -> Module:
        """Give this module its own param groups; their settings win over the optimizer's groups.

        ``param_groups`` is a list of dicts with ``"params"`` and settings, like torch.optim param groups.
        Parameters not in any group use the optimizer's settings.  A key this module declares applies to
        this module only.  A key it does not declare but another module of the chain does (say ``lr``, which
        only ``LR`` has) applies to the listed parameters as if it were in the optimizer's param group for
        them; a key no module declares is an error when the optimizer is built.  Returns the module, so it
        can be used inline.
        """
        groups = list(param_groups)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        checked = []
        for i, group in enumerate(groups):
            if not isinstance(group, dict) or "params" not in group:
                raise TypeError(f"set_params expects param-group dicts with a 'params' key; group {i} is {group!r}")
            params = group["params"]
            params = [params] if isinstance(params, Tensor) else list(params)
            params = [p[1] if isinstance(p, tuple) else p for p in params]
            own = {k: v for k, v in group.items() if k in self.defaults}
            checked.append({**group, **validate(self, own, f" in set_params group {i}"), "params": params})
        self.own_groups = checked
        self._own_index = {id(p): mg for mg, group in enumerate(checked) for p in group["params"]}
        return self

    @property
    def partitions_params(self) -> bool:
        """True when the module places parameters in partitions of its own (its ``set_params`` groups)."""
        return self.own_groups is not None

    def partition_of(self, param: Tensor, group: dict[str, Any]) -> int:
        """The partition of ``param`` (of the optimizer's ``group``): its ``set_params`` group, or -1."""
        return self._own_index.get(id(param), -1)

    def check_partitions(self, positions: dict[tuple[int, int], int], groups: Any) -> None:
        """Raise if a ``set_params`` parameter is not among the optimizer's parameters."""
        if len(positions) == len(self._own_index):
            return
        placed = {id(p) for g in groups for p in g["params"]}
        for group in self.own_groups or []:
            for p in group["params"]:
                if id(p) not in placed:
                    raise ValueError(
                        f"{type(self).__name__}.set_params was given a parameter of shape {tuple(p.shape)} that is "
                        "not among the optimizer's parameters; set_params groups must be subsets of them."
                    )

    # ---------------------------------------------------------------- structure
    def children(self) -> list[Module]:
        """Sub-modules (a chain's links); empty for leaf modules."""
        return []

    def walk(self) -> Iterator[Module]:
        """This module and every module under it, in execution order."""
        yield self
        for child in self.children():
            yield from child.walk()

    @property
    def requires_closure(self) -> bool:
        return self.needs_closure or any(c.requires_closure for c in self.children())

    # ---------------------------------------------------------------- stepping
    def step(self, ctx: StepContext) -> None:
        """Transform ``ctx.update`` in place (or replace it)."""
        raise NotImplementedError(f"{type(self).__name__} must implement step(ctx)")

    def after_step(self, ctx: StepContext) -> None:
        """Called after the parameters were updated (for example to step a scheduler)."""

    # ---------------------------------------------------------------- state
    def get_global_state(self) -> dict[str, Any]:
        return copy.deepcopy(self.global_state)

    def set_global_state(self, state: dict[str, Any]) -> None:
        restored = {}
        for k, v in state.items():
            old = self.global_state.get(k)
            # Accelerate and some loaders turn Python numbers into tensors; give them back their type
            if isinstance(old, (int, float)) and isinstance(v, Tensor) and v.numel() == 1:
                v = type(old)(v.item())
            elif isinstance(old, int) and isinstance(v, float) and v.is_integer():
                v = int(v)
            restored[k] = copy.deepcopy(v)
        self.global_state = restored

    # ---------------------------------------------------------------- display
    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())

    def __repr__(self) -> str:
        own = f", set_params={len(self.own_groups)} groups" if self.own_groups else ""
        return f"{type(self).__name__}({self.extra_repr()}{own})"

    # torch.optim.Optimizer defines pickling hooks that modules mixing it in must not inherit
    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class Transform(Module):
    """A module whose rule is applied per segment (same device, dtype and settings).

    Subclasses implement :meth:`apply`.  A transform that sets ``fuses_lr = True`` also accepts
    ``seg.scale``: when it is directly followed by a module that declares ``fusable_scale`` (:class:`~torchzero.m.LR`),
    the chain runs the pair as one stage and passes the learning rate as ``seg.scale`` (one pass instead of two).
    Such a transform hands its result to the write sink (``seg.emit(direction, scale)`` and friends), which
    writes the parameters when the stage is the chain's last.
    """

    fuses_lr: ClassVar[bool] = False
    per_segment = True

    def step(self, ctx: StepContext) -> None:
        for seg in ctx.segments(self):
            self.apply(ctx, seg)
            ctx.flush_state(self)  # low-precision state: one segment's temporaries alive at a time

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement apply(ctx, seg)")


def flatten_modules(modules: Iterable[Any]) -> list[Module]:
    out: list[Module] = []
    for m in modules:
        if isinstance(m, Module):
            out.append(m)
        elif isinstance(m, (list, tuple)):
            out.append(Chain(*m))
        else:
            raise TypeError(
                f"expected a torchzero module (e.g. tz.m.Adam()) or a list of modules, got {m!r}. "
                "Did you pass the class instead of an instance, e.g. tz.m.Adam instead of tz.m.Adam()?"
            )
    return out


class Chain(Module):
    """Modules applied one after another; lists inside ``tz.Modular(...)`` become chains too."""

    modifies_update_inplace = False  # its stages copy the update themselves where they need to

    def __init__(self, *modules: Any) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (list, tuple)):
            modules = tuple(modules[0])
        self.modules: list[Module] = flatten_modules(modules)
        self.fuse = True
        self._stages: list[tuple[Module, Module | None]] | None = None

    def children(self) -> list[Module]:
        return self.modules

    def stages(self) -> list[tuple[Module, Module | None]]:
        """The modules grouped into stages: a transform that ``fuses_lr`` and a ``fusable_scale`` module right
        after it (``LR``) are one."""
        if self._stages is None:
            stages: list[tuple[Module, Module | None]] = []
            i = 0
            while i < len(self.modules):
                m = self.modules[i]
                nxt = self.modules[i + 1] if i + 1 < len(self.modules) else None
                if self.fuse and getattr(m, "fuses_lr", False) and nxt is not None and nxt.fusable_scale:
                    stages.append((m, nxt))
                    i += 2
                else:
                    stages.append((m, None))
                    i += 1
            self._stages = stages
        return self._stages

    def step(self, ctx: StepContext) -> None:
        stages = self.stages()
        last = ctx.is_last
        for i, (module, fused) in enumerate(stages):
            is_last = last and i == len(stages) - 1
            ctx.run_stage(module, fused, last=is_last)
            if ctx.params_written and not is_last:
                raise RuntimeError(f"{type(module).__name__} wrote the parameters but is not the last stage")

    def extra_repr(self) -> str:
        return ", ".join(repr(m) for m in self.modules)
