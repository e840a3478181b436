"""The step plan: what every step needs that follows from the chain and the param groups, built once.

A :class:`Plan` holds two kinds of facts:

* about the **chain** (fixed when the optimizer is built): its modules in execution order, which module owns an
  exposed key (``lr``, ``betas``, ...), which modules partition the parameters (``set_params``, ``Split``),
  which modules read the raw gradient after others changed the update;
* about the **groups** (rebuilt when ``param_groups`` changes, by ``add_param_group``, ``load_state_dict`` or a
  host that assigns a new list): which keys each group set itself, each parameter's partition, and the layouts
  (canonical order, (device, dtype) buckets), which are also rebuilt when a parameter's device or dtype changes.

``StepContext``, ``Wrap``, the schema and the adapters read these through the plan's public attributes and
methods; nothing outside the core reaches into ``Modular``'s private fields.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..foreach import Layout, shard
from . import precision
from . import settings as S

if TYPE_CHECKING:
    from .context import Segment, StepContext
    from .module import Module

Groups = Sequence[dict[str, Any]]


class Plan:
    """The chain's and the groups' facts for stepping (see the module docstring)."""

    def __init__(self, leaves: list[Module], root: Module | None = None) -> None:
        self.leaves = leaves
        """the modules in execution order (nested chains flattened)"""
        self.owners = S.find_owners(leaves)
        """exposed key -> the module that owns it"""
        self.partitioned = [m for m in leaves if m.partitions_params]
        """modules whose parameters fall into partitions (``set_params`` groups, ``Split`` branches)"""
        for i, m in enumerate(self.partitioned):
            m.partition = i
        self.declared = frozenset(k for m in leaves for k in m.defaults)
        """every setting some module declares"""
        self.inert = {key: value for key, value in S.INERT_KEYS.items() if key not in self.owners}
        """exposed keys no module owns, shown in every group at their no-op value"""
        self.creates_update = leaves[0].creates_update
        # keyed by the module's place in the chain (``module.key``), not ``id()``: a deepcopy of the optimizer
        # copies the modules, and the copies must find their entries
        self._raw_after = {m.key: any(later.needs_raw_grad for later in leaves[i + 1 :]) for i, m in enumerate(leaves)}
        self.uniform = [m for m in leaves if m.uniform_settings]
        self._lr_after = {m.key: _search(root, m)[1] for m in leaves} if root is not None else {}
        self._branched = {m.key: m.branches for m in leaves if m.branches}
        # group facts
        self.given: list[frozenset[str]] = []
        """per group, the keys it set itself (not filled in from the defaults)"""
        self.positions: list[dict[tuple[int, int], int]] = []
        """per partitioning module, ``(group, index) -> partition`` of each parameter it places"""
        self.known_groups: list[dict[str, Any]] = []
        self._scratch: dict[tuple[Any, ...], list[Tensor]] = {}
        self.reusable: tuple[Any, Tensor, list[tuple[int, int | None]], list[Tensor]] | None = None
        """``Modular(reuse_evaluation=True)``: the closure, loss, version counters and parameter copy of the last
        step's final evaluation, which the next step may reuse (only with that closure and nothing changed)"""
        self._layout_params: list[Tensor] = []
        self._layout_meta: list[tuple[torch.device, torch.dtype]] = []
        self._layouts: dict[tuple[bool, ...] | None, Layout] = {}

    # ---------------------------------------------------------------- chain facts
    def lr_after(self, module: Module) -> Module | None:
        """The ``LR`` (a ``fusable_scale`` module) that multiplies ``module``'s output: the first one after it in
        the chain that runs it, then in the chains around it, or None.

        For rules whose math needs the lr itself (ASGD's schedule, Adafactor's relative step, Lamb's decay,
        schedule-free's weights): they read it with ``ctx.segments(self, scale_from=plan.lr_after(self))`` and
        hand on an lr-free update that this ``LR`` then scales.  Inside a ``Split`` branch the search stays in
        that branch and continues after the ``Split``.  Found once, when the optimizer is built.
        """
        return self._lr_after.get(module.key)

    def raw_grad_read_after(self, module: Module) -> bool:
        """True when a module after ``module`` reads the raw gradient."""
        return self._raw_after.get(module.key, True)

    # ---------------------------------------------------------------- group facts
    def adopt(self, groups: Groups, given: list[frozenset[str]]) -> None:
        """Take ``groups`` (and the keys each set itself) as the optimizer's groups."""
        self.given = list(given)
        self.positions = partition_positions(self.partitioned, groups)
        self.known_groups = list(groups)
        self._layout_params = []  # the next step builds a new layout
        self._scratch = {}
        self.reusable = None  # other groups, other parameters: nothing to reuse

    def unchanged(self, groups: Groups) -> bool:
        """True when ``groups`` are the very dicts the plan was built for."""
        known = self.known_groups
        return len(groups) == len(known) and all(map(operator.is_, groups, known))

    @staticmethod
    def params(groups: Groups) -> list[Tensor]:
        """Every parameter of ``groups``, in group order."""
        return [p for g in groups for p in g["params"]]

    def layout(self, groups: Groups, include_fn: Callable[[Tensor], bool]) -> Layout | None:
        """The layout of the parameters ``include_fn`` selects (None when it selects none), cached per selection
        and rebuilt when a parameter was replaced or moved to another device or dtype."""
        params = self.params(groups)
        cached = self._layout_params
        meta = [(p.device, p.dtype) for p in params]
        if len(params) != len(cached) or not all(map(operator.is_, params, cached)) or meta != self._layout_meta:
            self._layout_params, self._layout_meta, self._layouts = params, meta, {}
        include = list(map(include_fn, params))
        if all(include):
            key = None
        elif not any(include):
            return None
        else:
            key = tuple(include)
        layout = self._layouts.get(key)
        if layout is None:
            layout = Layout([g["params"] for g in groups], self.positions, None if key is None else include)
            # sparse gradients come from the model (nn.Embedding(sparse=True)): checked once per layout, not per step
            _check_dense([g for g in layout.grads() if g is not None])
            _check_sharded(self.leaves, layout.originals)
            self._layouts[key] = layout
        return layout

    def resolve(self, module: Module, groups: Groups, defaults: dict[str, Any], group: int, sig: tuple[int, ...]):
        """The settings of ``module`` for the parameters of ``group`` in the partitions ``sig``."""
        return S.resolve(module, groups[group], self.given[group], defaults, self.owners, sig, self.partitioned)

    def scratch(self, key: tuple[Any, ...], like: Sequence[Tensor]) -> list[Tensor]:
        """Reusable buffers shaped like ``like`` (see :meth:`Segment.scratch`), kept per ``key``."""
        buffers = self._scratch.get(key)
        if (
            buffers is None
            or len(buffers) != len(like)
            or any(
                b.shape != t.shape or b.dtype != t.dtype or b.device != t.device
                for b, t in zip(buffers, like, strict=True)
            )
        ):
            buffers = self._scratch[key] = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in like]
        return buffers

    def kept_scratch(self) -> list[Tensor]:
        """The buffers :meth:`scratch` keeps between steps: memory the optimizer holds besides ``opt.state``
        (not saved; dropped when the groups change)."""
        return [t for buffers in self._scratch.values() for t in buffers]

    @staticmethod
    def run_keys(layout: Layout, start: int, stop: int) -> list[str]:
        """Names of the runs overlapping ``[start, stop)``: the param group, and the partitions it falls in."""
        keys = []
        for run in layout.runs:
            if run.start < stop and start < run.stop:
                parts = (
                    [str(run.group), *(str(i) for i in run.sig)] if any(i >= 0 for i in run.sig) else [str(run.group)]
                )
                key = "/".join(parts)
                if key not in keys:
                    keys.append(key)
        return keys

    # ---------------------------------------------------------------- per step
    def segments(
        self, ctx: StepContext, module: Module, fused: Module | None, groups: Groups, defaults: dict[str, Any]
    ) -> list[Segment]:
        """The segments of ``module`` in this step; ``fused`` is the module whose ``lr`` becomes ``seg.scale``.

        Runs that share device, dtype, settings, scale and step count are merged into one segment; a module
        inside a ``Split`` branch gets only the runs of its branch.
        """
        from .context import Segment

        out: list[Segment] = []
        prev: Segment | None = None
        prev_bucket = -1
        counts = self.step_counts(ctx, module) if module.counts_steps else None
        branches = module.branches
        for run, prec in zip(ctx.layout.runs, ctx.precisions, strict=True):
            if branches and any(run.sig[split.partition] != b for split, b in branches):  # type: ignore[index]
                continue
            settings = self.resolve(module, groups, defaults, run.group, run.sig)
            scale = 1.0 if fused is None else self.resolve(fused, groups, defaults, run.group, run.sig)["lr"]
            for start, stop, step in _pieces(run.start, run.stop, counts):
                if (
                    prev is not None
                    and prev.stop == start
                    and prev_bucket == run.bucket  # same device and dtype, and shards or plain tensors alike
                    and prev.device == run.device
                    and prev.dtype == run.dtype
                    and prev._step == step
                    and S.same_value(prev.scale, scale)
                    and S.same_settings(prev.settings, settings)
                    and prev.precision == prec
                ):
                    prev.stop = stop
                    if prev.groups[-1] != run.group:
                        prev.groups.append(run.group)
                else:
                    prev = Segment(
                        ctx, module, start, stop, run.device, run.dtype, settings, scale, run.group, step, prec
                    )
                    out.append(prev)
                prev_bucket = run.bucket
        if ctx.low_precision:
            out = [piece for seg in out for piece in _narrow_pieces(ctx, seg)]
        return out

    def check_uniform(self, groups: Groups, defaults: dict[str, Any], layout: Layout | None = None) -> None:
        """Raise, before anything changes, if a module that needs one set of settings sees several."""
        if not self.uniform:
            return
        if layout is None:
            layout = Layout([g["params"] for g in groups], self.positions)
        for m in self.uniform:
            first: tuple[dict[str, Any], int] | None = None
            for run in layout.runs:
                settings = self.resolve(m, groups, defaults, run.group, run.sig)
                if first is None:
                    first = (settings, run.group)
                elif not S.same_settings(first[0], settings):
                    uniform_settings_error(m, first[0], settings, first[1], run.group)

    def step_counts(self, ctx: StepContext, module: Module) -> list[int]:
        """Each parameter's step count for this step (its saved count + 1), read once per step and module."""
        key = module.key
        assert key is not None
        counts = ctx.step_counts.get(key)
        if counts is None:
            states = ctx.module_states(key, create=False)
            has = functools.partial(operator.is_not, None)
            kept: list[Any] | None = None
            if all(map(has, states)):
                kept = list(map(dict.get, states, itertools.repeat("step")))  # type: ignore[arg-type]
            if kept is None or not all(map(has, kept)):  # a parameter's first step
                counts = [(ms.get("step", 0) if ms else 0) + 1 for ms in states]
            else:
                counts = [t + 1 for t in kept]
            ctx.step_counts[key] = counts
        return counts

    def commit(self, ctx: StepContext) -> None:
        """Once the whole chain has succeeded: the deferred global-state writes and the step counts (of the
        parameters each module was applied to: a module in a ``Split`` branch counts only its branch's)."""
        for module, key, value in ctx.deferred_global_state:
            module.global_state[key] = value
        for (module, name, run), new in ctx.pending_scalars.items():
            history = module.global_state.setdefault(name, {})
            # lists compared with ==, not sets: torch.compile would specialise on the hashed step counts
            advanced_from = [t - 1 for t, _ in new]
            history[run] = [e for e in history.get(run, []) if e[0] not in advanced_from] + new
        for key, counts in ctx.step_counts.items():
            branches = self._branched.get(key)
            if not branches:
                for ms, t in zip(ctx.module_states(key), counts, strict=True):
                    ms["step"] = t  # type: ignore[index]
                continue
            for r in ctx.layout.runs:
                if all(r.sig[split.partition] == b for split, b in branches):  # type: ignore[index]
                    states = ctx.module_states(key, r.start, r.stop)
                    for ms, t in zip(states, counts[r.start : r.stop], strict=True):
                        ms["step"] = t  # type: ignore[index]


