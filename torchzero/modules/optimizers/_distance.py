"""Shared machinery of the distance-estimating rules (:class:`Prodigy`, :class:`DAdaptAdam`).

Both estimate one step size :math:`d` for the whole optimizer from reductions over every parameter (dot
products and l1 norms), as their references do over all param groups.  The estimate must stay on the device
(no host sync), so it is a 0-dim tensor, kept once in the state of one parameter, the first of the widest
dtype (in that dtype, as torch casts state on load: the state then moves, casts and saves with the
parameters), as the references keep one per optimizer.  Each step computes in float64 (float32 on MPS, which
has no float64), as the references' Python floats; so with float32 parameters the estimate is rounded to
float32 between steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...core.settings import same_value
from ...foreach import ops, reduce, shard

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext
    from ...core.module import Module


def scalar_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def check_uniform(module: Module, segs: Sequence[Segment], keys: Sequence[str]) -> dict[str, Any]:
    """The settings ``keys`` of the first segment; raises if another param group resolves them differently."""
    first = segs[0].settings
    for seg in segs[1:]:
        diff = [k for k in keys if not same_value(first[k], seg.settings[k])]
        if diff:
            raise ValueError(
                f"{type(module).__name__} estimates one step size for all parameters, so {diff} must be the same "
                f"in every param group (group {segs[0].groups[0]} vs group {seg.groups[0]}); only "
                f"{sorted(set(first) - set(keys))} may differ. Set them on the module instead of per group."
            )
    return first


def shared_scalars(
    ctx: StepContext, module: Module, segs: Sequence[Segment], init: dict[str, float]
) -> tuple[dict[str, Tensor], tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The current values of the shared scalars (on the first segment's device, in the scalar dtype), and where
    :func:`store` keeps the new ones: ``(holder, stale)``, the module state of the parameter that holds them after
    this step and of every other parameter that holds a copy now.

    The values are found in any parameter of the optimizer (one that has no gradient in this step too), the copy
    of the widest dtype first; ``init`` where none holds them.  The holder is the first parameter of this step
    with the widest dtype, so the values keep that dtype's precision between steps (torch casts state to its
    parameter's dtype on load).  Checkpoints of the form with a copy in every parameter load too: the first step
    reads the widest copy and :func:`store` removes the others.
    """
    names = tuple(init)
    key = module.key
    state = ctx.opt.state
    source: dict[str, Any] | None = None
    width = 0
    held_by: list[dict[str, Any]] = []
    for group in ctx.opt.param_groups:  # bookkeeping only: a dict lookup per parameter, no tensor is read
        for p in group["params"]:
            held = state[p].get(key) if p in state else None
            if held is not None and names[0] in held:
                held_by.append(held)
                if held[names[0]].element_size() > width:
                    source, width = held, held[names[0]].element_size()
    device = segs[0].device
    dtype = scalar_dtype(device)
    values = {
        n: torch.tensor(v, dtype=dtype, device=device) if source is None else source[n].to(device, dtype, copy=True)
        for n, v in init.items()
    }
    params = ctx.params
    index = max((i for seg in segs for i in range(seg.start, seg.stop)), key=lambda i: params[i].element_size())
    ctx.state(module, *names, init={n: _copier(values[n]) for n in names}, start=index, stop=index + 1)
    holder = state[ctx.layout.originals[index]][key]
    return values, (holder, [h for h in held_by if h is not holder])


def _copier(value: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda v: value.to(v.device, v.dtype, copy=True)


def store(place: tuple[dict[str, Any], list[dict[str, Any]]], names: Sequence[str], values: dict[str, Tensor]) -> None:
    """Write the new values into the holder (:func:`shared_scalars`) and drop every other copy."""
    holder, stale = place
    for name in names:
        holder[name].copy_(values[name])
    for held in stale:
        for name in names:
            held.pop(name, None)


def dot(xs: Sequence[Tensor], ys: Sequence[Tensor], device: torch.device) -> Tensor:
    """``sum_i <x_i, y_i>``: each tensor's dot product in its dtype, added in the scalar dtype on ``device``.

    Detached: in differentiable mode the estimate is a constant of each step (the parameters it would save for
    the backward pass are written in place by the step).
    """
    if not xs:
        return torch.zeros((), dtype=scalar_dtype(device), device=device)
    if shard.any_dtensor(xs):  # FSDP2 shards: local sums, one all-reduce over the mesh
        return reduce.dot_tensor([(0, len(xs))], xs, ys).detach().to(device, scalar_dtype(device))
    # torch.dot, as the references: one pass, no product tensor (a reduction, so one call per tensor)
    sums = torch.stack([torch.dot(x.detach().reshape(-1), y.detach().reshape(-1)) for x, y in zip(xs, ys, strict=True)])
    return sums.to(device, scalar_dtype(device)).sum()


def l1(xs: Sequence[Tensor], device: torch.device, scratch: Sequence[Tensor] | None = None) -> Tensor:
    """``sum_i |x_i|_1``: each tensor's l1 norm in its dtype, added in the scalar dtype on ``device``
    (``scratch``: buffers like ``xs`` that :func:`~torchzero.foreach.reduce.l1_norms` may overwrite)."""
    if not xs:
        return torch.zeros((), dtype=scalar_dtype(device), device=device)
    return torch.stack(reduce.l1_norms(xs, scratch)).detach().to(device, scalar_dtype(device)).sum()


def on(value: Tensor, seg: Segment) -> Tensor:
    """A shared scalar cast to the segment's device and dtype (for foreach ops and the sink)."""
    return value.to(seg.device, seg.dtype)


def add_(xs: Sequence[Tensor], value: Tensor) -> None:
    """``x += value`` for a 0-dim tensor ``value`` (foreach ``add_`` with one tensor reads it on the host)."""
    ops.add_(xs, [value] * len(xs))


def as_scalar(value: Any, like: Tensor) -> Tensor:
    """A setting (a number, or a 0-dim tensor lr) as a 0-dim tensor like ``like``."""
    if isinstance(value, Tensor):
        return value.to(like.device, like.dtype)
    return torch.tensor(value, dtype=like.dtype, device=like.device)
