"""Any ``torch.optim.Optimizer`` as a module of the chain."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...core.module import Module
from ...core.schema import Constraint, Rule, Setting, anything
from ._handoff import StateView, is_primitive, set_grads

if TYPE_CHECKING:
    from ...core.context import StepContext
    from ...core.modular import Modular

# optimizers whose step is not proportional to lr: fusing LR into their lr would change what they do
_NOT_LINEAR_IN_LR = tuple(
    c for c in (getattr(torch.optim, n, None) for n in ("Rprop", "ASGD", "LBFGS", "Adafactor")) if c is not None
)


@torch.compiler.disable
def _eager_step(optimizer: torch.optim.Optimizer) -> None:
    # under torch.compile(opt.step) the wrapped optimizer runs as it would on its own: eagerly (dynamo cannot trace
    # its state through the StateView); the modules before and after it still compile
    optimizer.step()


def _fuses(opt_cls: Any, fuse: bool | None) -> bool:
    if fuse is not None:
        return fuse
    if not inspect.isclass(opt_cls) or issubclass(opt_cls, _NOT_LINEAR_IN_LR):
        return False
    try:
        return "lr" in inspect.signature(opt_cls.__init__).parameters
    except (TypeError, ValueError):
        return False


def _accepted(
    opt_cls: type[torch.optim.Optimizer], kwargs: dict[str, Any], keys: tuple[str, ...], *values: Any
) -> bool:
    """Build ``opt_cls`` on a throwaway parameter with these settings; its own checks raise ``ValueError``."""
    opt_cls([torch.zeros(1, 1, requires_grad=True)], **{**kwargs, **dict(zip(keys, values, strict=True))})
    return True


class _Accepted(Constraint):
    """A value of one setting that ``opt_cls`` accepts with its other arguments as given to ``Wrap``."""

    def __init__(self, opt_cls: type[torch.optim.Optimizer], kwargs: dict[str, Any], key: str) -> None:
        self.opt_cls, self.kwargs, self.key = opt_cls, kwargs, key

    def problem(self, name: str, value: Any) -> tuple[str, str] | None:
        try:
            _accepted(self.opt_cls, self.kwargs, (self.key,), value)
        except ValueError as e:
            try:
                _accepted(self.opt_cls, self.kwargs, ())
            except ValueError:
                return None  # the constructor's arguments are refused as they are: the Rule names them all
            return f"{name} that {self.opt_cls.__name__} accepts", f"{value!r} ({e})"
        return None


class Wrap(Module):
    r"""Use any ``torch.optim.Optimizer`` (torch's, ``pytorch_optimizer``'s, your own) as a module.

    The current update is put into ``.grad`` and the wrapped optimizer steps.  When ``Wrap`` is the
    last stage it simply updates the parameters.  Otherwise its update is measured and undone:

    .. math::  u \leftarrow \theta - \operatorname{opt.step}(\theta, g{=}u), \qquad \theta \text{ unchanged}

    (one parameter-sized copy; the parameters are restored by an in-place copy, never ``Tensor.set_``).

    The wrapped optimizer gets one param group per param group of the ``Modular`` (split further by
    ``set_params`` groups of this module).  Every keyword argument except ``lr`` is a setting of this
    module, so a value given in the Modular's groups or in ``set_params`` reaches the wrapped
    optimizer's group, and schedulers reach ``betas``/``momentum`` when this module owns them.
    Settings not given as keyword arguments keep the wrapped optimizer's defaults.  Its per-parameter
    state lives in the Modular's ``state`` and is saved with it.

    **Learning rate.**  ``lr`` is fixed (like ``alpha`` elsewhere); use :class:`~torchzero.m.LR` after
    ``Wrap`` for schedules and per-group learning rates, and set ``lr=1``.  When ``LR`` directly
    follows, the two are fused: the wrapped optimizer runs with ``lr * LR.lr`` and no extra pass.  This
    assumes the wrapped step is proportional to ``lr`` (true for SGD, Adam(W), Adagrad, RMSprop, ...);
    it is off for ``Rprop``, ``ASGD``, ``LBFGS`` and ``Adafactor`` and for factories; force it with
    ``fuse``.

    Args:
        opt_cls: an optimizer class, or any callable ``f(param_groups, **kwargs) -> Optimizer``.
        fuse: fuse a following ``LR`` into the wrapped ``lr`` (None: when the update is linear in lr).
        **kwargs: passed to ``opt_cls``.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.ClipNorm(1), tz.m.Wrap(torch.optim.NAdam, lr=1), tz.m.LR(1e-3))

    The wrapped optimizer is ``module.optimizer`` once the Modular is built.
    """

    modifies_update_inplace = False  # the wrapped optimizer reads the update as .grad; the sink takes its move
    writes_params = True  # its optimizer writes the parameters and keeps its own state: no state_dtype/param_update
    compilable = False  # the wrapped optimizer steps eagerly, outside any compiled graph

    def __init__(self, opt_cls: Callable[..., torch.optim.Optimizer], fuse: bool | None = None, **kwargs: Any) -> None:
        if isinstance(opt_cls, torch.optim.Optimizer):
            raise TypeError(
                f"Wrap takes an optimizer class (or factory), not an optimizer instance ({type(opt_cls).__name__}): "
                "it builds the optimizer on the Modular's param groups itself. Pass the class and its arguments: "
                f"tz.m.Wrap({type(opt_cls).__name__}, lr=1, ...)."
            )
        if not callable(opt_cls):
            raise TypeError(f"Wrap takes an optimizer class such as torch.optim.Adam, got {opt_cls!r}")
        self.opt_cls = opt_cls
        self.kwargs = dict(kwargs)
        # the settings are the wrapped optimizer's, checked by it: torch.optim checks its arguments when it is built,
        # so they are checked by building it on a throwaway parameter (a factory's are left to the factory)
        keys = tuple(k for k in kwargs if k != "lr")
        self.schema = dict.fromkeys(keys, Setting(anything()))
        if inspect.isclass(opt_cls) and issubclass(opt_cls, torch.optim.Optimizer):
            self.schema = {k: _Accepted(opt_cls, self.kwargs, k) for k in keys}
            accepted = functools.partial(_accepted, opt_cls, self.kwargs, keys)
            self.cross_checks = (Rule(keys, accepted, f"settings {opt_cls.__name__} accepts"),)
        super().__init__({k: v for k, v in kwargs.items() if k != "lr"})
        self.fuses_lr = _fuses(opt_cls, fuse)
        self.optimizer: torch.optim.Optimizer | None = None
        self._opt: Modular | None = None
        self._base_lrs: list[Any] = []
        self._keys: list[tuple[int, tuple[int, ...]]] = []
        self._seen_layout: Any = None
        self._run_groups: list[tuple[int, int, int]] = []

    # ---------------------------------------------------------------- groups
    def _desired_groups(self, opt: Modular) -> tuple[list[tuple[int, tuple[int, ...]]], list[list[Tensor]]]:
        """One wrapped group per (torch group, set_params signature), the same runs the layout resolves settings
        for: settings given by *any* module's set_params (this one's, or another's that does not declare them)
        may differ inside one torch group."""
        parts = opt.plan.positions  # per partitioning module: (group, index) -> its set_params group
        keys: list[tuple[int, tuple[int, ...]]] = []
        params: list[list[Tensor]] = []
        for gi, group in enumerate(opt.param_groups):
            split: dict[tuple[int, ...], list[Tensor]] = {}
            for i, p in enumerate(group["params"]):
                split.setdefault(tuple(part.get((gi, i), -1) for part in parts), []).append(p)
            for sig in sorted(split):
                keys.append((gi, sig))
                params.append(split[sig])
        return keys, params

    def bind(self, opt: Modular) -> None:
        if self.optimizer is not None:
            raise ValueError("this Wrap module already belongs to an optimizer; create a new one for each tz.Modular")
        self._opt = opt
        self._keys, params = self._desired_groups(opt)
        self.optimizer = self.opt_cls([{"params": ps} for ps in params], **self.kwargs)
        if not isinstance(self.optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"Wrap: {self.opt_cls!r} returned {type(self.optimizer).__name__}, not a torch.optim.Optimizer"
            )
        assert self.key is not None
        self.optimizer.state = StateView(opt, self.key)  # type: ignore[assignment]
        self._base_lrs = [g.get("lr") for g in self.optimizer.param_groups]
        if self.fuses_lr and any(lr is None for lr in self._base_lrs):
            self.fuses_lr = False  # no lr to drive

    def _refresh(self, ctx: StepContext) -> None:
        """Follow changes of the Modular's groups (new groups, parameters swapped in place)."""
        assert self._opt is not None and self.optimizer is not None
        keys, params = self._desired_groups(self._opt)
        groups = self.optimizer.param_groups
        for i, (key, ps) in enumerate(zip(keys, params, strict=True)):
            if i < len(groups) and i < len(self._keys) and self._keys[i] == key:
                current = groups[i]["params"]
                if len(current) != len(ps) or any(a is not b for a, b in zip(current, ps, strict=True)):
                    current[:] = ps  # in place: LBFGS keeps a reference to this list
            elif i >= len(groups):
                self.optimizer.add_param_group({"params": ps})
                self._base_lrs.append(self.optimizer.param_groups[-1].get("lr"))
            else:
                raise RuntimeError(
                    "the Modular's param groups were reordered after it was built; Wrap cannot follow that. "
                    "Only add groups at the end (opt.add_param_group)."
                )
        self._keys = keys
        index = {key: i for i, key in enumerate(keys)}
        self._run_groups = [(run.start, run.stop, index[(run.group, run.sig)]) for run in ctx.layout.runs]
        self._seen_layout = ctx.layout

    def sync_settings(self, ctx: StepContext) -> None:
        """Copy this step's settings (and the fused lr) into the wrapped optimizer's groups."""
        fused = ctx.fused if ctx.fused_owner is self else None
        if ctx.layout is not self._seen_layout:
            self._refresh(ctx)
        assert self.optimizer is not None
        groups = self.optimizer.param_groups
        runs = self._run_groups
        for seg in ctx.segments(self):
            for start, stop, wi in runs:
                if start >= seg.start and stop <= seg.stop:
                    group = groups[wi]
                    group.update(seg.settings)
                    if fused is not None:
                        group["lr"] = self._base_lrs[wi] * seg.scale

    # ---------------------------------------------------------------- step
    def step(self, ctx: StepContext) -> None:
        assert self.optimizer is not None
        optimizer = self.optimizer
        self.sync_settings(ctx)
        originals = ctx.layout.originals
        saved_grads = [p.grad for p in originals]
        set_grads(ctx, ctx.update)

        def wrapped_step() -> None:
            try:
                _eager_step(optimizer)
            finally:
                for p, g in zip(originals, saved_grads, strict=True):
                    p.grad = g

        ctx.external_step(wrapped_step)  # the wrapped optimizer moves the parameters; the sink decides what stays

    # ---------------------------------------------------------------- state
    def get_global_state(self) -> dict[str, Any]:
        if self.optimizer is not None:
            declared = set(self.defaults)
            self.global_state["groups"] = [
                {k: v for k, v in g.items() if k != "params" and k not in declared and is_primitive(v)}
                for g in self.optimizer.param_groups
            ]
        return super().get_global_state()

    def on_load(self) -> None:
        saved = self.global_state.get("groups")
        if self.optimizer is None or not saved:
            return
        for group, values in zip(self.optimizer.param_groups, saved, strict=False):
            for k, v in values.items():
                group[k] = tuple(v) if isinstance(group.get(k), tuple) and isinstance(v, list) else v
        self._seen_layout = None

    def extra_repr(self) -> str:
        name = getattr(self.opt_cls, "__name__", repr(self.opt_cls))
        args = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"{name}{args}"
