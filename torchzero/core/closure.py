"""The closure protocol.

A closure re-evaluates the loss at the current parameters.  Two styles are accepted:

* ``closure(backward: bool = True)`` (torchzero style, any argument name): with ``backward=True``
  it zeroes the grads and backpropagates; with ``backward=False`` it only returns the loss.  Loss-only
  calls run under ``torch.no_grad()``.
* ``closure()`` (torch.optim and Lightning style): it always backpropagates.  For a loss-only
  evaluation we detach every ``.grad`` before the call and put the old tensors back afterwards, so the
  grads a module holds are never touched.  The price is the wasted backward pass: a loss-only call
  of a no-argument closure costs as much as a full one.

Modules that differentiate the loss themselves (Hessians, Jacobian-vector products) call the closure
through :meth:`Closure.raw`, which keeps the loss's graph and accepts only the first style.

When every param group has ``maximize=True`` the normalised closure returns ``-loss`` (and :meth:`Closure.raw`
the negated loss with its graph), so the chain minimizes ``-loss``; ``Modular.step`` still returns the loss
the closure gave.

Every decision a module makes (accepting a line-search trial, curvature checks) uses the value the
closure returns.  In a distributed run, return a loss that is already averaged over processes
(``torchzero_accelerate`` and ``torchzero_lightning`` do this for you) and every process takes the
same branch.  With FSDP2-sharded parameters this is checked at every evaluation (one all-reduce of three
numbers): differing losses raise an error on every rank, and a non-finite loss on one rank becomes NaN on
all of them, so every rank rejects the step the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, overload

import torch
from torch import Tensor

from ..foreach import shard


class NonFiniteLossError(FloatingPointError):
    """The closure returned NaN or infinity where the step needs a finite loss."""


def _takes_backward_argument(fn: Callable[..., Any]) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C callables have no signature
        return False
    positional = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    required_kw = [p for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if len(required) > 1 or required_kw:
        names = ", ".join(p.name for p in (*required, *required_kw))
        raise TypeError(
            f"the closure passed to step() requires the arguments ({names}), but the optimizer calls it "
            "with at most one: closure(backward: bool). Define it as `def closure(backward=True): ...` "
            "(zero grads and call loss.backward() only when backward is true) or with no arguments."
        )
    return len(positional) >= 1


def as_loss(value: Any, *, where: str = "the closure") -> Tensor:
    """Check a closure's return value and turn it into a detached 0-dim tensor."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise TypeError(
                f"{where} returned a tensor of shape {tuple(value.shape)}; it must return the loss as a "
                "scalar. Reduce it first, e.g. `return loss.mean()`."
            )
        return value.detach().reshape(())
    if isinstance(value, (float, int)) and not isinstance(value, bool):
        return torch.tensor(float(value))
    raise TypeError(
        f"{where} returned {type(value).__name__}; it must return the loss as a scalar tensor or a "
        "Python number. Did you forget `return loss`?"
    )