def uniform_settings_error(module: Module, first: dict[str, Any], other: dict[str, Any], ga: int, gb: int) -> None:
    diff = {k: (first[k], other[k]) for k in first if not S.same_value(first[k], other[k])}
    raise ValueError(
        f"{type(module).__name__} treats all parameters as one vector, so its settings must be "
        f"the same in every param group, but they differ: {diff} (group {ga} vs group "
        f"{gb}, including set_params groups). Set them on the module instead of per group."
    )


def partition_positions(modules: list[Module], groups: Groups) -> list[dict[tuple[int, int], int]]:
    """Per partitioning module, the partition of each parameter it places: ``(group, index) -> partition``."""
    out = []
    for m in modules:
        positions: dict[tuple[int, int], int] = {}
        for gi, g in enumerate(groups):
            for i, p in enumerate(g["params"]):
                part = m.partition_of(p, g)
                if part >= 0:
                    positions[(gi, i)] = part
        m.check_partitions(positions, groups)
        out.append(positions)
    return out


def _check_dense(grads: list[Tensor]) -> None:
    if any(g.layout is not torch.strided for g in grads):
        shapes = [tuple(g.shape) for g in grads if g.layout is not torch.strided]
        raise RuntimeError(
            f"parameters of shape {shapes} have sparse gradients, but torchzero modules work on dense tensors. "
            "Use dense gradients (e.g. nn.Embedding(..., sparse=False)), or give those parameters to "
            "torch.optim.SparseAdam. Nothing was changed."
        )


