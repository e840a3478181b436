"""The closure that lets line searches, quasi-Newton methods and gradient-free chains run under Accelerate."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from torchzero.foreach import shard

_NO_FULL_GRADIENT = {"DEEPSPEED", "MEGATRON_LM", "FSDP"}
"""engine-managed or sharded setups; FSDP is allowed when its parameters are DTensors (FSDP2)"""


class AcceleratedClosure:
    r"""A closure for ``opt.step(closure)`` on an optimizer prepared by ``accelerate.Accelerator``.

    Each call evaluates ``loss_fn()`` at the current parameters.  ``closure(True)`` zeroes the gradients
    of the optimizer's parameters and backpropagates with ``accelerator.backward`` (so DDP averages the
    gradients over processes); ``closure(False)`` runs under ``torch.no_grad()``, so no graph is built and
    DDP starts no gradient reduction.  Either way the value returned is the loss **averaged over
    processes**:

    .. math::  \bar L(\theta) = \frac{1}{P} \sum_{r=1}^{P} L_r(\theta)

    Every process therefore sees the same loss and the same (DDP-averaged) gradient, and every decision a
    module makes from them (accepting a line-search trial, a curvature check, a finite difference) is the
    same on every process: the parameters stay identical and the collectives stay in lockstep.

    ``AcceleratedOptimizer.step`` returns ``None``; the step's loss is kept here instead:

    * :attr:`loss`: the first value of the step, i.e. the loss at the parameters the step started from
      (what ``tz.Modular.step`` returns);
    * :attr:`last_loss`: the value of the most recent evaluation;
    * :attr:`calls`: the number of evaluations so far.

    Build a new closure for every batch (it is cheap), or call :meth:`reset` before reusing one.

    Args:
        accelerator: the ``accelerate.Accelerator`` that prepared the model and the optimizer.
        optimizer: the prepared optimizer (or the ``tz.Modular`` inside it); the closure zeroes the
            gradients of its parameters before each backward pass.
        loss_fn: called with no arguments, returns the loss of this process's batch as a scalar tensor,
            e.g. ``lambda: F.cross_entropy(model(x), y)``.  It must not call ``backward`` itself.

    Raises:
        ValueError: when the accelerator cannot give a closure exact gradients: gradient accumulation
            (``gradient_accumulation_steps > 1``), fp16 with a ``GradScaler``, or a sharded/engine-managed
            setup (FSDP1's flat shards, DeepSpeed, Megatron-LM; FSDP2 with DTensor parameters works).  Raised
            when the closure is built, so nothing changed.

    Example::

        model, opt, dl = accelerator.prepare(model, tz.Modular(model.parameters(), tz.m.LBFGS(), tz.m.StrongWolfe()), dl)
        for x, y in dl:
            closure = tza.AcceleratedClosure(accelerator, opt, lambda: F.mse_loss(model(x), y))
            opt.step(closure)
            print(closure.loss)
    """

    def __init__(self, accelerator: Any, optimizer: Any, loss_fn: Callable[[], Tensor]) -> None:
        check_closure_support(accelerator, optimizer)
        if not callable(loss_fn):
            raise TypeError(
                f"loss_fn must be a callable that takes no arguments and returns the loss, got {type(loss_fn).__name__}. "
                "Wrap the batch in it, e.g. `lambda: loss_fn(model(x), y)`."
            )
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(
                f"optimizer must be the optimizer returned by accelerator.prepare (or the tz.Modular in it), got "
                f"{type(optimizer).__name__}. Pass it as the second argument: AcceleratedClosure(accelerator, opt, loss_fn)."
            )
        self.accelerator = accelerator
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.loss: Tensor | None = None
        """the first loss of the step (averaged over processes), or None before the first evaluation"""
        self.last_loss: Tensor | None = None
        """the loss of the most recent evaluation (averaged over processes)"""
        self.calls = 0
        """how many times the closure was evaluated since it was built or reset"""

    def reset(self) -> None:
        """Forget the recorded losses, to reuse this closure for another step."""
        self.loss = None
        self.last_loss = None
        self.calls = 0

    def _params(self) -> Iterator[Tensor]:
        # read param_groups on every call: Accelerate (FSDP) may swap the tensors in them
        for group in self.optimizer.param_groups:
            yield from group["params"]

    def _evaluate(self) -> Tensor:
        loss = self.loss_fn()
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            what = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
            raise TypeError(
                f"loss_fn returned {what}; it must return the loss of this process's batch as a scalar tensor, "
                "e.g. `lambda: F.mse_loss(model(x), y)` (reduce it with .mean() if needed)."
            )
        return loss.reshape(())

    def __call__(self, backward: bool = True) -> Tensor:
        if backward:
            with torch.enable_grad():
                loss = self._evaluate()
                for p in self._params():
                    p.grad = None
                self.accelerator.backward(loss)
        else:
            with torch.no_grad():
                loss = self._evaluate()
        loss = loss.detach()
        if loss.dtype in (torch.float16, torch.bfloat16):
            loss = loss.float()  # compare trial losses in float32, and the same dtype with 1 or N processes
        if self.accelerator.num_processes > 1:
            loss = self.accelerator.reduce(loss, reduction="mean")
        self.calls += 1
        if self.loss is None:
            self.loss = loss
        self.last_loss = loss
        return loss


def _all_dtensors(optimizer: Any) -> bool:
    inner = getattr(optimizer, "optimizer", optimizer)  # an AcceleratedOptimizer wraps the tz.Modular
    params = [p for g in inner.param_groups for p in g["params"]]
    return bool(params) and all(shard.is_dtensor(p) for p in params)


def check_closure_support(accelerator: Any, optimizer: Any = None) -> None:
    """Raise a ``ValueError`` that says why if ``accelerator`` cannot run closure steps exactly.

    Under FSDP, closures work when the parameters of ``optimizer`` are DTensors (FSDP2, ``fsdp_version=2``):
    torchzero then reduces every quantity over the mesh.  FSDP1's flat shards are plain tensors, refused.
    """
    steps = getattr(accelerator, "gradient_accumulation_steps", 1)
    if steps > 1:
        raise ValueError(
            f"this Accelerator accumulates gradients over {steps} batches (gradient_accumulation_steps={steps}), "
            "but a closure re-evaluates the loss and recomputes the gradient inside step(): it would see one "
            "batch and drop the accumulated gradient, and Accelerate skips step() (so the closure) on the "
            "batches in between. Use gradient_accumulation_steps=1 with a larger per-process batch for chains "
            "that need a closure; chains that do not (Adam, SGD, ...) accumulate fine with "
            "accelerator.backward(loss) and opt.step()."
        )
    if getattr(accelerator, "scaler", None) is not None:
        raise ValueError(
            "this Accelerator uses fp16 mixed precision with a GradScaler, which unscales the gradients once "
            "before step() and skips steps that overflow; gradients that a closure recomputes inside step() "
            "would reach the modules still scaled. Use mixed_precision='bf16' (no scaler needed) for chains "
            "that need a closure; chains that do not (Adam, SGD, ...) work with fp16 through "
            "accelerator.backward(loss) and opt.step()."
        )
    kind = getattr(getattr(accelerator, "distributed_type", None), "name", None)
    if kind == "FSDP" and optimizer is not None and _all_dtensors(optimizer):
        return  # FSDP2: norms, dot products and slopes are reduced over the mesh (torchzero.foreach.shard)
    if kind in _NO_FULL_GRADIENT:
        raise ValueError(
            f"closures are not supported with distributed_type={kind}: there each process holds a shard of the "
            "parameters (or the engine owns backward and step), so quantities computed over all parameters "
            "(line-search slopes, curvature pairs, norms) would differ between processes and they would fall "
            "out of step. Use DDP (MULTI_GPU / MULTI_CPU) or a single process for chains that need a closure"
            + (
                ", or FSDP2 (fsdp_version=2: DTensor parameters, which torchzero reduces over the mesh)."
                if kind == "FSDP"
                else "."
            )
        )


def step(accelerator: Any, optimizer: Any, loss_fn: Callable[[], Tensor]) -> Tensor | None:
    """Take one closure step and return its loss (averaged over processes).

    Shorthand for building an :class:`AcceleratedClosure`, calling ``optimizer.step(closure)`` and
    returning ``closure.loss``.  Returns ``None`` if Accelerate skipped the step (the closure was never
    evaluated).

    Example::

        for x, y in dl:
            loss = tza.step(accelerator, opt, lambda: F.mse_loss(model(x), y))
    """
    closure = AcceleratedClosure(accelerator, optimizer, loss_fn)
    optimizer.step(closure)
    return closure.loss
