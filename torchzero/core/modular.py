"""``tz.Modular``: a chain of modules as a real ``torch.optim.Optimizer``."""

from __future__ import annotations

import json
import types
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..foreach import Layout, ops, shard
from . import precision, schema, sink
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
        update_rms: every update rule (a module that emits a new update through the write sink: ``Adam``,
            ``SGD``, ``Lion``, ``Prodigy``, ...) reports ``update_rms``, the root mean square of its output per
            param group, without the learning rate of a fused ``LR``: :math:`\sqrt{\tfrac1n\sum_i u_i^2}`,
            e.g. ``opt.metrics()["0/0.Adam/update_rms"]``.  It is kept as a 0-dim tensor (no host sync) and
            costs one norm per tensor a step, plus an update-sized buffer for a fused kernel, which then writes
            the parameters in a second pass.  Off by default.
        state_dtype: the dtype modules keep their per-parameter state in, for every group that does not set its
            own (``"bfloat16"`` moments for fp32 parameters, ``"float32"`` moments for bf16 parameters); None keeps
            it in the parameter's dtype.  Modules compute in the wider of the two dtypes.  See
            :mod:`torchzero.core.precision` and the "Low precision" section of the state guide.
        param_update: how the parameters are written, for every group that does not set its own: ``"plain"``
            (round to nearest, as torch.optim), ``"kahan"`` (Kahan summation, a buffer per parameter) or
            ``"stochastic_rounding"`` (bf16/fp16 parameters rounded up or down at random, unbiased).
        rounding_seed: the seed of the generators ``param_update="stochastic_rounding"`` draws from (one per
            device, saved in ``state_dict``).
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

    update_rms: bool = False
    """report each update rule's RMS (see the ``update_rms`` argument); a class default for optimizers unpickled
    from before the setting existed"""

    def __init__(
        self,
        params: Iterable[Any],
        *modules: Any,
        fuse: bool = True,
        reuse_evaluation: bool = False,
        grad_as_scratch: bool = False,
        differentiable: bool = False,
        update_rms: bool = False,
        state_dtype: str | torch.dtype | None = None,
        param_update: str = "plain",
        rounding_seed: int = 0,
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
        given = {"state_dtype": state_dtype, "param_update": param_update}
        schema.check_optimizer_settings(given, " (a tz.Modular argument)")
        if isinstance(rounding_seed, bool) or not isinstance(rounding_seed, int):
            raise TypeError(f"rounding_seed must be an int, got {rounding_seed!r}")
        self._precision_defaults = {
            "state_dtype": precision.state_dtype_name(state_dtype), "param_update": param_update
        }  # fmt: skip
        """what ``state_dtype``/``param_update`` given to the constructor put into every group (when not default)"""
        self.rounding_seed = rounding_seed
        self._rounding_rng: dict[str, torch.Generator] = {}
        self.differentiable = differentiable
        self.reuse_evaluation = reuse_evaluation
        self.grad_as_scratch = grad_as_scratch
        self._last_reports: dict[str, tuple[dict[str, Any], dict[str, Any], int]] = {}
        """``"step"`` -> the reports, free-form info and closure calls of the last successful step (``metrics``,
        ``last_info``); a dict that is changed, not an attribute that is set: dynamo drops attribute writes on an
        optimizer in a compiled step"""
        if not isinstance(update_rms, bool):
            raise TypeError(f"update_rms is True or False (report each update rule's RMS or not), got {update_rms!r}")
        self.update_rms = update_rms
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
        self._check_precision(self.param_groups)
        for m in self._leaves:
            bind = getattr(m, "bind", None)
            if bind is not None:
                bind(self)
        self._compile_options = _compile_options(self, compile)
        self._compiled_run: Callable[..., Any] | None = None
        self._eager_steps = {"left": 1}
        """compile=True: the first step runs eagerly and creates the state, so that no compiled graph creates it
        (one compile fewer; the state is then a static address from the first compiled step on)"""

    # ---------------------------------------------------------------- groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"a param group must be a dict, got {type(param_group).__name__}")
        S.check_group_keys(param_group, len(self.param_groups), self._leaves)
        schema.check_new_group(self, param_group, len(self.param_groups))
        given = frozenset(k for k in param_group if k not in S.FRAMEWORK_KEYS)
        super().add_param_group(param_group)
        for key, value in (self.plan.inert | S.OPTIMIZER_KEYS | self._given_precision()).items():
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
            self._check_precision(self.param_groups)
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
            for key, value in (self.defaults | plan.inert | S.OPTIMIZER_KEYS | self._given_precision()).items():
                group.setdefault(key, value)
            if "params" in group and not isinstance(group["params"], list):
                group["params"] = list(group["params"])
            if self._lr_missing_error and not isinstance(group, ParamGroup):
                groups[i] = ParamGroup(group)
        plan.adopt(groups, given)
        S.closure_negated(groups, self._root.requires_closure)
        plan.check_uniform(groups, self.defaults)

    def _given_precision(self) -> dict[str, Any]:
        """The low-precision settings given to the constructor that differ from the default (put in every group)."""
        return {k: v for k, v in self._precision_defaults.items() if v != precision.KEYS[k]}

    def _check_precision(self, groups: list[dict[str, Any]]) -> None:
        """Refuse low-precision settings that would change nothing or cannot apply (before anything changes)."""
        for i, group in enumerate(groups):
            default = group.get("state_dtype") is None and group.get("param_update", "plain") == "plain"
            if default:
                continue
            if group.get("state_dtype") is not None and not any(m.keeps_state for m in self._leaves):
                names = ", ".join(type(m).__name__ for m in self._leaves)
                raise ValueError(
                    f"param group {i} sets state_dtype={group['state_dtype']!r}, but no module of this chain "
                    f"({names}) keeps per-parameter state (declares keeps_state), so it would change nothing. "
                    "Remove state_dtype, or add a module with state (tz.m.Adam(), tz.m.SGD(momentum=0.9), ...)."
                )
            own = [type(m).__name__ for m in self._leaves if m.writes_params]
            if own:
                raise ValueError(
                    f"param group {i} sets state_dtype={group.get('state_dtype')!r}, param_update="
                    f"{group.get('param_update', 'plain')!r}, but {', '.join(own)} moves the parameters itself and "
                    "keeps its own state: its writes are rounded before they reach torchzero's sink and its state "
                    "is not created by torchzero. Leave both at their defaults with it, or use torchzero's module "
                    "for the rule (tz.m.SGD, tz.m.Adam, ...)."
                )
            if self.differentiable:
                raise ValueError(
                    f"param group {i} sets state_dtype={group.get('state_dtype')!r}, param_update="
                    f"{group.get('param_update', 'plain')!r}, which differentiable=True does not support (rounding "
                    "and compensated writes have no useful derivative). Leave them at their defaults."
                )

    def rounding_generator(self, device: torch.device) -> torch.Generator:
        """The generator stochastic rounding draws from on ``device`` (seeded with ``rounding_seed`` when first
        used, saved in ``state_dict``)."""
        key = str(device)
        gen = self._rounding_rng.get(key)
        if gen is None:
            gen = self._rounding_rng[key] = torch.Generator(device).manual_seed(self.rounding_seed)
        return gen

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

    def _initializing_closure(self) -> Callable[..., Tensor] | None:
        """A constant-loss closure for the step that creates a fresh optimizer's state, or None.

        ``torch.distributed.checkpoint`` (``get_optimizer_state_dict`` / ``set_optimizer_state_dict``) makes a fresh
        optimizer's state by setting every gradient to zero and calling ``step()`` without a closure.  A chain
        that re-evaluates the loss takes that step as if the loss were constant: the closure it gets returns 0 and
        leaves the zero gradients, so its state exists (and is then overwritten by the loaded one).  Only then:
        state empty, every group's ``lr`` is 0 (DCP zeroes it for that step) and every parameter that requires grad
        has an all-zero ``.grad`` (read here, one host sync, on what would otherwise be an error).
        """
        if self.state or not self._root.requires_closure:
            return None
        # DCP also sets every group's lr to 0 for that step: a user's forgotten closure (lr > 0) still raises
        if any(float(g["lr"]) != 0 for g in self.param_groups if "lr" in g):
            return None
        params = [p for p in self._all_params() if p.requires_grad]
        grads = [p.grad for p in params]
        if not params or any(g is None for g in grads):
            return None
        local = [shard.local(g) for g in grads if g is not None]  # a DTensor's shard
        if any(bool(g.any()) for g in local):
            return None

        def constant(backward: bool = True) -> Tensor:
            # zero, but a function of the parameters (modules that differentiate the loss need a graph)
            with torch.enable_grad():
                squares = [
                    ((p.real.square() + p.imag.square()) if p.is_complex() else p.square()).sum() for p in params
                ]
                loss = squares[0]
                for square in squares[1:]:  # mixed devices and dtypes: no stack
                    loss = loss + square.to(loss.device)
                loss = loss * 0
            if backward:  # the gradient of a constant, laid out like each parameter (a DTensor keeps its placements)
                for p in params:
                    p.grad = torch.zeros_like(p)
            return loss

        return constant

    def _check_ready(self, closure: Any) -> None:
        self._sync_groups()
        S.check_inert_keys(self.param_groups, self.plan.declared)
        self._check_precision(self.param_groups)
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

        A chain that needs a closure raises without one, except on the step ``torch.distributed.checkpoint`` takes
        to create a fresh optimizer's state (never stepped nor loaded, every lr 0, every gradient exactly zero):
        that step sees a constant loss, and its random draws do not advance the global random generators.

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
        wrapped = Closure(closure, self._all_params, none_ok=True, negate=negate, decides=False)
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
        if closure is None and self._root.requires_closure:
            initializing = self._initializing_closure()
            if initializing is not None:
                # random draws of this step (random directions) must not shift the run that is being resumed
                devices = [p.device for p in self._all_params() if p.device.type == "cuda"]
                with torch.random.fork_rng(devices=sorted(set(devices), key=str)):
                    return self._step(initializing)
        self._check_ready(closure)
        needs_loss = self._root.requires_closure
        negate = S.closure_negated(self.param_groups, needs_loss)  # maximize: the chain sees -loss
        wrapped = (
            Closure(closure, self._all_params, none_ok=not needs_loss, negate=negate, decides=needs_loss)
            if closure is not None
            else None
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
        with ops.sharded_mode(layout.sharded):  # FSDP2 shards: elementwise ops on the local shards
            return self._run_chain(layout, closure, wrapped, loss)

    def _run_chain(self, layout: Layout, closure: Any, wrapped: Closure | None, loss: Tensor | None) -> Tensor | None:
        """The chain's part of a step on ``layout`` (see :meth:`_step`)."""
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
        ctx.flush_state()
        # a stepped optimizer has state, if only an empty entry: torch.distributed.checkpoint steps an optimizer
        # without state once with zero gradients "to create it", which would move a stateless chain's counters
        if not self.state:
            self.state[next(p for p in self._all_params() if p.requires_grad)]  # noqa: B018 - the defaultdict adds it
        if ctx.final_loss is not None and ctx.params_written and self.reuse_evaluation and wrapped is not None:
            params = self._all_params()
            kept = wrapped.signed(ctx.final_loss)  # the user's loss: maximize may change before the next step
            self.plan.reusable = (closure, kept, self._versions(), [p.detach().clone() for p in params])
        self._finish_reports(ctx, wrapped)
        return ctx.loss if wrapped is None else wrapped.signed(ctx.loss)  # the closure's loss, not the chain's

    # ---------------------------------------------------------------- metrics
    def _finish_reports(self, ctx: StepContext, wrapped: Closure | None) -> None:
        """Keep the reports of the step that just succeeded (read by ``metrics`` and ``last_info``)."""
        # kept in a dict made by __init__: torch.compile drops a new attribute set on the optimizer in a compiled
        # step, but keeps a mutation of an existing dict
        self._last_reports["step"] = (ctx.metrics(), ctx.info, 0 if wrapped is None else wrapped.calls)

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
        """torch's optimizer state dict plus the chain's own state under ``"torchzero"``.

        The chain's state (the module signature, each module's ``global_state`` and which per-parameter state
        entries exist) is written twice: as the top-level ``"torchzero"`` entry, and, because
        ``torch.distributed.checkpoint``'s ``get_optimizer_state_dict`` keeps only ``state`` and ``param_groups``,
        also in ``param_groups[0]["torchzero"]`` as one string (DCP's loaders take nested containers apart and lose
        empty ones, tuples and integer keys; a string is one value, saved and loaded whole, whatever the structure
        of a fresh optimizer's).  ``load_state_dict`` reads the top-level entry, or this one when it is absent.
        """
        sd = super().state_dict()
        for i, p in enumerate(self._all_params()):
            # every trained parameter has an entry, if empty: DCP refuses a checkpoint without one for a parameter
            # that requires grad (whole-vector modules keep their state on the first parameter)
            if p.requires_grad:
                sd["state"].setdefault(i, {})
        extra = {
            "chain": self._signature(),
            "modules": {m.key: m.get_global_state() for m in self._leaves},
            "entries": _entries(sd["state"], len(self._all_params())),
        }
        if self._rounding_rng:
            extra["rounding_rng"] = {k: g.get_state() for k, g in self._rounding_rng.items()}
        sd[_STATE_KEY] = extra
        if sd["param_groups"]:
            sd["param_groups"][0] = {**sd["param_groups"][0], _STATE_KEY: _encode(extra)}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_groups = [
            {k: v for k, v in g.items() if k != _STATE_KEY} if isinstance(g, dict) else g
            for g in state_dict.get("param_groups", [])
        ]
        extra = state_dict.get(_STATE_KEY)
        if extra is None:
            extra = _group_extra(state_dict.get("param_groups", []))
        if extra is None:
            raise ValueError(
                "this state dict was not saved by tz.Modular (it has no 'torchzero' entry); load it into the "
                "optimizer class that saved it. (torch.distributed.checkpoint keeps the entry in "
                "param_groups[0]; StateDictOptions(flatten_optimizer_state_dict=True) drops it, leave that off.)"
            )
        saved, mine = list(extra["chain"]), self._signature()
        if saved != mine:
            raise ValueError(
                f"this state dict was saved from a different chain: saved {saved}, this optimizer has {mine}. "
                "Build the optimizer with the same modules in the same order before loading."
            )
        self._sync_groups()  # a host may have replaced the groups before loading (Lightning's BaseFinetuning)
        groups = self.param_groups
        if len(groups) != len(saved_groups) or any(
            len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups, strict=True)
        ):
            raise ValueError(
                "this state dict was saved for a different parameter layout: saved group sizes "
                f"{[len(s['params']) for s in saved_groups]}, this optimizer has {[len(g['params']) for g in groups]}."
            )
        schema.check_groups(self, saved_groups, "the state dict's param group")
        _check_entries(extra.get("entries"), state_dict.get("state", {}), saved_groups)
        keep = _state_keeping_dtype(state_dict)
        plain: dict[str, Any] = {k: v for k, v in state_dict.items() if k not in (_STATE_KEY, "state")}
        plain["param_groups"] = saved_groups
        # the empty entries state_dict adds for DCP carry nothing: loading them would key state to tensors a host
        # may swap out of the groups right after (Accelerate's FSDP2 prepare round-trips the state dict, then
        # replaces the parameters), and state_dict would then meet keys that are in no group
        plain["state"] = {
            k: v
            for k, v in state_dict.get("state", {}).items()
            if k not in keep and not (isinstance(v, dict) and not v)
        }
        super().load_state_dict(plain)
        if keep:  # torch casts floating state to the parameter's dtype: not that of groups that set state_dtype
            for saved_group, group in zip(saved_groups, self.param_groups, strict=True):
                for pid, p in zip(saved_group["params"], group["params"], strict=True):
                    if pid in keep:
                        self.state[p] = _moved(keep[pid], p.device)
        if self._lr_missing_error:
            self.param_groups[:] = [ParamGroup(g) for g in self.param_groups]
        self._sync_groups()  # the loaded dicts replace the groups (and a host may have replaced the list before)
        for m in self._leaves:
            m.set_global_state(extra["modules"].get(m.key, {}))
        self._rounding_rng = {}
        for device, rng_state in extra.get("rounding_rng", {}).items():
            self.rounding_generator(torch.device(device)).set_state(rng_state)
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


def _state_keeping_dtype(state_dict: dict[str, Any]) -> dict[Any, Any]:
    """The saved state of the parameters in groups that set ``state_dtype``, by parameter id: loaded in the dtype
    it was saved in (torch would cast it to the parameter's dtype)."""
    ids = {pid for g in state_dict["param_groups"] if g.get("state_dtype") is not None for pid in g["params"]}
    return {pid: v for pid, v in state_dict["state"].items() if pid in ids}


def _moved(value: Any, device: torch.device) -> Any:
    """A copy of saved state on ``device``, dtypes kept (nested dicts and lists as torch's own loader walks them)."""
    if isinstance(value, Tensor):
        return value.to(device=device, copy=True)
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(v, device) for v in value)
    return value


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


