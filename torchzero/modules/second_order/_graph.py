"""Evaluating the closure so that the loss keeps its autograd graph (for Hessians and jvps)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ...core.closure import as_loss, check_finite

if TYPE_CHECKING:
    from ...core.context import StepContext


def raw_closure_call(ctx: StepContext, who: str, *, grad: bool) -> Tensor:
    """Call the user's closure as ``closure(False)`` and return its loss *as returned* (graph and all).

    The normal loss-only call runs under ``torch.no_grad()`` and detaches the result; modules that
    differentiate the loss themselves (``torch.autograd.grad(..., create_graph=True)``) or push tangents
    through it (forward-mode AD) need the loss untouched, so they call the closure here instead.  With
    ``grad=True`` the call runs under ``torch.enable_grad()``.  Counts as one closure call.
    """
    closure = ctx.closure
    if closure is None:
        raise RuntimeError(f"{who} needs a closure, but step() was called without one")
    if not closure.takes_backward:
        raise TypeError(
            f"{who} differentiates the loss itself, so the closure must take the backward argument: "
            "`def closure(backward=True): loss = ...; if backward: opt.zero_grad(); loss.backward(); return loss`. "
            "A no-argument closure always runs backward itself. Nothing was changed."
        )
    closure.calls += 1
    with torch.enable_grad() if grad else torch.no_grad():
        loss = closure.fn(False)
    if not isinstance(loss, Tensor):
        as_loss(loss, where="the closure")  # raises with the usual message
        raise TypeError(f"{who} needs the loss as a tensor, got {type(loss).__name__}")
    value = as_loss(loss)
    check_finite(value)
    if ctx.loss is None:
        ctx.loss = value
    if grad and not loss.requires_grad:
        raise RuntimeError(
            f"{who}: the loss returned by closure(False) has no autograd graph. It is called under "
            "torch.enable_grad(); do not detach the loss or wrap the forward pass in torch.no_grad() when "
            "backward is False."
        )
    return loss


def graph_params(ctx: StepContext, who: str) -> list[Tensor]:
    """The parameters to differentiate with respect to (real tensors only)."""
    params = ctx.layout.originals
    if ctx.layout.has_complex:
        raise TypeError(f"{who} supports real parameters only; got a complex parameter.")
    return params
