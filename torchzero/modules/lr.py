"""The learning rate: the one module that has ``lr``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..core.module import Transform
from ..foreach import ops

if TYPE_CHECKING:
    from ..core.context import StepContext
    from ..core.modular import Modular


class LR(Transform, torch.optim.Optimizer):
    r"""Multiply the update by the learning rate: :math:`u \leftarrow \eta\, u`.

    ``lr`` is the only setting named ``lr`` in torchzero (other modules call their step size ``alpha``),
    so a per-group ``lr`` and every torch scheduler reach exactly this module.

    Args:
        lr: learning rate.
        scheduler_cls: optional callable ``f(optimizer) -> scheduler``; the scheduler is built on this
            module (which shares the optimizer's param groups) and stepped once after every
            ``opt.step()``.  Schedulers that cycle momentum (``OneCycleLR``, ``CyclicLR``) reach every
            module with ``betas`` or ``momentum``.  ``ReduceLROnPlateau`` is stepped with the step's loss
            (so it needs a closure).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Adam(), tz.m.LR(1e-3))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=1000)

    When ``LR`` follows a module that can fuse it (``Adam``, ``SGD``, ``Wrap``), both run as one pass.
    """

    def __init__(self, lr: float = 1e-3, scheduler_cls: Callable[[Any], Any] | None = None) -> None:
        Transform.__init__(self, {"lr": lr})
        self.scheduler_cls = scheduler_cls
        self.scheduler: Any = None
        self._opt: Modular | None = None

    # torch schedulers see this module as an optimizer that shares the Modular's groups
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        if self._opt is None:
            raise RuntimeError("this LR module is not part of a tz.Modular yet; build the optimizer first")
        return self._opt.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self._opt.state if self._opt is not None else {}

    def bind(self, opt: Modular) -> None:
        self._opt = opt
        if self.scheduler_cls is not None:
            if opt.get_lr_module() is not self:
                raise ValueError("only the first LR module of a chain can own a scheduler (it owns the group 'lr')")
            # cycle momentum too when the optimizer exposes betas/momentum
            self.defaults = {**opt.defaults, "lr": self.defaults["lr"]}
            try:
                self.scheduler = self.scheduler_cls(self)
            finally:
                self.defaults = {"lr": self.defaults["lr"]}

    def step(self, ctx: StepContext, fused: Any = None) -> None:  # type: ignore[override]
        segments = ctx.segments(self)
        for seg in segments:
            lr = seg.settings["lr"]
            if ctx.is_last and not isinstance(lr, Tensor):
                ops.add_(seg.params, seg.update, alpha=-lr)
            else:
                ops.mul_(seg.update, lr)
                if ctx.is_last:
                    ops.sub_(seg.params, seg.update)
        if ctx.is_last:
            ctx.mark_params_written()

    def after_step(self, ctx: StepContext) -> None:
        self._opt_called = True  # what torch schedulers check to know the optimizer stepped
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if ctx.loss is None:
                raise RuntimeError(
                    "LR(scheduler_cls=ReduceLROnPlateau) steps the scheduler with the step's loss, so step() needs "
                    "a closure. Without one, build the scheduler yourself and call scheduler.step(val_loss)."
                )
            self.scheduler.step(float(ctx.loss))
        else:
            self.scheduler.step()

    def get_global_state(self) -> dict[str, Any]:
        if self.scheduler is not None:
            self.global_state["scheduler"] = self.scheduler.state_dict()
        return super().get_global_state()

    def on_load(self) -> None:
        if self.scheduler is not None and "scheduler" in self.global_state:
            self.scheduler.load_state_dict(self.global_state["scheduler"])

    def extra_repr(self) -> str:
        sched = f", scheduler_cls={self.scheduler_cls!r}" if self.scheduler_cls is not None else ""
        return f"lr={self.defaults['lr']!r}{sched}"

    def __repr__(self) -> str:
        return Transform.__repr__(self)