def _paths(value: Any, prefix: str = "") -> list[str]:
    """The ``/``-joined key paths of the leaves of one parameter's (nested) state dict."""
    if not isinstance(value, Mapping):
        return [prefix]
    return [path for k, v in value.items() for path in _paths(v, f"{prefix}/{k}" if prefix else str(k))]


def _entries(state: Mapping[Any, Any], n: int) -> list[list[str]]:
    """Which state entries each parameter has, by position: what a loader must find again."""
    return [sorted(_paths(state[i])) if i in state else [] for i in range(n)]


def _group_extra(groups: Any) -> dict[str, Any] | None:
    """The chain's state as ``state_dict`` also keeps it in the first param group (for DCP), or None."""
    if not groups or not isinstance(groups[0], Mapping):
        return None
    packed = groups[0].get(_STATE_KEY)
    return _decode(packed) if isinstance(packed, str) else None


def _encode(value: Any) -> str:
    """``value`` (Python primitives, containers, small tensors) as one JSON string that :func:`_decode` reverses.

    Containers are tagged so that tuples, integer keys and floats (``float.hex``: exact, and inf/nan too) come
    back as they were; no code is run on decoding.
    """

    def enc(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, str)):
            return v  # JSON keeps them apart and exact
        if isinstance(v, float):
            return {"f": v.hex()}
        if isinstance(v, Mapping):
            return {"d": [[enc(k), enc(x)] for k, x in v.items()]}
        if isinstance(v, (list, tuple)):
            return {"t" if isinstance(v, tuple) else "l": [enc(x) for x in v]}
        if isinstance(v, Tensor):
            return {"T": [str(v.dtype).removeprefix("torch."), enc(v.detach().cpu().tolist())]}
        raise TypeError(
            f"a module's global_state holds a {type(v).__name__}, which state_dict cannot save; keep Python "
            "numbers, strings and containers of them there (tensors belong in opt.state)"
        )

    return json.dumps(enc(value), separators=(",", ":"))


