"""The closure that lets line searches, quasi-Newton methods and gradient-free chains run under Accelerate."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
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

    With gradient accumulation (``gradient_accumulation_steps=N``) one optimizer step covers several
    micro-batches; pass them as ``micro_batches``, a list of argument tuples for ``loss_fn``.  Each evaluation
    then runs ``loss_fn(*args)`` for every micro-batch, backpropagates each through ``accelerator.backward``
    (which divides by ``N``, as in Accelerate's own accumulation) and returns
    :math:`\frac{1}{N} \sum_i L_i`, the loss whose gradient is the accumulated one.  :func:`step` collects the
    micro-batches for you.

    Args:
        accelerator: the ``accelerate.Accelerator`` that prepared the model and the optimizer.
        optimizer: the prepared optimizer (or the ``tz.Modular`` inside it); the closure zeroes the
            gradients of its parameters before each backward pass.
        loss_fn: returns the loss of this process's batch as a scalar tensor, e.g.
            ``lambda: F.cross_entropy(model(x), y)``, or, with ``micro_batches``, of one micro-batch given as
            its arguments, e.g. ``lambda x, y: F.cross_entropy(model(x), y)``.  It must not call ``backward``.
        micro_batches: the arguments of ``loss_fn`` for each micro-batch of the step (with accumulation).

    Raises:
        ValueError: when the accelerator cannot give a closure exact gradients: gradient accumulation
            (``gradient_accumulation_steps > 1``) without ``micro_batches``, fp16 with a ``GradScaler``, or a
            sharded/engine-managed setup (FSDP1's flat shards, DeepSpeed, Megatron-LM; FSDP2 with DTensor
            parameters works).  Raised when the closure is built, so nothing changed.

    Example::

        model, opt, dl = accelerator.prepare(model, tz.Modular(model.parameters(), tz.m.LBFGS(), tz.m.StrongWolfe()), dl)
        for x, y in dl:
            closure = tza.AcceleratedClosure(accelerator, opt, lambda: F.mse_loss(model(x), y))
            opt.step(closure)
            print(closure.loss)
    """

    def __init__(
        self,
        accelerator: Any,
        optimizer: Any,
        loss_fn: Callable[..., Tensor],
        micro_batches: Sequence[Sequence[Any]] | None = None,
    ) -> None:
        check_closure_support(accelerator, optimizer, accumulating=micro_batches is not None)
        if micro_batches is not None and (
            isinstance(micro_batches, (str, Tensor)) or not all(isinstance(b, (tuple, list)) for b in micro_batches)
        ):
            raise TypeError(
                "micro_batches must be a list of argument tuples for loss_fn, one per micro-batch of the step, "
                "e.g. [(x1, y1), (x2, y2)]"
            )
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
        self.micro_batches = None if micro_batches is None else [tuple(b) for b in micro_batches]
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

    def _evaluate(self, *args: Any) -> Tensor:
        loss = self.loss_fn(*args)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            what = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
            raise TypeError(
                f"loss_fn returned {what}; it must return the loss of this process's batch as a scalar tensor, "
                "e.g. `lambda: F.mse_loss(model(x), y)` (reduce it with .mean() if needed)."
            )
        return loss.reshape(())

    def _accumulated(self, backward: bool) -> Tensor:
        """The mean loss over the step's micro-batches, each backpropagated as Accelerate accumulates (``/N``)."""
        assert self.micro_batches is not None
        if backward:
            for p in self._params():
                p.grad = None
        total: Tensor | None = None
        with torch.set_grad_enabled(backward):
            for args in self.micro_batches:
                loss = self._evaluate(*args)
                if backward:
                    self.accelerator.backward(loss)  # divides by gradient_accumulation_steps
                loss = loss.detach().float() if loss.dtype in (torch.float16, torch.bfloat16) else loss.detach()
                total = loss if total is None else total + loss
        assert total is not None
        return total / max(int(getattr(self.accelerator, "gradient_accumulation_steps", 1)), 1)

    def __call__(self, backward: bool = True) -> Tensor:
        if self.micro_batches is not None:
            loss = self._accumulated(backward)
        elif backward:
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


