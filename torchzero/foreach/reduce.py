"""Reductions over lists of tensors: dot products, norms, the largest absolute value.

Two kinds live here.  :func:`bucket_dot` works on tensors that share one device (a slice of one
(device, dtype) bucket) and is written with foreach primitives.  The others take the ``buckets`` of the
step's layout (``ctx.layout.buckets``, ``(start, stop)`` pairs) and reduce over every parameter: each
bucket is reduced in its own dtype on its own device, and the parts are added in the widest dtype on the
first bucket's device.  Parameters sharded by FSDP2 (DTensors) are reduced over their local shards, and the
partial results of all of them are then combined with one all-reduce per process group (see :mod:`.shard`),
so a sharded run reduces to the same value as an unsharded one.  Functions returning a Python ``float`` sync with the host, so only closure
modules (which sync anyway to compare losses) call them; the ``*_tensor`` variants and
:func:`global_norm` stay on the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from . import ops, shard

Buckets = Sequence[tuple[int, int]]


# ---------------------------------------------------------------------- within one bucket
def bucket_dot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """Sum over all tensors of ``<x, y>`` as a 0-dim tensor (no host sync); the tensors share one device."""
    if not xs:
        return torch.zeros(())
    prods = ops.mul(xs, ys)
    return torch.stack([p.sum() for p in prods]).sum() if ops.is_reference_mode() else _sum_all(prods)


def _sum_all(xs: Sequence[Tensor]) -> Tensor:
    # sum of every element of every tensor; _foreach_norm(ord=1) would take abs values
    return torch.stack([x.sum() for x in xs]).sum() if len(xs) > 1 else xs[0].sum()


# ---------------------------------------------------------------------- over all tensors
def global_norm(xs: Sequence[Tensor], ord: float = 2) -> Tensor:
    """Norm of all tensors taken together, as a 0-dim tensor (no host sync).

    Tensors on several devices are reduced on the first tensor's device.
    """
    if not xs:
        return torch.zeros(())
    if shard.any_dtensor(xs):
        return _sharded_norm(xs, ord)
    norms = ops.norm(xs, ord)
    device = norms[0].device
    stacked = torch.stack([n.to(device) for n in norms])
    return torch.linalg.vector_norm(stacked, ord)


def dot_tensor(buckets: Buckets, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """``<x, y>`` summed over all buckets, a 0-dim tensor on the first bucket's device (no host sync).

    Each bucket's part is computed in its own dtype; the parts are added in the widest of them.
    """
    if shard.any_dtensor(xs):
        return _sharded_sum(buckets, xs, lambda idx: bucket_dot([shard.local(xs[i]) for i in idx],
                                                                [shard.local(ys[i]) for i in idx]))  # fmt: skip
    parts = [bucket_dot(list(xs[a:b]), list(ys[a:b])) for a, b in buckets]
    if not parts:
        return torch.zeros(())
    dtype = parts[0].dtype
    for p in parts[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    total = parts[0].to(dtype)
    for p in parts[1:]:
        total = total + p.to(total.device, dtype)
    return total


def dot(buckets: Buckets, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> float:
    """``<x, y>`` summed over all buckets, as a Python float (closure modules only: it syncs)."""
    return float(dot_tensor(buckets, xs, ys))


def norm(buckets: Buckets, xs: Sequence[Tensor]) -> float:
    """The Euclidean norm over all buckets, as a Python float (closure modules only: it syncs)."""
    return dot(buckets, xs, xs) ** 0.5


def l1_tensor(buckets: Buckets, xs: Sequence[Tensor]) -> Tensor:
    """Sum of absolute values over all buckets, a 0-dim tensor on the first bucket's device (no host sync)."""
    if shard.any_dtensor(xs):
        return _sharded_sum(buckets, xs, lambda idx: torch.stack(ops.norm([shard.local(xs[i]) for i in idx], 1)).sum())
    total: Tensor | None = None
    for a, b in buckets:
        part = torch.stack(ops.norm(list(xs[a:b]), 1)).sum()
        if total is None:
            total = part
        else:
            total = total.to(torch.promote_types(total.dtype, part.dtype)) + part.to(total.device)
    return torch.zeros(()) if total is None else total