def _decode(text: str) -> Any:
    def dec(v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        ((tag, x),) = v.items()
        if tag == "f":
            return float.fromhex(x)
        if tag == "d":
            return {dec(k): dec(y) for k, y in x}
        if tag in ("t", "l"):
            items = [dec(y) for y in x]
            return tuple(items) if tag == "t" else items
        return torch.tensor(dec(x[1]), dtype=getattr(torch, x[0]))

    return dec(json.loads(text))


def _check_entries(entries: Any, state: Mapping[Any, Any], groups: list[dict[str, Any]]) -> None:
    """Raise if a state entry the saving optimizer had is missing from the state dict being loaded.

    ``torch.distributed.checkpoint``'s ``dcp.load`` fills in only the entries the state dict it is given already
    has, so loading into an optimizer whose state was never made leaves the checkpoint's state behind, silently.
    """
    if entries is None:  # saved before the entries were recorded
        return
    ids = [i for g in groups for i in g["params"]]
    for pos, (expected, pid) in enumerate(zip(entries, ids, strict=False)):
        have = set(_paths(state[pid])) if pid in state else set()
        missing = [e for e in expected if e not in have]
        if missing:
            raise ValueError(
                f"the state dict being loaded lacks state that the saving optimizer had for parameter {pos} "
                f"({', '.join(missing)}). With torch.distributed.checkpoint, dcp.load fills in only the entries the "
                "target state dict already has: build the target with get_optimizer_state_dict(model, opt) on an "
                "optimizer whose state exists (DCP makes it with a zero-gradient step), or load with "
                "StateDictOptions(full_state_dict=True) from a state dict read whole. Nothing was loaded."
            )