def check_closure_support(accelerator: Any, optimizer: Any = None, *, accumulating: bool = False) -> None:
    """Raise a ``ValueError`` that says why if ``accelerator`` cannot run closure steps exactly.

    Under FSDP, closures work when the parameters of ``optimizer`` are DTensors (FSDP2, ``fsdp_version=2``):
    torchzero then reduces every quantity over the mesh.  FSDP1's flat shards are plain tensors, refused.
    ``accumulating``: the closure is given the micro-batches of the step, so gradient accumulation is fine.
    """
    steps = getattr(accelerator, "gradient_accumulation_steps", 1)
    if steps > 1 and not accumulating:
        raise ValueError(
            f"this Accelerator accumulates gradients over {steps} batches (gradient_accumulation_steps={steps}), "
            "and a closure re-evaluates the loss and recomputes the gradient inside step(), so it needs every "
            "micro-batch of the step, not only the last. Pass each micro-batch as the arguments of the loss "
            "function, inside `with accelerator.accumulate(model):` call "
            "`tza.step(accelerator, opt, lambda x, y: F.mse_loss(model(x), y), x, y)` (a lambda that reads the "
            "loop's x, y would see only the last micro-batch by the time the closure runs), or build "
            "AcceleratedClosure(..., micro_batches=[(x1, y1), ...]); or use gradient_accumulation_steps=1 with a "
            "larger per-process batch. Nothing was changed."
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


def step(accelerator: Any, optimizer: Any, loss_fn: Callable[..., Tensor], *batch: Any) -> Tensor | None:
    """Take one closure step and return its loss (averaged over processes).

    Shorthand for building an :class:`AcceleratedClosure`, calling ``optimizer.step(closure)`` and
    returning ``closure.loss``.  Returns ``None`` if Accelerate skipped the step (the closure was never
    evaluated).

    With gradient accumulation, call it on every micro-batch inside ``accelerator.accumulate(model)`` and pass
    the micro-batch as the arguments of ``loss_fn`` (``*batch``): on the micro-batches where Accelerate does
    not step (``accelerator.sync_gradients`` is False) it only keeps them, computing nothing; on the last one it
    steps with a closure that evaluates every micro-batch kept for the step (see :class:`AcceleratedClosure`)
    and returns the step's loss.

    Example::

        for x, y in dl:
            loss = tza.step(accelerator, opt, lambda: F.mse_loss(model(x), y))

        # accelerator = Accelerator(gradient_accumulation_steps=4)
        for x, y in dl:
            with accelerator.accumulate(model):
                loss = tza.step(accelerator, opt, lambda x, y: F.mse_loss(model(x), y), x, y)
    """
    steps = getattr(accelerator, "gradient_accumulation_steps", 1)
    if steps <= 1 and not batch:
        closure = AcceleratedClosure(accelerator, optimizer, loss_fn)
        optimizer.step(closure)
        return closure.loss
    if not batch:
        check_closure_support(accelerator)  # the error that says to pass the micro-batch
    kept = _kept_micro_batches.setdefault(_inner(optimizer), [])
    if (
        kept
        and kept[0][0] is not loss_fn
        and getattr(kept[0][0], "__code__", None) is not getattr(loss_fn, "__code__", None)
    ):
        raise ValueError(
            "tza.step got another loss function than for the earlier micro-batches of this optimizer step; use "
            "one loss function per optimizer, taking the micro-batch as its arguments. Nothing was changed."
        )
    micro_batches = [args for _, args in kept] + [batch]
    closure = AcceleratedClosure(accelerator, optimizer, loss_fn, micro_batches=micro_batches)
    if not getattr(accelerator, "sync_gradients", True):
        kept.append((loss_fn, batch))  # Accelerate does not step on this micro-batch: keep it for the step
        return None
    kept.clear()
    optimizer.step(closure)
    return closure.loss


# the micro-batches of the optimizer step being accumulated, per optimizer (its tz.Modular)
_kept_micro_batches: weakref.WeakKeyDictionary[Any, list[tuple[Callable[..., Tensor], tuple[Any, ...]]]] = (
    weakref.WeakKeyDictionary()
)


def _inner(optimizer: Any) -> Any:
    """The optimizer inside an ``AcceleratedOptimizer`` (the tz.Modular), or the optimizer itself."""
    return getattr(optimizer, "optimizer", optimizer)
