"""Small helpers shared by the update rules of this package (not part of the public API)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


def _is_one(x: Any) -> bool:
    # a tensor learning rate is never compared on the host (that would sync with the device)
    return not isinstance(x, Tensor) and x == 1


def same_tensors(a: list[Tensor], b: list[Tensor]) -> bool:
    """True when two lists hold the same tensor objects (``seg.update`` returns a new list each time)."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def sub_scaled(params: list[Tensor], direction: list[Tensor], scale: Any) -> None:
    """``params -= scale * direction``; a tensor ``scale`` (a tensor lr) stays on the device."""
    if isinstance(scale, Tensor):
        ops.sub_(params, ops.mul(direction, scale))
    else:
        ops.add_(params, direction, alpha=-scale)


def emit(ctx: StepContext, seg: Segment, direction: list[Tensor], scale: Any) -> None:
    """Hand on ``scale * direction`` as the update; the last stage subtracts it from the params instead."""
    if ctx.is_last:
        sub_scaled(seg.params, direction, scale)
        ctx.mark_params_written()
        return
    update = seg.update
    if not same_tensors(direction, update):
        ops.copy_(update, direction)
    if not _is_one(scale):
        ops.mul_(update, scale)


def emit_div(ctx: StepContext, seg: Segment, num: list[Tensor], den: list[Tensor], scale: Any) -> None:
    """Hand on ``scale * num / den``; the last stage subtracts it from the params instead.

    ``den`` is only read; ``num`` may be the update itself.
    """
    if torch.is_grad_enabled():
        # differentiable mode: autograd keeps the divisor of div/addcdiv for the backward pass (even when it
        # needs no gradient), and ``den`` may be state that the next step changes in place (Adamax's exp_inf)
        den = ops.clone(den)
    tensor_scale = isinstance(scale, Tensor)
    if ctx.is_last:
        if tensor_scale:
            quotient = ops.div(num, den)
            ops.mul_(quotient, scale)
            ops.sub_(seg.params, quotient)
        else:
            ops.addcdiv_(seg.params, num, den, -scale)
        ctx.mark_params_written()
        return
    update = seg.update
    if same_tensors(num, update) or tensor_scale:
        if not same_tensors(num, update):
            ops.copy_(update, num)
        ops.div_(update, den)
        if not _is_one(scale):
            ops.mul_(update, scale)
    else:
        ops.zero_(update)
        ops.addcdiv_(update, num, den, scale)
