"""``tz.Modular``: a chain of modules as a real ``torch.optim.Optimizer``."""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..foreach import Layout, ops
from . import schema, sink
from . import settings as S
from .closure import Closure, check_finite
from .context import StepContext
from .lr import LR
from .module import Chain, Module
from .plan import Plan

_STATE_KEY = "torchzero"


class ParamGroup(dict):  # noqa: FURB189 - a plain dict in every way except the error for a missing key
    """A param group of a chain without ``LR``: a ``dict`` whose error for the missing ``lr`` says what to do."""

    def __missing__(self, key: Any) -> Any:
        if key == "lr":
            raise KeyError(
                "'lr': this tz.Modular chain has no tz.m.LR module, so there is no learning rate for a "
                "scheduler (or anything else) to read or set. Add one, e.g. tz.Modular(params, tz.m.Adam(), "
                "tz.m.LR(1e-3))."
            )
        raise KeyError(key)


class Modular(torch.optim.Optimizer):
    r"""An optimizer made of a chain of modules.

    Each module takes the update (first the gradient), transforms it and passes it on; the final update
    is subtracted from the parameters:

    .. math::  \theta_{t+1} = \theta_t - (m_n \circ \dots \circ m_1)(g_t)

    Args:
        params: tensors, ``(name, tensor)`` pairs or param-group dicts, as for any torch optimizer.  A
            group may set any key that a module of the chain declares (``lr``, ``eps``, ...).
        *modules: the modules, or one list of them; nested lists become :class:`~torchzero.m.Chain`.
        fuse: run a fusable module and the ``LR`` right after it as one pass (default True).
        reuse_evaluation: when the last module of a step leaves the parameters at a point where it already
            evaluated the loss and gradient (a line search whose accepted trial was its last), let the next
            ``step`` reuse that evaluation instead of calling the closure again, provided it gets the same
            closure object and neither the parameters nor ``.grad`` changed in between (checked by version counters
            and, for writes through ``.data`` that bypass them, by comparing with a copy of the parameters kept
            for the purpose: one parameter-sized buffer).  This is how
            ``torch.optim.LBFGS`` saves a closure call per iteration; it is off by default because a closure
            that reads changing data (the next minibatch) through a variable looks the same.
        grad_as_scratch: let a module use the gradient tensors as scratch space when nothing after it reads the
            gradient (``Cautious`` builds its mask there), which saves an allocation per step but leaves that scratch
            in ``.grad`` after the step.  Off by default: then ``.grad`` after a step is what backward left, as with
            torch.optim (hooks, SWA's extra epoch and gradient logging read it).
        differentiable: run the step with autograd enabled so the new parameters are differentiable with
            respect to the old ones, the gradients and the settings given as tensors (meta-learning), like
            torch's ``differentiable=True``. Parameters must then be non-leaf tensors (or not require grad);
            fused kernels are not used.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Adam(), tz.m.Cautious(), tz.m.LR(1e-3))
        loss_fn(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    """

    def __init__(
        self,
        params: Iterable[Any],
        *modules: Any,
        fuse: bool = True,
        reuse_evaluation: bool = False,
        grad_as_scratch: bool = False,
        differentiable: bool = False,
        compile: bool | dict[str, Any] = False,  # noqa: A002 - the name users look for
    ) -> None:
        if isinstance(params, (set, frozenset)):
            raise TypeError(
                "params were given as a set, whose order changes from run to run, so state could not be matched to "
                "parameters on reload. Pass a list instead, e.g. list(model.parameters())."
            )
        root = modules[0] if len(modules) == 1 and isinstance(modules[0], Chain) else Chain(*modules)
        if not root.modules:
            raise ValueError(
                "tz.Modular needs at least one module, e.g. tz.Modular(params, tz.m.Adam(), tz.m.LR(1e-3))"
            )
        self._root = root
        self.differentiable = differentiable
        self.reuse_evaluation = reuse_evaluation
        self.grad_as_scratch = grad_as_scratch
        self._leaves = _bind(root, fuse)
        self.plan = Plan(self._leaves, root)
        """what each step needs from the chain and the groups (see :mod:`torchzero.core.plan`)"""
        for m in self._leaves:
            if m.own_groups is not None:
                S.check_own_group_keys(m, self._leaves)
        defaults = {key: owner.defaults[key] for key, owner in self.plan.owners.items()}
        # param groups are plain dicts (torch.compile traces them), except in a chain without an LR module, whose
        # groups explain that a scheduler needs one when it asks for the missing "lr"
        self._lr_missing_error = "lr" not in self.plan.owners
        if differentiable:
            defaults["differentiable"] = True  # torch then allows non-leaf parameters
        self._building = True
        super().__init__(params, defaults)
        self._building = False
        self.plan.adopt(self.param_groups, self.plan.given)
        schema.check_groups(self, self.param_groups)
        S.closure_negated(self.param_groups, self._root.requires_closure)
        self.plan.check_uniform(self.param_groups, self.defaults)
        for m in self._leaves:
            bind = getattr(m, "bind", None)
            if bind is not None:
                bind(self)
        self._compile_options = _compile_options(self, compile)
        self._compiled_run: Callable[..., Any] | None = None
        self._eager_steps = {"left": 1}
        """compile=True: the first step runs eagerly and creates the state, so that no compiled graph creates it
        (one compile fewer; the state is then a static address from the first compiled step on)"""
        self._last_reports: dict[str, tuple[dict[str, Any], dict[str, Any], int]] = {}
        """``"step"``: the reports, info and closure calls of the last successful step (a dict that is changed,
        not an attribute that is set: dynamo drops attribute writes on an optimizer in a compiled step)"""

    # ---------------------------------------------------------------- groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"a param group must be a dict, got {type(param_group).__name__}")
        S.check_group_keys(param_group, len(self.param_groups), self._leaves)
        schema.check_new_group(self, param_group, len(self.param_groups))
        given = frozenset(k for k in param_group if k not in S.FRAMEWORK_KEYS)
        super().add_param_group(param_group)
        for key, value in (self.plan.inert | S.OPTIMIZER_KEYS).items():
            self.param_groups[-1].setdefault(key, value)
        if self._lr_missing_error:
            self.param_groups[-1] = ParamGroup(self.param_groups[-1])
        if self._building:  # torch's __init__ adds the first groups; the plan adopts them all at the end
            self.plan.given.append(given)
            return
        old = self.plan.given
        try:
            self.plan.adopt(self.param_groups, [*old, given])
            S.closure_negated(self.param_groups, self._root.requires_closure)
            self.plan.check_uniform(self.param_groups, self.defaults)
        except ValueError:
            self.param_groups.pop()
            self.plan.adopt(self.param_groups, old)
            raise

    def _sync_groups(self) -> None:
        """Adopt ``param_groups`` that were replaced or edited from outside since the last step.

        ``param_groups`` is a public, assignable list: Lightning's ``BaseFinetuning`` replaces it when it resumes
        a run, and anyone may append a dict.  torch's optimizers simply reread the groups at every step; here
        what is derived from them (layouts, ``set_params`` positions, which keys a group set) is rebuilt, after
        the same checks ``add_param_group`` makes, and before anything changes.
        """
        groups = self.param_groups
        plan = self.plan
        if plan.unchanged(groups):
            return
        seen: set[int] = set()
        for i, group in enumerate(groups):
            if not isinstance(group, dict) or "params" not in group:
                raise TypeError(f"param group {i} must be a dict with a 'params' key, got {group!r}")
            params = group["params"]
            if isinstance(params, (Tensor, set, frozenset)):
                raise TypeError(
                    f"param group {i} holds its params as {type(params).__name__}; use a list of tensors "
                    "(the order must be stable to match state to parameters)"
                )
            for p in params:
                if id(p) in seen:
                    raise ValueError(f"param group {i} repeats a parameter that another group (or itself) holds")
                seen.add(id(p))
            S.check_group_keys(group, i, self._leaves)
        # a key a group set itself keeps applying by index (load_state_dict replaces the dicts, not the meaning);
        # a new group is taken to have set whatever differs from the defaults
        old = plan.given
        given = [
            old[i]
            if i < len(old)
            else frozenset(
                k for k, v in g.items() if k not in S.FRAMEWORK_KEYS and not S.same_value(v, self.defaults.get(k))
            )
            for i, g in enumerate(groups)
        ]
        known = plan.known_groups
        plan.adopt(groups, given)
        try:
            schema.check_groups(self, groups)  # the settings each module resolves to, as add_param_group checks
        except ValueError:
            plan.adopt(known, old)
            raise
        for i, group in enumerate(groups):
            for key, value in (self.defaults | plan.inert | S.OPTIMIZER_KEYS).items():
                group.setdefault(key, value)
            if "params" in group and not isinstance(group["params"], list):
                group["params"] = list(group["params"])
            if self._lr_missing_error and not isinstance(group, ParamGroup):
                groups[i] = ParamGroup(group)
        plan.adopt(groups, given)
        S.closure_negated(groups, self._root.requires_closure)
        plan.check_uniform(groups, self.defaults)

    @property
    def root(self) -> Chain:
        """The chain this optimizer runs (nested lists are nested chains)."""
        return self._root

    @property
    def modules(self) -> list[Module]:
        """The modules of the chain in execution order (nested chains flattened)."""
        return list(self._leaves)

    def get_lr_module(self) -> Module:
        """The first :class:`~torchzero.m.LR` module of the chain, wherever it is nested.

        torch schedulers accept it: ``OneCycleLR(opt.get_lr_module(), max_lr=0.1, total_steps=1000)``.
        It shares this optimizer's ``param_groups``, so a scheduler on it is a scheduler on the optimizer.
        """
        for m in self._leaves:
            if isinstance(m, LR):
                return m
        raise ValueError(
            "this tz.Modular chain has no tz.m.LR module, so there is no learning rate to schedule. Add one, "
            "e.g. tz.Modular(params, tz.m.Adam(), tz.m.LR(1e-3))."
        )

    # ---------------------------------------------------------------- step
    def _layout(self, include_fn: Callable[[Tensor], bool]) -> Layout | None:
        return self.plan.layout(self.param_groups, include_fn)

    def _unchanged_since(self, versions: list[tuple[int, int | None]], copies: list[Tensor]) -> bool:
        """True if no parameter or ``.grad`` was written since (``.data`` writes skip the version counters)."""
        params = self._all_params()
        return (
            versions == self._versions()
            and len(copies) == len(params)
            and all(torch.equal(p, c) for p, c in zip(params, copies, strict=True))
        )

    def _versions(self) -> list[tuple[int, int | None]]:
        """Version counters of every parameter and its ``.grad`` (they change with any in-place write)."""
        return [(p._version, None if p.grad is None else p.grad._version) for p in self._all_params()]

    def _all_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _check_ready(self, closure: Any) -> None:
        self._sync_groups()
        S.check_inert_keys(self.param_groups, self.plan.declared)
        if closure is None and self._root.requires_closure:
            names = ", ".join(type(m).__name__ for m in self._leaves if m.needs_closure)
            raise RuntimeError(
                f"{names} must re-evaluate the loss, so step() needs a closure: "
                "opt.step(closure) with `def closure(backward=True): ...` that returns the loss (see the "
                "closure section of the docs). Nothing was changed."
            )
        if "lr" not in self.defaults and any("initial_lr" in g for g in self.param_groups):
            raise RuntimeError(
                "a learning-rate scheduler is attached to this optimizer, but the chain has no tz.m.LR module, "
                "so it would change nothing. Add tz.m.LR(lr) to the chain."
            )

    def step(self, closure: Callable[..., Any] | None = None) -> Tensor | None:  # type: ignore[override]
        """Run the chain once and update the parameters; returns the loss if a closure was given.

        ``tz.Modular(..., compile=True)`` compiles the step (see :attr:`compiled`); ``torch.compile(opt.step)``
        also works.  A chain without an ``LR`` module (line searches) has param groups torch.compile cannot
        trace, and runs eagerly.
        """
        if self._compile_options is not None:
            if self._eager_steps["left"] > 0:
                self._eager_steps["left"] -= 1
                return _run(self, closure)
            if closure is None:
                return self._compiled()(self, None)
            return self._closure_then_compiled(closure)
        return (_run_eagerly if self._lr_missing_error else _run)(self, closure)

    def _closure_then_compiled(self, closure: Callable[..., Any]) -> Tensor | None:
        """A compiled chain given a closure (Lightning always passes one): the closure's forward and backward run
        eagerly, as the eager step would run them first, then the compiled step on the gradients it left."""
        self._check_ready(closure)
        negate = S.closure_negated(self.param_groups, False)
        wrapped = Closure(closure, self._all_params, none_ok=True, negate=negate)
        with torch.enable_grad():
            loss = wrapped(True)
        if loss is not None:
            check_finite(loss)
        self._compiled()(self, None)
        reports, info, _ = self._last_reports["step"]
        self._last_reports["step"] = (reports, info, wrapped.calls)
        return wrapped.signed(loss)

    @property
    def compiled(self) -> bool:
        """True when ``step()`` (without a closure) runs compiled: ``tz.Modular(..., compile=True)``.

        The whole step is one graph (``torch.compile(fullgraph=True)``): Inductor fuses the chain's elementwise
        modules into one kernel per (device, dtype) bucket, computes the scalars that change from step to step
        (bias corrections, a scheduled lr) once per step, and keeps temporaries in registers, so a chain such as
        ``Adam, Cautious, LR, WeightDecay`` moves the bytes of torch's fused Adam.  The step count, the lr, betas
        and momentum a scheduler changes do not recompile it.  The first step runs eagerly (it creates the state);
        the second and third compile (dynamo specialises the first step count it sees, then makes it dynamic).  A step given a closure evaluates it eagerly first
        (as the eager step does), then runs the compiled step; a chain that needs a closure steps eagerly.
        """
        return self._compile_options is not None

    def _compiled(self) -> Callable[..., Any]:
        if self._compiled_run is None:
            # a code object of its own per optimizer: dynamo keeps its compiled graphs (and its recompile limit)
            # per code object, so two optimizers must not share one
            run = types.FunctionType(_run.__code__.replace(), _run.__globals__, "_compiled_step")
            self._compiled_run = torch.compile(run, **(self._compile_options or {}))
        return self._compiled_run

    def _init_group(self) -> None:
        """A hook for torch.compile, called at the start of a compiled step.

        Dynamo runs an optimizer's ``_init_group`` eagerly and then marks every tensor in ``state`` as a static
        address, as it does for torch's own optimizers (CUDA graphs then need no copies of the state).  State is
        created lazily by the modules, so the marks apply from the second compiled step on, which recompiles
        anyway (dynamo specialises the first step count).
        """

    def _step(self, closure: Callable[..., Any] | None) -> Tensor | None:
        if torch.compiler.is_compiling():
            self._init_group()
        self._check_ready(closure)
        needs_loss = self._root.requires_closure
        negate = S.closure_negated(self.param_groups, needs_loss)  # maximize: the chain sees -loss
        wrapped = (
            Closure(closure, self._all_params, none_ok=not needs_loss, negate=negate) if closure is not None else None
        )
        loss = None
        reusable, self.plan.reusable = self.plan.reusable, None
        if wrapped is not None and not self.plan.creates_update:
            if reusable is not None and reusable[0] is closure and self._unchanged_since(reusable[2], reusable[3]):
                loss = wrapped.signed(reusable[1])  # the last step ended where it evaluated the loss and gradient
            else:
                loss = wrapped(True)
            if loss is not None:
                check_finite(loss)

        if self.plan.creates_update:
            layout = self._layout(lambda p: p.requires_grad)
        else:
            layout = self._layout(lambda p: p.grad is not None)
        if layout is None:  # no parameter has a gradient: nothing to update, but schedulers still count the step
            ctx = StepContext(self, Layout([]), wrapped, loss)
            for m in self._leaves:
                m.after_step(ctx)
            self._finish_reports(ctx, wrapped)
            return loss if wrapped is None else wrapped.signed(loss)

        self.plan.check_uniform(self.param_groups, self.defaults, layout)
        ctx = StepContext(self, layout, wrapped, loss)
        if not self.plan.creates_update:
            grad = ctx.collect_grad()
            # the update starts as the gradient tensors themselves: the sink copies them before any write
            ctx.update = ops.clone(grad) if self.differentiable else list(grad)
        self._root.step(ctx)
        self.plan.commit(ctx)
        if not ctx.params_written:
            sink.final_write(ctx)
        for m in self._leaves:
            m.after_step(ctx)
        if ctx.final_loss is not None and ctx.params_written and self.reuse_evaluation and wrapped is not None:
            params = self._all_params()
            kept = wrapped.signed(ctx.final_loss)  # the user's loss: maximize may change before the next step
            self.plan.reusable = (closure, kept, self._versions(), [p.detach().clone() for p in params])
        self._finish_reports(ctx, wrapped)
        return ctx.loss if wrapped is None else wrapped.signed(ctx.loss)  # the closure's loss, not the chain's

    # ---------------------------------------------------------------- metrics
    def _finish_reports(self, ctx: StepContext, wrapped: Closure | None) -> None:
        """Keep the reports of the step that just succeeded (read by ``metrics`` and ``last_info``)."""
        self._last_reports["step"] = (ctx.reports, ctx.info, 0 if wrapped is None else wrapped.calls)

    @property
    def last_info(self) -> dict[str, Any]:
        """The last step's reports by their short name (``step_size``, ``line_search_evals``, ...) and
        ``closure_calls``, the closure evaluations of the step; values as reported (see :meth:`metrics`)."""
        reports, extra, calls = self._last_reports.get("step", ({}, {}, 0))
        info: dict[str, Any] = {"closure_calls": calls}
        for key, value in reports.items():
            info.setdefault(key.rsplit("/", 1)[1], value)
        return {**info, **extra}

    def metrics(self, sync: bool = True) -> dict[str, Any]:
        """The named scalars the modules reported about the last step, keyed ``"<group>/<module>/<name>"``.

        ``<group>`` is a param group's index for a per-group value, else ``all``; ``<module>`` is the module's
        key in the chain and its class (``0.LBFGS``, ``1.0.Adam`` inside a nested chain); the optimizer itself
        reports ``all/Modular/closure_calls``.  With ``sync=True`` every value is a Python float (tensors are
        read here, one host sync each); ``sync=False`` returns the reported tensors and numbers unchanged,
        without a sync.  Empty before the first step.
        """
        last = self._last_reports.get("step")
        if last is None:
            return {}
        reports = {**last[0], "all/Modular/closure_calls": last[2]}
        if not sync:
            return reports
        return {k: float(v.item()) if isinstance(v, Tensor) else float(v) for k, v in reports.items()}

    # ---------------------------------------------------------------- train / eval
    def train(self, mode: bool = True) -> Modular:
        """Put the parameters where training steps are taken (``mode=True``) or where the model is evaluated.

        Only modules that keep two points declare ``set_train_mode`` (schedule-free: the parameters hold ``y``
        in training and ``x`` in evaluation); for every other chain this does nothing.  Returns ``self``.
        """
        for m in self._leaves:
            hook = getattr(m, "set_train_mode", None)
            if hook is not None:
                hook(mode)
        return self

    def eval(self) -> Modular:
        """``train(False)``: move the parameters to the point meant for evaluation (see :meth:`train`)."""
        return self.train(False)

    # ---------------------------------------------------------------- state
    def _signature(self) -> list[str]:
        return [f"{m.key}:{type(m).__name__}" for m in self._leaves]

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd[_STATE_KEY] = {
            "chain": self._signature(),
            "modules": {m.key: m.get_global_state() for m in self._leaves},
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        extra = state_dict.get(_STATE_KEY)
        if extra is None:
            raise ValueError(
                "this state dict was not saved by tz.Modular (it has no 'torchzero' entry); load it into the "
                "optimizer class that saved it."
            )
        saved, mine = list(extra["chain"]), self._signature()
        if saved != mine:
            raise ValueError(
                f"this state dict was saved from a different chain: saved {saved}, this optimizer has {mine}. "
                "Build the optimizer with the same modules in the same order before loading."
            )
        self._sync_groups()  # a host may have replaced the groups before loading (Lightning's BaseFinetuning)
        groups, saved_groups = self.param_groups, state_dict["param_groups"]
        if len(groups) != len(saved_groups) or any(
            len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups, strict=True)
        ):
            raise ValueError(
                "this state dict was saved for a different parameter layout: saved group sizes "
                f"{[len(s['params']) for s in saved_groups]}, this optimizer has {[len(g['params']) for g in groups]}."
            )
        schema.check_groups(self, saved_groups, "the state dict's param group")
        super().load_state_dict({k: v for k, v in state_dict.items() if k != _STATE_KEY})
        if self._lr_missing_error:
            self.param_groups[:] = [ParamGroup(g) for g in self.param_groups]
        self._sync_groups()  # the loaded dicts replace the groups (and a host may have replaced the list before)
        for m in self._leaves:
            m.set_global_state(extra["modules"].get(m.key, {}))
        for m in self._leaves:
            on_load = getattr(m, "on_load", None)
            if on_load is not None:
                on_load()
        self.plan.adopt(self.param_groups, self.plan.given)  # a new layout at the next step
        self.plan.reusable = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled_run"] = None  # compiled again by the copy on its first step
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # an optimizer pickled by a version without compile=True
        defaults = {"_compile_options": None, "_compiled_run": None, "_last_reports": {}, "_eager_steps": {"left": 0}}
        state = {**defaults, **state}
        super().__setstate__(state)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}("]
        for m in self._leaves:
            lines.append(f"  {m.key}: {m!r}")
        for i, g in enumerate(self.param_groups):
            overrides = {
                k: v
                for k, v in g.items()
                if k not in S.FRAMEWORK_KEYS
                and (
                    k in self.plan.given[i]
                    or not S.same_value(v, (S.OPTIMIZER_KEYS | self.plan.inert | self.defaults).get(k))
                )
            }
            extra = "".join(f", {k}={v!r}" for k, v in overrides.items())
            lines.append(f"  group {i}: {len(g['params'])} params{extra}")
        lines.append(")")
        return "\n".join(lines)


def _run(opt: Modular, closure: Callable[..., Any] | None) -> Tensor | None:
    with torch.set_grad_enabled(opt.differentiable):
        return opt._step(closure)


_run_eagerly = torch.compiler.disable(_run)  # a graph break under torch.compile


_INDUCTOR_OPTIONS = {"max_fusion_buffer_group_pairwise_attempts": 4}
"""Inductor options of ``compile=True``.  Inductor tries to fuse every pair of nodes that read a common buffer, up
to 64 neighbours each; the scalars realized once per step are read by the kernel of every parameter, so that
search grows with the number of parameters (47 of 110 s to compile a 6-layer transformer's step on a CPU).  The
fusions that matter (the ops on one parameter, which share its own buffers) are found with 4 (6 s)."""


def _compile_options(opt: Modular, compile: bool | dict[str, Any]) -> dict[str, Any] | None:  # noqa: A002
    """The ``torch.compile`` options of ``tz.Modular(..., compile=...)``, or None to step eagerly.

    Raises, naming the modules, for a chain that cannot be compiled; a chain that needs a closure steps eagerly,
    with a warning that says so.
    """
    if compile is False:
        return None
    if not (compile is True or isinstance(compile, dict)):
        raise TypeError(
            f"compile must be True, False or a dict of torch.compile options (e.g. {{'mode': 'max-autotune'}}), "
            f"got {compile!r}"
        )
    given = dict(compile) if isinstance(compile, dict) else {}
    options: dict[str, Any] = {"fullgraph": True, **given}
    if "mode" not in given and given.get("backend", "inductor") == "inductor":  # a mode or options, not both
        options["options"] = {**_INDUCTOR_OPTIONS, **given.get("options", {})}
    if opt.differentiable:
        raise ValueError(
            "compile=True and differentiable=True cannot be combined: the compiled step runs without autograd. "
            "Use one of them, or torch.compile your own differentiable training step."
        )
    blocked = [f"{m.key}: {type(m).__name__}" for m in opt.modules if not m.compilable]
    if blocked:
        raise ValueError(
            f"compile=True cannot compile this chain: {', '.join(blocked)} run(s) outside the compiled graph "
            "(a wrapped optimizer steps eagerly). Drop compile=True, or torch.compile(opt.step) to compile the "
            "rest of the chain around it."
        )
    if opt.root.requires_closure or opt._lr_missing_error:
        names = ", ".join(type(m).__name__ for m in opt.modules if m.needs_closure) or "a chain without tz.m.LR"
        warnings.warn(
            f"compile=True: {names} re-evaluates the loss with the closure, which cannot run inside a compiled "
            "step, so this optimizer steps eagerly.",
            stacklevel=3,
        )
        return None
    return options


def _bind(root: Chain, fuse: bool) -> list[Module]:
    leaves: list[Module] = []
    seen: set[int] = set()

    def visit(module: Module, key: str) -> None:
        if id(module) in seen:
            raise ValueError(
                f"the module {module!r} appears twice in the chain; create a separate instance for each place"
            )
        if module.key is not None:
            raise ValueError(
                f"the module {module!r} already belongs to another tz.Modular (its state and step counters live "
                "there); create a new instance for each optimizer, e.g. build the modules inside configure_optimizers."
            )
        seen.add(id(module))
        module.key = key
        if isinstance(module, Chain):
            module.fuse = fuse
            module._stages = None
            for i, child in enumerate(module.modules):
                visit(child, f"{key}.{i}" if key else str(i))
        elif module.children():
            for i, child in enumerate(module.children()):
                visit(child, f"{key}.{i}")
            leaves.append(module)
        else:
            leaves.append(module)

    visit(root, "")
    for i, m in enumerate(leaves):
        if m.creates_update and i > 0:
            before = ", ".join(type(x).__name__ for x in leaves[:i])
            raise ValueError(
                f"{type(m).__name__} builds the update from scratch (it does not use the incoming one), so it "
                f"must be the first module of the chain, but it comes after {before}. Move it to the front: "
                f"tz.Modular(params, tz.m.{type(m).__name__}(...), ...)."
            )
    return leaves
