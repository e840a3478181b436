"""Parameters sharded by FSDP2 (``fully_shard``): DTensors, their local shards and the groups they span.

A DTensor parameter holds one shard of the full tensor on each rank of its device mesh.  Elementwise math
needs no communication: it runs on the local shards (:func:`local`).  A reduction over parameters (a dot
product, a global norm) reduces the local shards first and then combines the partial results with one
all-reduce over the process groups that the parameter is sharded across (:func:`reduce_groups`); mesh
dimensions where it is replicated hold the same values and are left out, so HSDP's (replicate, shard) mesh
reduces over the shard dimension only.  torch.distributed is imported only when a DTensor is seen, so
unsharded steps never load it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

ProcessGroups = tuple[Any, ...]
"""the process groups, one per sharded mesh dimension, that a reduction over a DTensor spans (empty: none)"""


def is_dtensor(t: Any) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (tested by type name: no import of torch.distributed)."""
    return type(t).__name__ == "DTensor"


def any_dtensor(xs: Sequence[Any]) -> bool:
    return any(is_dtensor(x) for x in xs)


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (a view: writing into it writes the DTensor), or ``t`` itself."""
    return t._local_tensor if is_dtensor(t) else t  # type: ignore[attr-defined]  # to_local() minus autograd


def same_layout(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` are DTensors laid out the same way (mesh, placements, shape)."""
    return is_dtensor(b) and a.device_mesh == b.device_mesh and a.placements == b.placements and a.shape == b.shape


def reduce_groups(t: Tensor) -> ProcessGroups:
    """The process groups a sum over ``t``'s elements must be all-reduced over (``()`` for a plain tensor).

    One group per mesh dimension along which ``t`` is sharded; replicated dimensions are left out.  A
    parameter with a ``Partial`` placement (pending sums) is refused: parameters are never partial.
    """
    if not is_dtensor(t):
        return ()
    groups = []
    mesh = t.device_mesh  # type: ignore[attr-defined]
    for dim, placement in enumerate(t.placements):  # type: ignore[attr-defined]
        if placement.is_partial():
            raise ValueError(
                f"a parameter or update has placement {t.placements} (pending partial sums); torchzero "  # type: ignore[attr-defined]
                "expects sharded or replicated DTensors, as fully_shard makes: redistribute it to Shard or Replicate"
            )
        if placement.is_shard():
            groups.append(mesh.get_group(dim))
    return tuple(groups)


def all_reduce_(value: Tensor, groups: ProcessGroups, op: str = "sum") -> Tensor:
    """All-reduce ``value`` in place over each of ``groups`` (``op`` is ``"sum"`` or ``"max"``); returns it."""
    if groups:
        import torch.distributed as dist

        reduce_op = dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX
        for group in groups:
            dist.all_reduce(value, op=reduce_op, group=group)
    return value


def shard_like(full: Tensor, like: Tensor) -> Tensor:
    """``full`` (the same whole tensor on every rank) laid out like ``like``: its local piece, as a DTensor.

    No communication: each rank keeps the slice that ``like`` holds.  ``like`` plain: ``full`` itself.
    """
    if not is_dtensor(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)  # type: ignore[attr-defined]


def local_device(t: Tensor) -> torch.device:
    """The device of ``t``'s local shard (a DTensor's ``.device`` is its mesh's device type)."""
    return local(t).device


def stacked_zeros(like: Tensor, n: int) -> Tensor:
    """Zeros of shape ``(n, *like.shape)``: ``n`` slots of ``like``'s shape, each laid out (sharded) like ``like``.

    For a DTensor each rank holds ``(n, *local_shape)``, sharded one dimension further along, so that
    ``stacked[i]`` is laid out like ``like`` (``like.new_zeros`` would make a replicated full tensor).
    """
    if not is_dtensor(like):
        return like.new_zeros((n, *like.shape))
    from torch.distributed.tensor import DTensor, Shard

    piece = local(like).new_zeros((n, *local(like).shape))
    placements = [Shard(p.dim + 1) if p.is_shard() else p for p in like.placements]  # type: ignore[attr-defined]
    mesh = like.device_mesh  # type: ignore[attr-defined]
    return DTensor.from_local(piece, mesh, placements, run_check=False, shape=torch.Size((n, *like.shape)),
                              stride=torch.empty((n, *like.shape), device="meta").stride())  # fmt: skip