class Closure:
    """A user closure with the calling convention normalised to ``evaluate(backward)``."""

    def __init__(
        self,
        fn: Callable[..., Any],
        params: Callable[[], Iterable[Tensor]],
        *,
        none_ok: bool = False,
        negate: bool = False,
        decides: bool = True,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"closure must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.takes_backward = _takes_backward_argument(fn)
        self._params = params
        self.none_ok = none_ok and not self.takes_backward
        """a no-argument closure may return None (torch.optim's convention; Lightning's manual optimization
        passes such a closure on every ``opt.step()``) when the chain does not need the loss"""
        self.calls = 0
        """how many times the closure was evaluated during this step"""
        self.negate = negate
        """the chain maximizes: every evaluation returns ``-loss``"""
        self.sharded: bool | None = None
        """whether the parameters are FSDP2 shards (then each loss is checked across ranks)"""
        self.decides = decides
        """the chain takes decisions by the loss's value (line searches, trust tests, finite differences): on shards
        every rank must see the same value.  A first-order chain evaluates the closure once for its gradient and
        each rank may return its own batch's loss (Lightning's closure under FSDP2 does); only a non-finite loss on
        any rank must then reach every rank, so that all reject the step alike."""

    @overload
    def signed(self, loss: Tensor) -> Tensor: ...
    @overload
    def signed(self, loss: None) -> None: ...
    def signed(self, loss: Tensor | None) -> Tensor | None:
        """``loss`` with the sign flipped when the closure negates: the user's loss from the chain's, and back."""
        return -loss if self.negate and loss is not None else loss

    def __call__(self, backward: bool = True) -> Tensor:
        loss = self._call(backward)
        if loss is not None and self._sharded():
            loss = shard.agreed_loss(
                loss, same_value=self.decides
            )  # every rank of an FSDP2 run sees the same loss (or the same NaN)
        return self.signed(loss)  # None from a closure that may return it stays None

    def _sharded(self) -> bool:
        if self.sharded is None:
            self.sharded = shard.any_dtensor(list(self._params()))
        return self.sharded

    def _call(self, backward: bool) -> Tensor:
        self.calls += 1
        if self.takes_backward:
            if backward:
                with torch.enable_grad():
                    return as_loss(self.fn(True))
            with torch.no_grad():
                return as_loss(self.fn(False))
        if backward:
            with torch.enable_grad():
                value = self.fn()
            if value is None and self.none_ok:
                return None  # type: ignore[return-value]
            return as_loss(value)
        # loss only, but the closure always backpropagates: keep the grads we hold out of its reach
        params = list(self._params())
        saved = [p.grad for p in params]
        for p in params:
            p.grad = None
        try:
            with torch.enable_grad():
                return as_loss(self.fn())
        finally:
            for p, g in zip(params, saved, strict=True):
                p.grad = g

    def raw(self, grad: bool, *, who: str = "this module") -> Tensor:
        """Call the closure as ``closure(False)`` and return its loss *as returned* (graph and all).

        A normal loss-only call runs under ``torch.no_grad()`` and detaches the result; modules that
        differentiate the loss themselves (``torch.autograd.grad(..., create_graph=True)``) or push tangents
        through it (forward-mode AD) need the loss untouched, so they call the closure this way.  With
        ``grad=True`` the call runs under ``torch.enable_grad()`` and the loss must carry a graph.  The loss
        must be a finite scalar tensor; ``who`` names the module in the errors.  Counts as one closure call.
        """
        if not self.takes_backward:
            raise TypeError(
                f"{who} differentiates the loss itself, so the closure must take the backward argument: "
                "`def closure(backward=True): loss = ...; if backward: opt.zero_grad(); loss.backward(); return loss`. "
                "A no-argument closure always runs backward itself. Nothing was changed."
            )
        self.calls += 1
        with torch.enable_grad() if grad else torch.no_grad():
            loss = self.fn(False)
        if not isinstance(loss, Tensor):
            as_loss(loss, where="the closure")  # raises with the usual message
            raise TypeError(f"{who} needs the loss as a tensor, got {type(loss).__name__}")
        check_finite(as_loss(loss))
        if grad and not loss.requires_grad:
            raise RuntimeError(
                f"{who}: the loss returned by closure(False) has no autograd graph. It is called under "
                "torch.enable_grad(); do not detach the loss or wrap the forward pass in torch.no_grad() when "
                "backward is False."
            )
        if not self.negate:
            return loss
        with torch.enable_grad() if grad else torch.no_grad():
            return -loss  # negated inside the graph, which the module differentiates


def check_finite(loss: Tensor, what: str = "loss") -> None:
    """Raise :class:`NonFiniteLossError` unless ``loss`` is finite (one host sync: closure steps only)."""
    if not bool(torch.isfinite(loss)):
        raise NonFiniteLossError(
            f"the closure returned a non-finite {what} ({loss.item()}); the step was not taken and the "
            "parameters and optimizer state are unchanged. Lower the learning rate, check the data for "
            "NaNs, or use a line search (it rejects non-finite trial points)."
        )
