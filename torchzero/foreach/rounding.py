"""Compensated writes of low-precision tensors: Kahan summation and stochastic rounding.

``theta <- theta - delta`` rounds the result to ``theta``'s dtype; for bf16 (8 bits of mantissa) a ``delta``
smaller than half the spacing of ``theta`` is lost entirely.  The functions here subtract ``delta`` so that
nothing is lost on average (stochastic rounding) or at all, up to a buffer that carries the rounding error to
the next step (Kahan).  Each works on a list of tensors of one device and dtype (a bucket) with one temporary
buffer for the whole list, in the *wide* dtype (fp32 for bf16/fp16 tensors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from . import ops, shard


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a step of ``dtype`` tensors is computed in: fp32 for bf16 and fp16, else ``dtype`` itself."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def flat_like(tensors: Sequence[Tensor], dtype: torch.dtype) -> tuple[Tensor | None, list[Tensor]]:
    """One contiguous buffer of ``dtype`` holding as many elements as ``tensors``, and its views shaped like them
    (one allocation for a whole bucket; contents undefined).  Sharded tensors (DTensors) get one buffer each, of
    their own kind (the flat buffer is None then)."""
    if shard.any_dtensor(tensors):
        return None, [torch.empty_like(t, dtype=dtype) for t in tensors]
    sizes = [t.numel() for t in tensors]
    flat = torch.empty(sum(sizes), dtype=dtype, device=tensors[0].device)
    return flat, [v.view(t.shape) for v, t in zip(flat.split(sizes), tensors, strict=True)]


def kahan_sub_(params: list[Tensor], comp: list[Tensor], delta: Sequence[Tensor]) -> None:
    """``params -= delta`` with Kahan summation; ``comp`` (the dtype of ``params``) keeps what rounding lost.

    With ``y = comp - delta`` in the wide dtype: ``theta' = round(theta + y)`` and ``comp' = y - (theta' - theta)``
    (the difference of two neighbouring values is exact), so ``theta' + comp'`` is ``theta + comp - delta``.
    """
    if not params:
        return
    params, comp, delta = _local(params), _local(comp), _local(delta)
    _, y = flat_like(params, wide_dtype(params[0].dtype))
    ops.copy_(y, comp)
    ops.sub_(y, list(delta))
    ops.copy_(comp, params)  # the old parameters (comp's own value now lives in y)
    ops.add_(params, y)
    ops.sub_(comp, params)  # theta - theta', exact
    ops.add_(comp, y)  # y - (theta' - theta)


def stochastic_sub_(params: list[Tensor], delta: Sequence[Tensor], generator: torch.Generator) -> None:
    """``params -= delta`` computed in the wide dtype and rounded to the dtype of ``params`` up or down at random,
    with the probability of each neighbour proportional to its closeness (unbiased: ``E[theta'] = theta - delta``).

    bf16 is the upper half of an fp32: adding 16 random bits to the fp32 result and cutting them off rounds it
    stochastically.  fp16 picks between the two neighbours with ``torch.nextafter``.  Wider dtypes have nothing
    to round: they are written as ``params -= delta``.
    """
    if not params:
        return
    dtype = params[0].dtype
    if dtype not in (torch.bfloat16, torch.float16):
        ops.sub_(params, list(delta))
        return
    params, delta = _local(params), _local(delta)  # each rank rounds its own shard
    flat, y = flat_like(params, torch.float32)
    assert flat is not None
    ops.copy_(y, params)
    ops.sub_(y, list(delta))
    if dtype == torch.bfloat16:
        bits = flat.view(torch.int32)
        bits.add_(torch.randint(0, 1 << 16, bits.shape, generator=generator, dtype=torch.int32, device=bits.device))
        bits.bitwise_and_(-(1 << 16))  # keep the upper 16 bits: an exact bf16 value
    else:
        _round_half_stochastic_(flat, generator)
    ops.copy_(params, y)


def _round_half_stochastic_(x: Tensor, generator: torch.Generator) -> None:
    """Round the fp32 ``x`` in place to one of its two fp16 neighbours at random (fp16 values, fp32 storage)."""
    near = x.to(torch.float16)
    gap = x - near.float()  # what rounding to the nearest value lost
    toward = torch.where(gap > 0, math.inf, -math.inf).to(torch.float16)
    other = torch.nextafter(near, toward).float()
    spacing = other - near.float()
    chance = torch.where(spacing != 0, gap / spacing, 0.0)  # NaN for inf/NaN inputs: they stay as they are
    take = torch.rand(x.shape, generator=generator, device=x.device) < chance
    torch.where(take, other, near.float(), out=x)


def _local(ts: Sequence[Tensor]) -> list[Tensor]:
    """The local shards of sharded tensors (FSDP2 DTensors: parameters, updates and buffers share placements, and
    the math here is elementwise), the tensors themselves otherwise."""
    return [shard.local(t) for t in ts]
