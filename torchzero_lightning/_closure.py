"""The closures a :class:`~torchzero_lightning.TorchzeroMixin` hands to ``tz.Modular.step``.

Everything here that reaches into Lightning's internals is listed in one place, so a Lightning upgrade
has one file to check:

* ``lightning.pytorch.trainer.call._call_strategy_hook`` / ``_call_lightning_module_hook`` /
  ``_call_callback_hooks``: how Lightning itself runs ``training_step``, ``backward`` and user hooks
  (they set the current hook name that ``self.log`` checks, and run the profiler);
* ``ClosureResult`` and ``AbstractClosure._result``: when a chain's first evaluation is loss-only
  (``RandomizedFDM``), Lightning's own closure never runs, so we store the step's output where the
  training loop reads it;
* ``LightningOptimizer._on_before_step`` / ``_on_after_step``: progress tracking of manual optimization.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loops.optimization.automatic import ClosureResult
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, Strategy
from lightning.pytorch.trainer import call
from torch import Tensor

import torchzero as tz

if TYPE_CHECKING:
    import lightning.pytorch as pl


def closure_modules(opt: Any) -> list[str]:
    """Names of the modules of a ``tz.Modular`` that re-evaluate the loss (empty for plain chains)."""
    if isinstance(opt, LightningOptimizer):
        opt = opt.optimizer
    if not isinstance(opt, tz.Modular):
        return []
    return [type(m).__name__ for m in opt.modules if m.needs_closure]


def _these(opt: tz.Modular) -> str:
    names = closure_modules(opt)
    return f"{', '.join(names)} {'re-evaluates' if len(names) == 1 else 're-evaluate'} the loss"


def check_supported(trainer: pl.Trainer, opt: tz.Modular, *, manual: bool) -> None:
    """Raise before anything changes if this run cannot give ``opt`` a ``closure(backward)``."""
    what = _these(opt)
    precision = trainer.precision_plugin
    if isinstance(precision, MixedPrecision) and precision.scaler is not None:
        raise RuntimeError(
            f"{what} during opt.step(), but precision='16-mixed' steps through a "
            "GradScaler, which calls the closure once and then calls opt.step() without it, so a closure "
            "chain cannot run (and every re-evaluated gradient would need its own unscale and inf check). "
            "Use precision='bf16-mixed' (no scaler) or '32-true', or a chain without closure modules. "
            "Nothing was changed."
        )
    if not isinstance(precision, MixedPrecision) and type(precision).optimizer_step is not Precision.optimizer_step:
        raise RuntimeError(
            f"{what} during opt.step(), which needs a closure(backward) that "
            f"{type(precision).__name__} does not pass through (it changes how the optimizer is stepped). "
            "Supported: precision '32-true', '64-true', 'bf16-mixed', 'bf16-true', '16-true'. Nothing was changed."
        )
    strategy = trainer.strategy
    if isinstance(strategy, FSDPStrategy):
        raise RuntimeError(
            f"{what} during opt.step(), but FSDPStrategy (FSDP1) hands the optimizer flattened per-rank shards of "
            "the parameters as plain tensors, so quantities over all parameters (line-search slopes, curvature "
            "pairs) would be computed per rank and the ranks would fall out of step. Use "
            "ModelParallelStrategy with fully_shard in configure_model (FSDP2: the parameters are DTensors), "
            "strategy='ddp', or a chain without closure modules. Nothing was changed."
        )
    if type(strategy).optimizer_step not in (Strategy.optimizer_step, DDPStrategy.optimizer_step) or (
        getattr(strategy, "_model_averager", None) is not None
    ):
        raise RuntimeError(
            f"{what} during opt.step(); torchzero_lightning supports closure chains on one device, with DDP and "
            f"with ModelParallelStrategy (FSDP2), but this run uses {type(strategy).__name__}, which steps the "
            "optimizer its own way. Use strategy='auto' or 'ddp', or a chain without closure modules. Nothing was "
            "changed."
        )


def _loss_of(output: Any, where: str) -> Tensor:
    loss = output.get("loss") if isinstance(output, Mapping) else output
    if not isinstance(loss, Tensor):
        raise RuntimeError(
            f"{where} returned {type(output).__name__}, but a closure chain re-evaluates the loss and needs it on "
            "every call: return the loss tensor (or a dict with 'loss') from training_step on every batch."
        )
    return loss


def _mean_over_processes(trainer: pl.Trainer, loss: Tensor) -> Tensor:
    """The loss averaged over processes, so every rank takes the same branch (a no-op on one process)."""
    loss = loss.detach()
    if trainer.world_size == 1:
        return loss
    dtype = torch.float64 if loss.dtype == torch.float64 else torch.float32  # gloo has no bf16/fp16 sums
    return trainer.strategy.reduce(loss.to(dtype).clone(), reduce_op="mean")


def before_optimizer_step(trainer: pl.Trainer, opt: tz.Modular) -> None:
    call._call_callback_hooks(trainer, "on_before_optimizer_step", opt)
    call._call_lightning_module_hook(trainer, "on_before_optimizer_step", opt)


def clip_gradients(trainer: pl.Trainer, opt: tz.Modular) -> None:
    call._call_lightning_module_hook(
        trainer,
        "configure_gradient_clipping",
        opt,
        gradient_clip_val=trainer.gradient_clip_val,
        gradient_clip_algorithm=trainer.gradient_clip_algorithm,
    )


class _StepClosure:
    """A ``closure(backward=True)`` for one optimizer step: the first evaluation is the step's own, later ones
    (line searches, finite differences) run with ``self.log`` muted; every loss is averaged over processes."""

    def __init__(self, trainer: pl.Trainer, opt: tz.Modular, mute: Callable[[bool], None]) -> None:
        self.trainer = trainer
        self.opt = opt
        self.mute = mute
        self.calls = 0

    def __call__(self, backward: bool = True) -> Tensor:
        self.calls += 1
        if self.calls == 1:
            loss = self._first(backward)
        else:
            self.mute(True)
            try:
                loss = self._again(backward)
            finally:
                self.mute(False)
        return _mean_over_processes(self.trainer, loss)

    def _first(self, backward: bool) -> Tensor:
        raise NotImplementedError

    def _again(self, backward: bool) -> Tensor:
        raise NotImplementedError


class AutomaticClosure(_StepClosure):
    """``closure(backward=True)`` for one optimizer step in automatic optimization.

    The first evaluation is the step's own: with ``backward`` it is Lightning's closure (``training_step``,
    ``zero_grad``, backward with its hooks), then ``on_before_optimizer_step`` and gradient clipping, exactly
    as without torchzero; loss-only, it is ``training_step`` under ``no_grad``, then
    ``on_before_optimizer_step``.  Later evaluations run with ``self.log`` muted: with ``backward``,
    ``zero_grad`` + ``training_step`` + the strategy's backward (DDP syncs the gradient, backward hooks run)
    + clipping; loss-only, ``training_step`` under ``no_grad`` and nothing else.  Every returned loss is
    averaged over processes.

    With ``accumulate_grad_batches=N`` the step covers the micro-batches of its window (``steps``, the
    ``training_step`` arguments of each, the last one being the current batch).  Lightning has already
    backpropagated the earlier ones (``earlier``: their losses, divided by ``N`` as Lightning divides them), so
    the first evaluation adds them to the last one's; a re-evaluation runs ``training_step`` and backward
    (``loss / N``) on every micro-batch.  The loss the chain sees is the sum of the divided losses, the function
    whose gradient is the accumulated one.
    """

    def __init__(
        self,
        module: pl.LightningModule,
        opt: tz.Modular,
        lightning_closure: Callable[[], Any],
        steps: list[OrderedDict[str, Any]],
        mute: Callable[[bool], None],
        earlier: list[Tensor] | None = None,
    ) -> None:
        super().__init__(module.trainer, opt, mute)
        self.module = module
        self.lightning_closure = lightning_closure
        self.steps = steps
        self.earlier = list(earlier or [])
        self.accumulation = self.trainer.accumulate_grad_batches

    def _training_step(self, kwargs: OrderedDict[str, Any]) -> Any:
        return call._call_strategy_hook(self.trainer, "training_step", *kwargs.values())

    def _with_earlier(self, loss: Tensor) -> Tensor:
        for earlier in self.earlier:
            loss = loss + earlier.to(loss.dtype)
        return loss

    def _first(self, backward: bool) -> Tensor:
        if backward:
            loss = self.lightning_closure()
            if loss is None:
                _loss_of(None, "training_step")
            before_optimizer_step(self.trainer, self.opt)
            clip_gradients(self.trainer, self.opt)
            return self._with_earlier(loss)
        with torch.no_grad():
            output = self._training_step(self.steps[-1])
        result = ClosureResult.from_training_step_output(output, self.accumulation)
        loss = _loss_of(result.loss, "training_step")
        # Lightning's closure never ran (it would backpropagate); the loop reads the step's output from it
        self.lightning_closure._result = result  # type: ignore[attr-defined]
        before_optimizer_step(self.trainer, self.opt)
        return self._with_earlier(loss)

    def _again(self, backward: bool) -> Tensor:
        total: Tensor | None = None
        if not backward:
            with torch.no_grad():
                for kwargs in self.steps:
                    loss = _loss_of(self._training_step(kwargs), "training_step") / self.accumulation
                    total = loss if total is None else total + loss
            assert total is not None
            return total
        self.opt.zero_grad(set_to_none=True)  # new .grad tensors: modules may still hold the old ones
        for kwargs in self.steps:
            with torch.enable_grad():
                loss = _loss_of(self._training_step(kwargs), "training_step") / self.accumulation
                call._call_strategy_hook(self.trainer, "backward", loss, self.opt)
            total = loss.detach() if total is None else total + loss.detach()
        clip_gradients(self.trainer, self.opt)
        assert total is not None
        return total


class ManualClosure(_StepClosure):
    """``closure(backward=True)`` around the closure a user passes to ``opt.step`` in manual optimization.

    The user's closure keeps its own convention (``closure(backward)`` or no arguments, see
    :class:`tz.Closure`); the loss is averaged over processes, ``on_before_optimizer_step`` runs once after
    the first evaluation, and ``self.log`` is muted during re-evaluations.
    """

    def __init__(
        self, module: pl.LightningModule, opt: tz.Modular, fn: Callable[..., Any], mute: Callable[[bool], None]
    ) -> None:
        super().__init__(module.trainer, opt, mute)
        self.inner = tz.Closure(fn, lambda: opt.plan.params(opt.param_groups))

    def _first(self, backward: bool) -> Tensor:
        loss = self.inner(backward)
        before_optimizer_step(self.trainer, self.opt)
        return loss

    def _again(self, backward: bool) -> Tensor:
        return self.inner(backward)


class ClosureChainOptimizer(LightningOptimizer):
    """What ``self.optimizers()`` returns for a closure chain in manual optimization.

    It is the usual ``LightningOptimizer`` except for :meth:`step`, which hands the chain a
    ``closure(backward)`` instead of the precision plugin's no-argument wrapper.
    """

    def __init__(self, outer: LightningOptimizer, module: pl.LightningModule, mute: Callable[[bool], None]) -> None:
        super().__init__(outer.optimizer)
        self._strategy = outer._strategy
        self._outer = outer
        self._module = module
        self._mute = mute

    def step(self, closure: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        opt = self._optimizer
        if not isinstance(opt, tz.Modular):  # pragma: no cover - only built for tz.Modular
            raise TypeError(f"expected a tz.Modular, got {type(opt).__name__}")
        if closure is None:
            names = ", ".join(closure_modules(opt))
            raise RuntimeError(
                f"{names} must re-evaluate the loss, so in manual optimization opt.step() needs a closure:\n"
                "    def closure(backward=True):\n"
                "        loss = ...  # forward pass on this batch\n"
                "        if backward:\n"
                "            opt.zero_grad()\n"
                "            self.manual_backward(loss)\n"
                "        return loss\n"
                "    opt.step(closure)\n"
                "Nothing was changed."
            )
        if kwargs:
            raise TypeError(f"tz.Modular.step() takes only a closure, got {sorted(kwargs)}")
        check_supported(self._module.trainer, opt, manual=True)
        self._outer._on_before_step()
        try:
            return opt.step(ManualClosure(self._module, opt, closure, self._mute))
        finally:
            self._outer._on_after_step()
