"""The object carried through the chain during one ``step``."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..foreach import Layout, ops, policy
from . import sink
from .closure import Closure, check_finite

if TYPE_CHECKING:
    from .modular import Modular
    from .module import Module

StateInit = Callable[[Tensor], Tensor]


def metric_label(module: Module) -> str:
    """How a module is named in ``opt.metrics()``: its key in the chain and its class, e.g. ``"0.LBFGS"``."""
    return f"{module.key}.{type(module).__name__}"


class Segment:
    """A contiguous slice of the step's tensors: one device, one dtype, one set of settings.

    ``settings`` are the resolved settings of the module being applied; ``scale`` is the learning rate
    of a fused :class:`~torchzero.m.LR` (1.0 when nothing is fused); ``step`` is the step count of every
    parameter in the segment, counting this step, for modules that declare ``counts_steps`` (else None).
    """

    __slots__ = ("ctx", "module", "start", "stop", "device", "dtype", "settings", "scale", "groups", "_step")

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
    ) -> None:
        self.ctx = ctx
        self._step = step
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
        """Report a per-group metric (:meth:`StepContext.report`) for each param group of this segment."""
        for group in self.groups:
            self.ctx.report(self.module, name, value, group)

    def scratch(self, name: str = "scratch") -> list[Tensor]:
        """Buffers shaped like the segment's update, with undefined contents, for temporaries of this step.

        They are kept by the plan and handed out again at the next step (no allocation per step, no page faults
        on large tensors); they are not state and are never saved.  With autograd on (differentiable mode) they
        are fresh tensors every time, and so they are under torch.compile: a temporary of the graph, which Inductor
        keeps in registers, where a kept buffer would be written to memory at every step (4 bytes per parameter).
        """
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
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
    ) -> None:
        """Emit ``scale * num / den`` (plus ``s2 * num2 / den`` for each ``(num2, s2)`` in ``more``).

        ``den`` is only read, unless ``scratch=True`` says it is a fresh buffer the update may be built in.
        """
        terms = [("div", num, den, scale)] + [("div", n, den, c) for n, c in more]
        sink.write(self, terms, scratch=den if scratch else None)

    def emit_mul(self, a: Sequence[Tensor], b: Sequence[Tensor], scale: Any = 1.0) -> None:
        """Emit ``scale * a * b``."""
        sink.write(self, [("mul", a, b, scale)])

    def emit_per_tensor(self, direction: Sequence[Tensor], scales: Sequence[Any]) -> None:
        """Emit ``scales[i] * direction[i]`` (a step size per tensor)."""
        sink.write_per_tensor(self, direction, scales)

    def fused_ok(self, scale: Any, dtypes: Any, *, sharded_ok: bool = True) -> bool:
        """Whether a fused kernel may run on this segment (the one policy: :func:`torchzero.foreach.policy.fused_ok`);
        ``sharded_ok=False`` for a kernel with no sharding rule for DTensor parameters."""
        return policy.fused_ok(self.device, self.dtype, scale, dtypes, self.params, sharded_ok)

    def emit_kernel(self, scale: Any, kernel: Callable[[list[Tensor], Any], None]) -> None:
        """Emit through a fused kernel ``kernel(target, lr)`` that computes ``target -= lr * direction``."""
        sink.write_kernel(self, scale, kernel)

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
        """this step's metrics, ``"<group>/<module>/<name>" -> value`` (see :meth:`report`)"""
        self.deferred_global_state: list[tuple[Module, str, Any]] = []
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
        if any(g is None for g in grads):
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
        self._grad_lists.append(grads)  # type: ignore[arg-type]
        self._grad = grads  # type: ignore[assignment]
        return self._grad  # type: ignore[return-value]

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
        if not (self.is_last and self.opt.reuse_evaluation):
            return False
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

    def set_state(self, module: Module, name: str, tensors: Sequence[Tensor], start: int = 0) -> None:
        """Replace ``module``'s state tensor ``name`` of params ``[start:start+len(tensors)]`` by new tensors
        (for modules that build new state out of place, e.g. in differentiable mode)."""
        key = module.key
        assert key is not None, "module is not bound to an optimizer"
        state = self.opt.state
        for p, t in zip(self.layout.originals[start : start + len(tensors)], tensors, strict=True):
            ms = state[p].get(key)
            if ms is None:
                ms = state[p][key] = {}
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
        Accelerate can move, cast, save and load it).
        """
        key = module.key
        assert key is not None, "module is not bound to an optimizer"
        state = self.opt.state
        stop = len(self.params) if stop is None else stop
        originals = self.layout.originals[start:stop]
        views = self.params[start:stop]
        out: list[list[Tensor]] = [[] for _ in names]
        for p, v in zip(originals, views, strict=True):
            ms = state[p].get(key)
            if ms is None:
                ms = state[p][key] = {}
            for lst, name in zip(out, names, strict=True):
                t = ms.get(name)
                if t is None:
                    fn = init.get(name) if isinstance(init, dict) else init
                    t = ms[name] = torch.zeros_like(v, memory_format=torch.preserve_format) if fn is None else fn(v)
                lst.append(t)
        return out
