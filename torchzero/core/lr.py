"""The learning rate: the one module that has ``lr``, a core concept (schedulers, fusion, param groups)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .module import Transform
from .schema import Setting, a_callable, at_least, optional
from .settings import EXPOSED_KEYS

if TYPE_CHECKING:
    from .context import StepContext
    from .modular import Modular


class LR(Transform, torch.optim.Optimizer):
    r"""Multiply the update by the learning rate: :math:`u \leftarrow \eta\, u`.

    ``lr`` is the only setting named ``lr`` in torchzero (other modules call their step size ``alpha``),
    so a per-group ``lr`` and every torch scheduler reach exactly this module.

    Three ways to schedule it, all equivalent to the same scheduler on a ``torch.optim`` optimizer:

    * ``LR(lr, scheduler_cls=lambda o: OneCycleLR(o, max_lr=0.1, total_steps=1000))``: the scheduler is
      built on this module and stepped once after every ``opt.step()``; its ``state_dict`` is saved in
      the optimizer's.
    * ``OneCycleLR(opt, ...)`` on the ``tz.Modular`` itself, stepped by you.
    * ``OneCycleLR(opt.get_lr_module(), ...)`` on this module, stepped by you.

    This module shares the optimizer's ``param_groups`` and exposes its ``betas``/``momentum`` in
    ``defaults``, so in all three cases momentum-cycling schedulers (``OneCycleLR``, ``CyclicLR``) cycle
    the ``betas`` or ``momentum`` of the module that owns them (the first module declaring them; other
    modules declaring the same key follow it once a scheduler changes it).  A scheduler you build
    yourself keeps its own ``state_dict``, as with torch.

    Args:
        lr: learning rate.
        scheduler_cls: optional callable ``f(optimizer) -> scheduler`` (see above).
            ``ReduceLROnPlateau`` is stepped with the loss of each step, so ``step()`` then needs a
            closure (checked before the step changes anything).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Adam(), tz.m.LR(1e-3))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=1000)

    When ``LR`` follows a module that can fuse it (``Adam``, ``SGD``, ``Wrap``, ``WeightDecay``), both
    run as one pass; the fused lr is read at the same step as the unfused one (no lag after a scheduler
    step).  Without any ``LR`` in the chain there is no ``lr``: a scheduler then fails with an error
    saying to add one.
    """

    schema = {
        "lr": Setting(
            at_least(0),
            "The learning rate is a non-negative number such as 1e-3, or a one-element Tensor "
            "(torch.tensor(1e-3)) for compiled or captured loops.",
        ),
        "scheduler_cls": Setting(
            optional(a_callable()), "Pass e.g. lambda opt: torch.optim.lr_scheduler.StepLR(opt, 10)."
        ),
    }

    def __init__(self, lr: float = 1e-3, scheduler_cls: Callable[[Any], Any] | None = None) -> None:
        Transform.__init__(self, {"lr": lr}, options={"scheduler_cls": scheduler_cls})
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
        # A scheduler built on this module sees the optimizer's momentum keys (``betas``/``momentum``) in
        # ``defaults``, like on the Modular itself, so momentum-cycling schedulers (OneCycleLR's default)
        # accept it; the groups are shared, so the cycled values reach their modules.  LR ignores them.
        exposed = {k: v for k, v in opt.defaults.items() if k in EXPOSED_KEYS and k not in ("lr", "weight_decay")}
        self.defaults = {"lr": self.defaults["lr"], **exposed}
        if self.scheduler_cls is not None:
            if opt.get_lr_module() is not self:
                raise ValueError(
                    "only the first LR module of a chain can own a scheduler (it owns the group 'lr'); "
                    "pass scheduler_cls to the first tz.m.LR of the chain"
                )
            # an lr from set_params wins over the group's lr, which is what the scheduler changes
            for m in opt.modules:
                if m is not self and "lr" in m.defaults:
                    continue  # another LR module: its own lr is its own business
                for i, group in enumerate(m.own_groups or []):
                    if "lr" in group:
                        raise ValueError(
                            f"LR(scheduler_cls=...) schedules the 'lr' of the optimizer's param groups, but "
                            f"{type(m).__name__}.set_params group {i} sets lr={group['lr']!r}, which wins over the "
                            "group's lr, so the scheduler would never reach those parameters. Put per-parameter "
                            "learning rates in the optimizer's param groups instead (tz.Modular([{'params': ..., "
                            "'lr': ...}, ...], ...)), or drop scheduler_cls and schedule it yourself."
                        )
            self.scheduler = self.scheduler_cls(self)
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                opt.register_step_pre_hook(_needs_closure_for_plateau)

    fusable_scale = True  # a transform right before it that fuses_lr applies the lr itself (one pass)
    # modifies_update_inplace (the default): it scales the update in place where the chain owns it

    def step(self, ctx: StepContext) -> None:  # type: ignore[override]
        for seg in ctx.segments(self):
            seg.emit(seg.update, seg.settings["lr"])

    def after_step(self, ctx: StepContext) -> None:
        self._opt_called = True  # what torch schedulers check to know the optimizer stepped
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            assert ctx.loss is not None  # checked before the step by _needs_closure_for_plateau
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


def _needs_closure_for_plateau(opt: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    closure = args[1] if len(args) > 1 else kwargs.get("closure")
    if closure is None:
        raise RuntimeError(
            "LR(scheduler_cls=ReduceLROnPlateau) steps the scheduler with the step's loss, so step() needs a "
            "closure: opt.step(closure). Without one, build the scheduler yourself on the optimizer and call "
            "scheduler.step(val_loss) after opt.step(). Nothing was changed."
        )