def _check_sharded(leaves: list[Module], params: list[Tensor]) -> None:
    """Refuse FSDP2-sharded (DTensor) parameters for modules that declare ``supports_sharding = False``."""
    refused = [m for m in leaves if not m.supports_sharding]
    if refused and shard.any_dtensor(params):
        reasons = "; ".join(f"{type(m).__name__}: {m.sharding_note}" for m in refused)
        raise NotImplementedError(
            f"{', '.join(type(m).__name__ for m in refused)} cannot run on parameters sharded by FSDP2 (DTensors). "
            f"{reasons}. Train these without fully_shard (DDP), or, for matrix preconditioners, send the matrices "
            "to one that gathers them (tz.m.Muon, tz.m.Shampoo, tz.m.SOAP, tz.m.PSGDKron) with tz.m.Split. Nothing was changed."
        )


def _narrow_pieces(ctx: StepContext, seg: Segment) -> list[Segment]:
    """``seg`` cut into pieces of at most ``precision.CHUNK`` elements when its state is stored narrower than it
    is computed (the module's temporaries then cover one piece at a time), else ``[seg]``."""
    from .context import Segment

    prec = seg.precision
    if prec.storage is None or prec.storage == prec.compute:
        return [seg]
    ranges = precision.pieces([p.numel() for p in ctx.params[seg.start : seg.stop]], precision.CHUNK)
    if len(ranges) == 1:
        return [seg]
    out = []
    for a, b in ranges:
        start, stop = seg.start + a, seg.start + b
        groups = [r.group for r in ctx.layout.runs if r.start < stop and start < r.stop]
        piece = Segment(
            ctx, seg.module, start, stop, seg.device, seg.dtype, seg.settings, seg.scale, groups[0], seg._step, prec
        )
        piece.groups = list(dict.fromkeys(groups))
        out.append(piece)
    return out


