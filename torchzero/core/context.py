"""The object carried through the chain during one ``step``."""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..foreach import Layout, ops, policy, rounding, shard
from . import precision, sink
from .closure import Closure, check_finite
from .precision import RunPrecision

if TYPE_CHECKING:
    from .modular import Modular
    from .module import Module

StateInit = Callable[[Tensor], Tensor]


def metric_label(module: Module) -> str:
    """How a module is named in ``opt.metrics()``: its key in the chain and its class, e.g. ``"0.LBFGS"``."""
    return f"{module.key}.{type(module).__name__}"


def _tags(whats: list[tuple[Any, ...]], fields: list[int]) -> list[str]:
    """Names for segments ``(device, dtype, step, start)`` made of the ``fields`` (0-2) that differ between them."""
    out = []
    for device, dtype, step, _ in whats:
        parts = (device.replace(":", ""), dtype, f"step{step}")
        out.append(".".join(parts[i] for i in fields))
    return out


_is_none = functools.partial(operator.is_, None)


def _exact(module: Module, name: str) -> bool:
    """``name`` is in ``module.exact_state`` (an entry ending in ``*`` is a prefix: ``"pre_cond_*"``)."""
    return any(name == e or (e.endswith("*") and name.startswith(e[:-1])) for e in module.exact_state)


