"""``TorchzeroMixin``: the one line that lets a LightningModule train with closure chains."""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature

from ._closure import AutomaticClosure, ClosureChainOptimizer, check_supported, closure_modules


class TorchzeroMixin:
    """Put it first among the bases of a LightningModule to train with any ``tz.Modular`` chain.

    ``class Model(tzl.TorchzeroMixin, L.LightningModule): ...``

    Plain chains (``Adam, LR``) run exactly as without the mixin.  For a chain with modules that
    re-evaluate the loss (``LBFGS``, line searches, ``RandomizedFDM``, ``SAM``) the mixin hands
    ``opt.step`` a ``closure(backward=True)`` built from your ``training_step``:

    * the first evaluation of a step is Lightning's own (``training_step``, ``zero_grad``, backward and its
      hooks, ``on_before_optimizer_step``, gradient clipping); what it logs is what the step logs;
    * a loss-only re-evaluation runs ``training_step`` under ``torch.no_grad()`` and nothing else (no backward,
      no backward hooks, no clipping);
    * a re-evaluation with backward runs ``zero_grad``, ``training_step``, the strategy's backward (DDP
      averages the gradient) and clipping;
    * ``self.log`` is muted during re-evaluations, and ``on_before_optimizer_step`` runs once per step;
    * in the batch-norm epoch of ``StochasticWeightAveraging`` (Lightning skips backward there) a closure chain
      is not stepped, so the parameters stay the average;
    * under DDP every loss the chain sees is averaged over processes, so every rank takes the same branch;
    * with ``accumulate_grad_batches=N`` the chain sees the loss and gradient of the whole window: the mixin keeps
      the window's micro-batches (from ``on_train_batch_start``) and the losses Lightning backpropagated for the
      earlier ones (from ``on_before_backward``); a re-evaluation runs ``training_step`` and backward on each
      micro-batch, dividing by ``N`` as Lightning does.

    In manual optimization, ``self.optimizers()`` returns an optimizer whose ``step(closure)`` passes your
    ``closure(backward)`` (or no-argument closure) through unchanged, with the same averaging and muting.

    The mixin also checks what ``configure_optimizers`` returns (a scheduler must be built on the
    ``tz.Modular`` itself, not on ``opt.get_lr_module()``), and raises a clear error, before anything
    changes, for setups a closure chain cannot run in (``precision='16-mixed'``, strategies other than single
    device and DDP).

    If you override ``on_train_batch_start``, ``on_before_backward``, ``optimizer_step``, ``optimizers`` or
    ``log``, call ``super()``.
    """

    _tz_muted: bool = False
    _tz_stepping: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        if LightningModule in mro and mro.index(LightningModule) < mro.index(TorchzeroMixin):
            raise TypeError(
                f"{cls.__name__} lists TorchzeroMixin after LightningModule, so LightningModule's hooks would "
                f"shadow the mixin's. Put it first: class {cls.__name__}(tzl.TorchzeroMixin, L.LightningModule)."
            )
        fn = getattr(cls, "configure_optimizers", None)  # the class's own or an inherited one
        if fn is not None and not getattr(fn, "_tz_checked", False):

            @functools.wraps(fn)
            def configure_optimizers(self: Any) -> Any:
                out = fn(self)
                check_optimizer_config(out)
                return out

            configure_optimizers._tz_checked = True  # type: ignore[attr-defined]
            cls.configure_optimizers = configure_optimizers  # type: ignore[attr-defined]

    # ---------------------------------------------------------------- hooks
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any:
        # the micro-batches of the optimizer step being accumulated (one without accumulate_grad_batches); the
        # optimizer step takes them, so in manual optimization, where it is not called, only the last is kept
        window = self.__dict__.setdefault("_tz_window", [])
        if not self.automatic_optimization or (window and window[-1][1] >= batch_idx):  # type: ignore[attr-defined]
            window.clear()  # manual optimization, or a new epoch after a window that never stepped
            self.__dict__.pop("_tz_window_losses", None)
        window.append((batch, batch_idx))
        return super().on_train_batch_start(batch, batch_idx)  # type: ignore[misc]

    def on_before_backward(self, loss: Any) -> None:
        # the (divided) loss of each micro-batch Lightning backpropagates before the optimizer step: the first
        # evaluation of an accumulating step adds them to the last micro-batch's
        if not self._tz_stepping and self.automatic_optimization:  # type: ignore[attr-defined]
            losses = self.__dict__.setdefault("_tz_window_losses", [])
            if isinstance(loss, torch.Tensor):
                losses.append(loss.detach())
        super().on_before_backward(loss)  # type: ignore[misc]

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Any,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        opt = optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
        window: list[tuple[Any, int]] = self.__dict__.pop("_tz_window", [])
        earlier: list[torch.Tensor] = self.__dict__.pop("_tz_window_losses", [])
        if optimizer_closure is None or not closure_modules(opt):
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)  # type: ignore[misc]
        if getattr(self.trainer.fit_loop, "_skip_backward", False):  # type: ignore[attr-defined]
            # StochasticWeightAveraging's extra epoch for a model with batch norm: Lightning runs training_step
            # without zero_grad or backward (accumulating over the whole epoch) only to refit the batch-norm
            # statistics of the averaged weights.  There is no gradient for a closure chain to evaluate, so run
            # the forward pass and leave the parameters at the average.
            optimizer_closure()
            return None
        check_supported(self.trainer, opt, manual=False)  # type: ignore[attr-defined, arg-type]
        if not window or window[-1][1] != batch_idx:
            raise RuntimeError(
                "TorchzeroMixin re-runs training_step on the batches of the step, which it records in "
                "on_train_batch_start, but it saw no batch for this step. If your LightningModule overrides "
                "on_train_batch_start, call super().on_train_batch_start(batch, batch_idx) in it. Nothing was changed."
            )
        if len(earlier) != len(window) - 1:
            raise RuntimeError(
                f"with accumulate_grad_batches={self.trainer.accumulate_grad_batches} (or a batch whose "  # type: ignore[attr-defined]
                "training_step returned None) TorchzeroMixin adds the losses of the step's earlier micro-batches, "
                f"which it records in on_before_backward, but it saw {len(earlier)} for {len(window) - 1} "
                "micro-batches. If your LightningModule overrides on_before_backward, call "
                "super().on_before_backward(loss) in it; return the loss from training_step on every batch. "
                "Nothing was changed."
            )
        steps = []
        with_index = is_param_in_hook_signature(self.training_step, "batch_idx", min_args=2)  # type: ignore[attr-defined]
        for batch, index in window:
            kwargs: OrderedDict[str, Any] = OrderedDict(batch=batch)
            if with_index:
                kwargs["batch_idx"] = index
            steps.append(kwargs)
        closure = AutomaticClosure(self, opt, optimizer_closure, steps, self._tz_mute, earlier)  # type: ignore[arg-type]
        self._tz_stepping = True
        try:
            opt.step(closure)  # type: ignore[arg-type]  # closure(backward) -> Tensor
        finally:
            self._tz_stepping = False

    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        opts = super().optimizers(use_pl_optimizer)  # type: ignore[misc]
        if not use_pl_optimizer or self.automatic_optimization:  # type: ignore[attr-defined]
            return opts
        if isinstance(opts, list):
            return [self._tz_manual(o) for o in opts]
        return self._tz_manual(opts)

    def log(self, *args: Any, **kwargs: Any) -> None:
        if self._tz_muted:
            return
        super().log(*args, **kwargs)  # type: ignore[misc]

    # ---------------------------------------------------------------- helpers
    def _tz_mute(self, muted: bool) -> None:
        self._tz_muted = muted

    def _tz_manual(self, opt: Any) -> Any:
        if not isinstance(opt, LightningOptimizer) or not closure_modules(opt.optimizer):
            return opt
        cache = self.__dict__.setdefault("_tz_manual_opts", {})
        wrapped = cache.get(id(opt))
        if wrapped is None or wrapped._outer is not opt:
            wrapped = cache[id(opt)] = ClosureChainOptimizer(opt, self, self._tz_mute)  # type: ignore[arg-type]
        return wrapped


def check_optimizer_config(out: Any) -> None:
    """Raise if ``configure_optimizers`` returned a scheduler built on a chain's LR module."""
    from torchzero.core.lr import LR

    schedulers: list[Any] = []

    def visit(item: Any) -> None:
        if isinstance(item, dict):
            sched = item.get("lr_scheduler", item.get("scheduler"))
            if sched is not None:
                visit(sched)
        elif isinstance(item, (list, tuple)):
            for x in item:
                visit(x)
        elif hasattr(item, "optimizer") and not isinstance(item, (torch.optim.Optimizer, LightningOptimizer)):
            schedulers.append(item)

    visit(out)
    for sched in schedulers:
        if isinstance(sched.optimizer, LR):
            name = type(sched).__name__
            raise ValueError(
                f"configure_optimizers returned a {name} built on opt.get_lr_module(), but Lightning only steps "
                "schedulers built on an optimizer that configure_optimizers returns (it would reject this one). "
                f"Build it on the tz.Modular itself: {name}(opt, ...). The Modular keeps 'lr' (and 'betas' / "
                "'momentum' for momentum cycling) in its param_groups, so the scheduler reaches the LR module."
            )