def _pieces(start: int, stop: int, counts: list[int] | None) -> list[tuple[int, int, int | None]]:
    """Split ``[start, stop)`` where the step count changes (one piece when counts are not tracked)."""
    if counts is None:
        return [(start, stop, None)]
    if min(counts[start:stop]) == max(counts[start:stop]):  # the usual case, checked without a Python loop
        return [(start, stop, counts[start])]
    pieces: list[tuple[int, int, int | None]] = []
    begin = start
    for i in range(start + 1, stop):
        if counts[i] != counts[begin]:
            pieces.append((begin, i, counts[begin]))
            begin = i
    pieces.append((begin, stop, counts[begin]))
    return pieces


def _search(node: Module, target: Module) -> tuple[bool, Module | None]:
    """``(found, lr)``: whether ``target`` is under ``node``, and the first ``fusable_scale`` module after it."""
    from .module import Chain

    if node is target:
        return True, None
    children = node.children()
    for i, child in enumerate(children):
        found, lr = _search(child, target)
        if not found:
            continue
        if lr is None and isinstance(node, Chain):  # sequential: the modules after the child come next
            lr = next((m for c in children[i + 1 :] for m in _sequential(c) if m.fusable_scale), None)
        return True, lr
    return False, None


def _sequential(node: Module) -> list[Module]:
    """The modules of ``node`` that every parameter goes through (not the branches of a ``Split``)."""
    from .module import Chain

    if isinstance(node, Chain):
        return [m for c in node.children() for m in _sequential(c)]
    return [node] if not node.children() else []