def l1_norms(xs: Sequence[Tensor], scratch: Sequence[Tensor] | None = None) -> list[Tensor]:
    """Each tensor's sum of absolute values (0-dim tensors, no host sync); the tensors share one device.

    One foreach norm, except on CPU with ``scratch`` (buffers shaped like ``xs``, free to overwrite): torch's CPU
    l1-norm kernel is not vectorized (about ten times a sum), so ``|x|`` is written into the buffer and summed.
    """
    if (
        scratch is not None
        and xs
        and xs[0].device.type == "cpu"
        and not shard.is_dtensor(xs[0])  # sharded: the foreach norm has the sharding rule
        and not torch.is_grad_enabled()
    ):
        return [torch.abs(x, out=b).sum() for x, b in zip(xs, scratch, strict=True)]
    return ops.norm(xs, 1)


def max_abs(buckets: Buckets, xs: Sequence[Tensor]) -> float:
    """Largest ``|x_i|`` over all tensors, as a Python float (closure modules only: one host sync per bucket).

    Tensors without elements (an empty FSDP shard, a zero-width layer) are left out: the infinity norm has
    no identity, so ``_foreach_norm`` refuses them; 0.0 when nothing is left.
    """
    out = 0.0
    for groups, idx in _classes(buckets, xs):
        part = [shard.local(xs[i]) for i in idx if shard.local(xs[i]).numel() > 0]
        value = torch.stack(ops.norm(part, math.inf)).max() if part else torch.zeros((), device=_device(xs[idx[0]]))
        out = max(out, float(shard.all_reduce_(value, groups, "max")))  # every rank joins, even with no elements
    return out


# ---------------------------------------------------------------------- sharded (FSDP2) parameters
def _device(x: Tensor) -> torch.device:
    return shard.local(x).device


def _classes(buckets: Buckets, xs: Sequence[Tensor]) -> list[tuple[shard.ProcessGroups, list[int]]]:
    """The indices of each bucket split by the process groups their reduction spans (``()``: plain tensors)."""
    out: list[tuple[shard.ProcessGroups, list[int]]] = []
    for a, b in buckets:
        by_groups: dict[shard.ProcessGroups, list[int]] = {}
        for i in range(a, b):
            by_groups.setdefault(shard.reduce_groups(xs[i]), []).append(i)
        out.extend(by_groups.items())
    return out


def _add(total: Tensor | None, part: Tensor) -> Tensor:
    if total is None:
        return part
    return total.to(torch.promote_types(total.dtype, part.dtype)) + part.to(total.device)


def _sharded_sum(buckets: Buckets, xs: Sequence[Tensor], local_sum: Callable[[list[int]], Tensor]) -> Tensor:
    """A sum over parameters some of which are DTensors: local sums, one all-reduce per process group.

    Plain tensors (the same on every rank) are added once, after the all-reduce.
    """
    sums: dict[shard.ProcessGroups, Tensor] = {}
    for groups, idx in _classes(buckets, xs):
        part = local_sum(idx)
        sums[groups] = part if groups not in sums else _add(sums[groups], part)
    total: Tensor | None = None
    for groups, value in sums.items():  # the same order on every rank: the layout's order
        total = _add(total, shard.all_reduce_(value.clone(), groups, "sum"))
    assert total is not None
    return total


def _sharded_norm(xs: Sequence[Tensor], ord: float) -> Tensor:
    """:func:`global_norm` over parameters some of which are DTensors: one all-reduce per process group."""
    device = _device(xs[0])
    by_groups: dict[shard.ProcessGroups, list[int]] = {}
    for i, x in enumerate(xs):
        by_groups.setdefault(shard.reduce_groups(x), []).append(i)
    parts = []
    for groups, idx in by_groups.items():
        norms = torch.stack([n.to(device) for n in ops.norm([shard.local(xs[i]) for i in idx], ord)])
        if math.isinf(ord):
            parts.append(shard.all_reduce_(norms.max(), groups, "max"))
        else:
            parts.append(shard.all_reduce_(norms.pow(ord).sum(), groups, "sum"))
    stacked = torch.stack(parts)
    return stacked.max() if math.isinf(ord) else stacked.sum().pow(1.0 / ord)