class Segment:
    """A contiguous slice of the step's tensors: one device, one dtype, one set of settings.

    ``settings`` are the resolved settings of the module being applied; ``scale`` is the learning rate
    of a fused :class:`~torchzero.m.LR` (1.0 when nothing is fused); ``step`` is the step count of every
    parameter in the segment, counting this step, for modules that declare ``counts_steps`` (else None).
    """

    __slots__ = (
        "ctx", "module", "start", "stop", "device", "dtype", "settings", "scale", "groups", "_step", "precision"
    )  # fmt: skip

    def __init__(
        self,
        ctx: StepContext,
        module: Module,
        start: int,
        stop: int,
        device: torch.device,
        dtype: torch.dtype,
        settings: dict[str, Any],
        scale: float,
        group: int,
        step: int | None = None,
        precision: RunPrecision | None = None,
    ) -> None:
        self.ctx = ctx
        self._step = step
        self.precision = precision or RunPrecision(None, dtype, "plain")
        """the state dtype and parameter writes of the segment's param group (see :mod:`torchzero.core.precision`)"""
        self.module = module
        self.start = start
        self.stop = stop
        self.device = device
        self.dtype = dtype
        self.settings = settings
        self.scale = scale
        self.groups = [group]

    @property
    def step(self) -> int:
        """The step count of the segment's parameters, counting this step (``counts_steps`` modules only)."""
        if self._step is None:
            raise RuntimeError(
                f"{type(self.module).__name__} reads seg.step, so it must declare `counts_steps = True` "
                "(the optimizer then keeps a step count per parameter)"
            )
        return self._step

    @property
    def update(self) -> list[Tensor]:
        return self.ctx.update[self.start : self.stop]

    @update.setter
    def update(self, tensors: Sequence[Tensor]) -> None:
        self.ctx.update[self.start : self.stop] = list(tensors)

    @property
    def params(self) -> list[Tensor]:
        return self.ctx.params[self.start : self.stop]

    @property
    def grad(self) -> list[Tensor]:
        return self.ctx.get_grad()[self.start : self.stop]

    def state(self, *names: str, init: StateInit | dict[str, StateInit] | None = None) -> list[list[Tensor]]:
        """Per-parameter state tensors of this segment, created on first use (zeros unless ``init``)."""
        return self.ctx.state(self.module, *names, init=init, start=self.start, stop=self.stop)

    def scalar(self, name: str, advance: Callable[[float], float], init: float = 1.0) -> float:
        """A Python number per param group (and partition) and step count, advanced once per step.

        ``advance(previous)`` gives this step's value from the value at the previous step count (``init`` at a
        parameter's first step).  A group whose parameters span several segments (dtypes, devices) advances
        once; parameters that joined later have their own history, as in torch.  The values are kept in
        ``module.global_state[name]`` as ``{run: [[count, value], ...]}`` and written only when the whole step
        succeeded.  NAdam keeps its product of momentum coefficients this way, with no host sync.
        """
        ctx, module, t = self.ctx, self.module, self.step
        keys = ctx.opt.plan.run_keys(ctx.layout, self.start, self.stop)
        pending = ctx.pending_scalars
        # lists of [count, value] looked up by comparison, not dicts keyed by the count: torch.compile then
        # does not specialise on the step count (no recompile per step)
        done = [v for count, v in pending.get((module, name, keys[0]), []) if count == t]
        if done:
            value = done[0]
        else:
            stored = module.global_state.setdefault(name, {}).get(keys[0], [])
            previous = [v for count, v in stored if count == t - 1] if t > 1 else []
            value = advance(previous[0] if previous else init)
        for key in keys:
            entries = pending.setdefault((module, name, key), [])
            if not any(count == t for count, _ in entries):
                entries.append([t, value])
        return value

    def report(self, name: str, value: Any) -> None:
        """Report a per-group metric (:meth:`StepContext.report`) for each param group of this segment.

        A group whose parameters the module saw as several segments (dtypes, devices, step counts) keeps one
        value per segment: ``opt.metrics()`` then names the module with what tells them apart, e.g.
        ``"0/1.Adam.float32/update_rms"`` and ``"0/1.Adam.bfloat16/update_rms"`` (see :meth:`StepContext.metrics`).
        """
        for group in self.groups:
            self.ctx.report_segment(self, group, name, value)

    def group_slices(self) -> list[tuple[int, int, int]]:
        """``(group, start, stop)`` for each param group of the segment, positions relative to the segment (a
        segment may span groups whose settings agree)."""
        if len(self.groups) == 1:
            return [(self.groups[0], 0, len(self))]
        out: list[tuple[int, int, int]] = []
        for run in self.ctx.layout.runs:
            a, b = max(run.start, self.start), min(run.stop, self.stop)
            if a >= b:
                continue
            if out and out[-1][0] == run.group and out[-1][2] == a - self.start:
                out[-1] = (run.group, out[-1][1], b - self.start)
            else:
                out.append((run.group, a - self.start, b - self.start))
        return out

    def scratch(self, name: str = "scratch") -> list[Tensor]:
        """Buffers shaped like the segment's update, with undefined contents, for temporaries of this step.

        On CPU they are kept by the plan and handed out again at the next step (no allocation per step, no page
        faults on large tensors); they are not state and are never saved, but they are memory the optimizer holds
        (``plan.kept_scratch()``).  On other devices (a caching allocator hands the freed blocks of one step to
        the next, and to the model in between) and with autograd on (differentiable mode) they are fresh tensors,
        and so they are under torch.compile: a temporary of the graph, which Inductor keeps in registers, where a
        kept buffer would be written to memory at every step (4 bytes per parameter).
        """
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or self.device.type != "cpu":
            return [torch.empty_like(u) for u in self.update]
        return self.ctx.opt.plan.scratch((self.module.key, name, self.start, self.stop), self.update)

    # ---------------------------------------------------------------- the write sink (see core/sink.py)
    def emit(self, direction: Sequence[Tensor], scale: Any = 1.0, *, decay: Any = 0.0) -> None:
        """Emit ``scale * direction + decay * theta``: the update handed on, or the parameters' step when the
        stage is the chain's last (``theta <- theta (1 - decay) - scale * direction``)."""
        sink.write(self, [("add", direction, scale)], decay)

    def emit_div(
        self,
        num: Sequence[Tensor],
        den: Sequence[Tensor],
        scale: Any = 1.0,
        *more: tuple[Sequence[Tensor], Any],
        scratch: bool = False,
        decay: Any = 0.0,
    ) -> None:
        """Emit ``scale * num / den`` (plus ``s2 * num2 / den`` for each ``(num2, s2)`` in ``more``, and
        ``decay * theta`` as in :meth:`emit`).

        ``den`` is only read, unless ``scratch=True`` says it is a fresh buffer the update may be built in.
        """
        terms = [("div", num, den, scale)] + [("div", n, den, c) for n, c in more]
        sink.write(self, terms, decay, scratch=den if scratch else None)

    def emit_mul(self, a: Sequence[Tensor], b: Sequence[Tensor], scale: Any = 1.0) -> None:
        """Emit ``scale * a * b``."""
        sink.write(self, [("mul", a, b, scale)])

    def emit_per_tensor(self, direction: Sequence[Tensor], scales: Sequence[Any], *, decay: Any = 0.0) -> None:
        """Emit ``scales[i] * direction[i]`` (a step size per tensor), plus ``decay * theta`` as in :meth:`emit`."""
        sink.write_per_tensor(self, direction, scales, decay)

    def fused_ok(self, scale: Any, dtypes: Any, *, sharded_ok: bool = True) -> bool:
        """Whether a fused kernel may run on this segment (the one policy: :func:`torchzero.foreach.policy.fused_ok`);
        ``sharded_ok=False`` for a kernel with no sharding rule for DTensor parameters."""
        return policy.fused_ok(
            self.device, self.dtype, scale, dtypes, self.params, sharded_ok, state_dtype=self.precision.storage
        )

    def emit_kernel(self, scale: Any, kernel: Callable[[list[Tensor], Any], None]) -> None:
        """Emit through a fused kernel ``kernel(target, lr)`` that computes ``target -= lr * direction``."""
        sink.write_kernel(self, scale, kernel)

    def emit_move(self, move: Callable[[list[Tensor]], None]) -> None:
        """Emit the step that lands the parameters where ``move(x)`` takes ``x`` (in place, from their current
        values): the last stage moves the parameters themselves in one pass, any other hands on
        ``theta - move(theta)`` (:func:`~torchzero.core.sink.write_move`)."""
        sink.write_move(self, move)

    def __len__(self) -> int:
        return self.stop - self.start

    def __repr__(self) -> str:
        return f"Segment({self.start}:{self.stop}, {self.device}, {self.dtype}, {self.settings}, scale={self.scale})"


class StepContext:
    """What one ``Modular.step`` passes from module to module.

    Attributes:
        params: real views of the parameters taking part in the step, in the layout's canonical order.
        update: the current update, initially the gradient tensors themselves (the chain never writes into
            them: a module that changes the update in place gets a copy first); modules transform it or hand
            the write sink a new direction (``seg.emit``).  ``Modular`` subtracts it from ``params`` at the end
            unless the last stage's sink already wrote them.
        loss: the loss at the current parameters if known (a 0-dim tensor), else None.
        closure: the normalised closure, or None.
    """

    def __init__(self, opt: Modular, layout: Layout, closure: Closure | None, loss: Tensor | None) -> None:
        self.opt = opt
        self.layout = layout
        self.params: list[Tensor] = layout.views
        self.closure = closure
        self.loss = loss
        self._grad: list[Tensor] | None = None
        self.update: list[Tensor] = []
        self.is_last = True
        """core only: the running stage is the chain's last, so the sink writes the parameters"""
        self.params_written = False
        self.fused: Module | None = None
        """core only: the ``LR`` fused into the running stage (its lr is the stage's ``seg.scale``)"""
        self.fused_owner: Module | None = None
        self._grad_lists: list[list[Tensor]] = []
        """the gradient tensors (``.grad``, in layout order) the update may still be: never written by the chain"""
        self.step_counts: dict[str, list[int]] = {}
        """per module key, each parameter's step count for this step (saved to state when the step ends)"""
        self.final_loss: Tensor | None = None
        """set by :meth:`keep_trial_point`: the loss at the parameters the step ended on"""
        self.info: dict[str, Any] = {}
        """free-form per-step information (legacy: prefer :meth:`report`, whose values ``opt.last_info`` also shows)"""
        self.reports: dict[str, Any] = {}
        """this step's whole-step and per-group metrics, ``"<group>/<module>/<name>" -> value`` (see :meth:`report`)"""
        self.segment_reports: dict[tuple[int, Module, str], dict[tuple[Any, ...], Any]] = {}
        """this step's per-segment metrics (``Segment.report``): ``(group, module, name) -> {segment: value}``"""
        self.deferred_global_state: list[tuple[Module, str, Any]] = []
        self.precisions: list[RunPrecision] = precision.of_runs(layout.runs, opt.param_groups)
        """per run of the layout, its state dtype and parameter writes (see :mod:`torchzero.core.precision`)"""
        self.low_precision = not all(p.plain for p in self.precisions)
        """some run keeps state in another dtype or writes its parameters with compensation"""
        self._upcast: dict[tuple[str, int, str], tuple[Tensor, Tensor]] = {}
        """``(module key, index, name) -> (stored state, its temporary in the compute dtype)``, until written back"""
        self._entries: list[dict[str, Any] | None] = []
        """each parameter's ``opt.state`` entry, None where it has none (see :meth:`module_states`)"""
        self._entries_of: Any = None
        """the ``opt.state`` that :attr:`_entries` were read from (a closure could load a state dict mid-step)"""
        self.pending_scalars: dict[tuple[Module, str, str], list[list[Any]]] = {}
        """``Segment.scalar`` values of this step, stored in the modules' global state when the step ends"""
        """``(module, key, value)`` for ``module.global_state`` when the step ends (:meth:`set_global_state_at_end`)"""

    # ---------------------------------------------------------------- gradient and closure
    def get_grad(self) -> list[Tensor]:
        """The raw gradient at the current parameters (computed with the closure if missing)."""
        if self._grad is None:
            if self.closure is None:
                raise RuntimeError("the gradient is not available: no .grad and no closure")
            self.evaluate(backward=True)
        assert self._grad is not None
        return self._grad

    def grad_or_none(self) -> list[Tensor] | None:
        """The gradient if it is known (never evaluates the closure)."""
        return self._grad

    def may_overwrite_grad(self, module: Module) -> bool:
        """True when ``module`` may use the gradient tensors as scratch space: only with
        ``tz.Modular(..., grad_as_scratch=True)`` and when no module after it reads the raw gradient (``.grad``
        then holds that scratch after the step, unlike torch.optim)."""
        return self.opt.grad_as_scratch and not self.opt.plan.raw_grad_read_after(module)

    def owns(self, tensors: Sequence[Tensor], start: int = 0) -> bool:
        """True when none of ``tensors`` (the update's ``[start:start+len]``) is a gradient tensor, so the chain
        may write into them.  Identity is compared at the same layout position (no ``id()``: torch.compile
        traces this)."""
        stop = start + len(tensors)
        return not any(any(map(operator.is_, tensors, grads[start:stop])) for grads in self._grad_lists)

    def own_update(self) -> None:
        """Copy the update tensors that are still gradient tensors (copy on write before an in-place module)."""
        if self._grad_lists and not self.owns(self.update):
            lists = self._grad_lists
            self.update = [u.clone() if any(u is grads[i] for grads in lists) else u for i, u in enumerate(self.update)]

    def set_grad(self, grad: list[Tensor]) -> None:
        self._grad = grad

    def collect_grad(self) -> list[Tensor]:
        """Read ``.grad`` of every parameter of the layout (zeros where a parameter got none).

        For the parameters of a group with ``maximize=True`` the gradient is negated, as torch's optimizers do
        (``grad = -grad``), into new tensors (``.grad`` is never written): the update starts as it, and
        ``get_grad()`` returns it, so the whole chain minimizes ``-f`` for them.
        """
        grads = self.layout.grads()
        if any(map(_is_none, grads)):
            grads = [torch.zeros_like(v) if g is None else g for g, v in zip(grads, self.params, strict=True)]
        groups = self.opt.param_groups
        runs = [r for r in self.layout.runs if groups[r.group].get("maximize", False)]
        if runs:
            grads = list(grads)
            for a, b in self.layout.buckets:  # one foreach negation per (device, dtype) bucket
                index = [i for r in runs if a <= r.start < b for i in range(r.start, r.stop)]
                if index:
                    for i, g in zip(index, ops.neg([grads[i] for i in index]), strict=True):
                        grads[i] = g
        if self.low_precision:
            grads = self._widen(grads)  # type: ignore[arg-type,assignment]
        self._grad_lists.append(grads)  # type: ignore[arg-type]
        self._grad = grads  # type: ignore[assignment]
        return self._grad  # type: ignore[return-value]

    def _widen(self, grads: list[Tensor]) -> list[Tensor]:
        """The gradient in the compute dtype of each run (wider than the parameters' where state is kept wider:
        fp32 state of bf16 parameters), so that the whole chain computes in it; new tensors, ``.grad`` stays."""
        runs = [(r, p.compute) for r, p in zip(self.layout.runs, self.precisions, strict=True) if p.compute != r.dtype]
        if not runs:
            return grads
        grads = list(grads)
        for run, dtype in runs:
            grads[run.start : run.stop] = [g.to(dtype) for g in grads[run.start : run.stop]]
        return grads

    def evaluate(self, backward: bool = True, *, check: bool = False) -> Tensor:
        """Evaluate the closure at the current parameters and return the loss (0-dim tensor).

        With ``backward=True`` the gradient is recomputed and ``ctx.get_grad()`` returns it.  With
        ``check=True`` a non-finite loss raises :class:`~torchzero.NonFiniteLossError`.
        """
        if self.closure is None:
            raise RuntimeError("this module needs a closure, but step() was called without one")
        loss = self.closure(backward)
        if check:
            check_finite(loss)
        if backward:
            self.collect_grad()
        if self.loss is None:
            self.loss = loss
        return loss

    def keep_trial_point(self, loss: Tensor) -> bool:
        """Offer the point the parameters were last moved to (by a probe) as the step's result.

        A line search whose accepted step is its last trial calls this: the parameters already sit at
        ``x0 - t u`` and ``.grad`` holds the gradient there.  When the sink can use that (this is the chain's
        last stage and ``Modular(reuse_evaluation=True)`` lets the next step reuse ``loss`` and the gradient),
        the parameters stay and this returns True; else False, and the caller restores ``x0`` and hands on
        ``t u`` as usual.
        """
        if not (self.is_last and self.opt.reuse_evaluation) or self._compensated():
            return False  # compensated writes: the caller restores x0 and the sink writes x0 - t u
        self.params_written = True
        self.final_loss = loss
        return True

    def external_step(self, step: Callable[[], Any], before: list[Tensor] | None = None) -> None:
        """Run ``step``, which moves the parameters itself (a wrapped torch optimizer).

        As the chain's last stage that is the step; otherwise the move is measured as the update handed on
        (``before - after``) and the parameters are put back.  ``before`` is a copy of the parameters the caller
        already made (else one is made here when needed).
        """
        if self.is_last:
            step()
            self.params_written = True
            return
        if before is None:
            before = ops.clone(self.params)
        step()
        update: list[Tensor] = []
        params = self.params
        for a, b in self.layout.buckets:
            moved = ops.sub(before[a:b], params[a:b])
            ops.copy_(params[a:b], before[a:b])
            update.extend(moved)
        self.update = update

    def _compensated(self) -> bool:
        """Some parameters are written with compensation (``param_update`` other than ``"plain"``)."""
        return self.low_precision and any(p.param_update != "plain" for p in self.precisions)

    def run_stage(self, module: Module, fused: Module | None = None, *, last: bool = False) -> None:
        """Run one stage of a chain: ``module`` (with the ``LR`` fused into it, if any), as the last stage or not.

        The one way a stage runs (chains, and modules that replay the stages before them): it sets what the sink
        and ``segments`` read, and copies the update first when the module changes it in place while it still is
        the gradient (copy on write).
        """
        saved = self.is_last, self.fused, self.fused_owner
        self.is_last, self.fused, self.fused_owner = last, fused, module
        try:
            if module.modifies_update_inplace:
                self.own_update()
            module.step(self)
            self.flush_state(module)
        finally:
            self.is_last, self.fused, self.fused_owner = saved

    def run_branch(self, branch: Module) -> list[Tensor]:
        """Run ``branch`` on a copy of the current update and return its result; ``ctx.update`` is kept and the
        branch never writes the parameters."""
        main, last = self.update, self.is_last
        self.update, self.is_last = ops.clone(main), False
        try:
            branch.step(self)
            return self.update
        finally:
            self.update, self.is_last = main, last

    def report(self, module: Module, name: str, value: Any, group: int | None = None) -> None:
        """Report a named scalar of this step: ``opt.metrics()`` returns it as ``"<group>/<key>.<Class>/<name>"``.

        ``value`` is a Python number or a 0-dim tensor, kept as it is (no host sync while stepping:
        ``opt.metrics()`` reads tensors to floats only when called).  ``group`` is the index of the param
        group the value belongs to, or None (``"all"``) for a value of the whole step.  The reports of a step
        replace those of the previous step once the step succeeded.
        """
        if isinstance(value, Tensor) and value.requires_grad:  # differentiable mode: keep no graph alive
            value = value.detach()
        self.reports[f"{'all' if group is None else group}/{metric_label(module)}/{name}"] = value

    def report_segment(self, seg: Segment, group: int, name: str, value: Any) -> None:
        """Report a value of param group ``group`` measured on segment ``seg`` (:meth:`Segment.report`)."""
        if isinstance(value, Tensor) and value.requires_grad:
            value = value.detach()
        what = (str(seg.device), str(seg.dtype).removeprefix("torch."), seg._step, seg.start)
        self.segment_reports.setdefault((group, seg.module, name), {})[what] = value

    def metrics(self) -> dict[str, Any]:
        """This step's reports, ``"<group>/<module>/<name>" -> value``.

        A per-segment report keeps the plain key when its group reported it from one segment.  From several
        segments, each value keeps a key of its own: the module's label gets what tells the segments apart,
        among the device (``cuda0``), the dtype (``float32``), the step count (``step3``, for parameters that
        joined later) and, when those agree, the segment's first position in the step (``at12``), e.g.
        ``"0/1.Adam.float32/update_rms"``.  Only dots are added, so every logger accepts the names.
        """
        out = dict(self.reports)
        for (group, module, name), values in self.segment_reports.items():
            label = metric_label(module)
            if len(values) == 1:
                out[f"{group}/{label}/{name}"] = next(iter(values.values()))
                continue
            whats = list(values)
            tags = _tags(whats, [i for i in range(3) if len({w[i] for w in whats}) > 1])
            if len(set(tags)) < len(tags):  # same device, dtype and step count: the position tells them apart
                tags = [f"{t}.at{w[3]}" if t else f"at{w[3]}" for t, w in zip(tags, whats, strict=True)]
            for tag, value in zip(tags, values.values(), strict=True):
                out[f"{group}/{label}.{tag}/{name}"] = value
        return out

    def map_full(self, module: Module, tensors: Sequence[Tensor], fn: Callable[[int, Tensor], Tensor]) -> list[Tensor]:
        """``fn(i, whole_i)`` for each tensor, on whole tensors also when the parameters are FSDP2 shards.

        The one mechanism for matrix functions (:func:`torchzero.foreach.shard.map_full`): each sharded tensor
        is gathered on one owner rank (round-robin), ``fn`` runs there, and the result's shards are scattered
        back, laid out like the input; plain tensors go to ``fn`` as they are.  ``module`` must declare
        ``full_matrices = True``.
        """
        if not module.full_matrices:
            raise TypeError(
                f"{type(module).__name__} calls ctx.map_full but does not declare full_matrices = True; declare it "
                "(a class attribute) so that the chain and the docs know it computes on whole tensors"
            )
        return shard.map_full(tensors, fn)

    def set_global_state_at_end(self, module: Module, key: str, value: Any) -> None:
        """Set ``module.global_state[key] = value`` once the whole chain has succeeded, like the per-parameter
        step counts: a closure that raises later in the chain (a line search) then leaves the module as it was."""
        self.deferred_global_state.append((module, key, value))

    # ---------------------------------------------------------------- settings and state
    def segments(self, module: Module, scale_from: Module | None = None) -> list[Segment]:
        """The segments ``module`` is applied to, with its settings resolved once per run.

        ``seg.scale`` is the lr of ``scale_from`` (an ``LR`` module), else of the ``LR`` fused into the running
        stage, else 1.
        """
        if scale_from is None and self.fused_owner is module:
            scale_from = self.fused
        opt = self.opt
        return opt.plan.segments(self, module, scale_from, opt.param_groups, opt.defaults)

    def segments_with_lr(self, module: Module) -> tuple[list[Segment], bool]:
        """The segments of a rule whose math needs the learning rate itself (ASGD's schedule, Adafactor's
        relative step, Lamb's decay), with ``seg.scale`` the lr of the ``LR`` after it (``plan.lr_after``), and
        whether that ``LR`` is fused into the running stage.

        Fused (the rule declares ``fuses_lr``), the rule applies the lr itself and its emission can write the
        parameters in one pass; otherwise it hands on an lr-free update that the ``LR`` scales afterwards.
        """
        fused = self.fused is not None and self.fused_owner is module
        return self.segments(module, None if fused else self.opt.plan.lr_after(module)), fused

    def settings(self, module: Module) -> dict[str, Any]:
        """Settings of a module that works on all parameters at once (one history, one line search).

        Raises if the settings differ between param groups, instead of silently using the first.
        """
        segs = self.segments(module)
        first = segs[0].settings if segs else dict(module.defaults)
        for seg in segs[1:]:
            if seg.settings != first:
                diff = {k: (first[k], seg.settings[k]) for k in first if first[k] != seg.settings[k]}
                raise ValueError(
                    f"{type(module).__name__} treats all parameters as one vector, so its settings must be "
                    f"the same in every param group, but they differ: {diff} (group {segs[0].groups[0]} vs group "
                    f"{seg.groups[0]}, including set_params groups). Set them on the module instead of per group."
                )
        return first

    def module_states(
        self, module: Module | str, start: int = 0, stop: int | None = None, create: bool = True
    ) -> list[dict[str, Any] | None]:
        """``opt.state[p][module.key]`` of the params ``[start:stop]``: created where missing, or None there
        (``create=False``, which adds nothing to ``opt.state``).

        Each parameter's entry in ``opt.state`` is looked up once per step and shared by every module: a tensor
        key's hash is a Python call, which on many small parameters costs more than the math.  Entries are read
        again when ``opt.state`` was replaced (a closure that loads a state dict); within a step nothing else
        replaces the entry of a parameter (modules and wrapped optimizers write the keys inside it).
        """
        key = module if isinstance(module, str) else module.key
        assert key is not None, "module is not bound to an optimizer"
        state = self.opt.state
        entries = self._entries
        if self._entries_of is not state:
            entries = self._entries = list(map(state.get, self.layout.originals))
            self._entries_of = state
        stop = len(entries) if stop is None else stop
        if stop - start == 1 and entries[start] is not None:  # one tensor (matrix rules go tensor by tensor)
            entry = entries[start]
            ms = entry.get(key)  # type: ignore[union-attr]
            if ms is None and create:
                ms = entry[key] = {}  # type: ignore[index]
            return [ms]
        part = entries[start:stop]
        if any(map(_is_none, part)):  # parameters without an entry when the step began (or after a load)
            originals = self.layout.originals
            for i in range(start, stop):
                if entries[i] is None:
                    entries[i] = state[originals[i]] if create else state.get(originals[i])
            part = entries[start:stop]
            if not create:
                return [None if e is None else e.get(key) for e in part]
        out = list(map(dict.get, part, itertools.repeat(key)))  # type: ignore[arg-type]
        if create and any(map(_is_none, out)):
            for i, entry in enumerate(part):
                if out[i] is None:
                    out[i] = entry[key] = {}  # type: ignore[index]
        return out

    def set_state(self, module: Module, name: str, tensors: Sequence[Tensor], start: int = 0) -> None:
        """Replace ``module``'s state tensor ``name`` of params ``[start:start+len(tensors)]`` by new tensors
        (for modules that build new state out of place, e.g. in differentiable mode)."""
        key = module.key
        assert key is not None, "module is not bound to an optimizer"
        storage = self._storage(start, start + len(tensors)) if self.low_precision else None
        if storage is not None and _exact(module, name):
            storage = [(c if s is not None else None, c) for s, c in storage]
        states = self.module_states(key, start, start + len(tensors))
        for i, (ms, t) in enumerate(zip(states, tensors, strict=True)):
            assert ms is not None
            if storage is not None:
                self._upcast.pop((key, start + i, name), None)  # replaced: nothing to write back
                if storage[i][0] is not None and t.is_floating_point():
                    t = t.to(storage[i][0])
            ms[name] = t

    def state(
        self,
        module: Module,
        *names: str,
        init: StateInit | dict[str, StateInit] | None = None,
        start: int = 0,
        stop: int | None = None,
    ) -> list[list[Tensor]]:
        """Per-parameter state of ``module`` for params ``[start:stop]``, created on first use.

        State lives in ``optimizer.state[param][module.key][name]`` (torch's format, so Lightning and
        Accelerate can move, cast, save and load it).  In a param group with ``state_dtype`` it is stored in that
        dtype and handed out in the compute dtype (see :mod:`torchzero.core.precision`): the tensors returned may
        then be temporaries, written back when the module is done with its segment, so a module reads and writes
        its state through them within one step and keeps no reference to them across steps.
        """
        stop = len(self.params) if stop is None else stop
        if self.low_precision:
            return self._state_low_precision(module, names, init, start, stop)
        states = self.module_states(module, start, stop)
        out: list[list[Any]] = [list(map(dict.get, states, itertools.repeat(name))) for name in names]  # type: ignore[arg-type]
        if any(any(map(_is_none, tensors)) for tensors in out):
            # first use: create the missing ones parameter by parameter (the order init functions that draw
            # random numbers were called in)
            for i, (ms, v) in enumerate(zip(states, self.params[start:stop], strict=True)):
                assert ms is not None
                for tensors, name in zip(out, names, strict=True):
                    if tensors[i] is None:
                        fn = init.get(name) if isinstance(init, dict) else init
                        t = torch.zeros_like(v, memory_format=torch.preserve_format) if fn is None else fn(v)
                        tensors[i] = ms[name] = t
        return out

    # ---------------------------------------------------------------- low-precision state (core/precision.py)
    def _storage(self, start: int, stop: int) -> list[tuple[torch.dtype | None, torch.dtype]]:
        """Per parameter of ``[start:stop]``: the dtype its state is stored in (None: its own) and computed in."""
        out: list[tuple[torch.dtype | None, torch.dtype]] = []
        for run, prec in zip(self.layout.runs, self.precisions, strict=True):
            n = min(stop, run.stop) - max(start, run.start)
            if n > 0:
                out.extend([(prec.storage, prec.compute)] * n)
        return out

    def _state_low_precision(
        self, module: Module, names: Sequence[str], init: StateInit | dict[str, StateInit] | None, start: int, stop: int
    ) -> list[list[Tensor]]:
        """:meth:`state` where some parameters keep state in another dtype than they compute in.

        State is created (or, if it was kept in another dtype, converted once) in the storage dtype; where that
        is narrower than the compute dtype the module gets temporaries in the compute dtype (one buffer per name
        and segment), which :meth:`flush_state` writes back when the module is done with them.
        """
        key = module.key
        assert key is not None
        every = self._storage(start, stop)
        views = self.params[start:stop]
        states = self.module_states(key, start, stop)
        out: list[list[Tensor]] = []
        for name in names:
            # copies of the parameters and shared scalars are kept in the compute dtype (module.exact_state)
            storage = [(c if s is not None else None, c) for s, c in every] if _exact(module, name) else every
            fn = init.get(name) if isinstance(init, dict) else init
            tensors: list[Tensor] = []
            narrow: list[int] = []
            for i, (ms, v) in enumerate(zip(states, views, strict=True)):
                assert ms is not None
                kept = self._upcast.get((key, start + i, name))
                if kept is not None:
                    tensors.append(kept[1])
                    continue
                stored_as, compute = storage[i]
                t = ms.get(name)
                if t is None:  # handed to the module as made (SGD knows its new buffers), in the compute dtype
                    if fn is None:  # (compute is v's dtype where the group keeps state as the parameter)
                        t = torch.zeros_like(v, dtype=compute, memory_format=torch.preserve_format)
                    else:
                        t = fn(v)
                        if stored_as is not None and t.is_floating_point() and t.dtype != compute:
                            t = t.to(compute)
                    if stored_as is None or not t.is_floating_point() or t.dtype == stored_as:
                        ms[name] = t
                    else:
                        ms[name] = t.to(stored_as)
                        self._upcast[(key, start + i, name)] = (ms[name], t)
                    tensors.append(t)
                    continue
                if stored_as is not None and t.is_floating_point() and t.dtype != stored_as:
                    t = ms[name] = t.to(stored_as)  # the group's state_dtype changed since the state was made
                if stored_as is not None and t.is_floating_point() and t.dtype != compute:
                    narrow.append(i)
                tensors.append(t)
            if narrow:
                for dtype in {storage[i][1] for i in narrow}:
                    index = [i for i in narrow if storage[i][1] == dtype]
                    _, wide = rounding.flat_like([tensors[i] for i in index], dtype)
                    ops.copy_(wide, [tensors[i] for i in index])
                    for i, w in zip(index, wide, strict=True):
                        self._upcast[(key, start + i, name)] = (tensors[i], w)
                        tensors[i] = w
            out.append(tensors)
        return out

    def flush_state(self, module: Module | None = None) -> None:
        """Write the compute-dtype temporaries of ``module``'s state (every module's, for None) back into the
        stored state (rounding to the storage dtype), and drop them."""
        if not self._upcast:
            return
        done = [k for k in self._upcast if module is None or k[0] == module.key]
        if done:
            pairs = [self._upcast.pop(k) for k in done]
            ops.copy_([p[0] for p in pairs], [p[1] for p in pairs])
