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

import math
from collections.abc import Callable, Sequence
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


def wrap_local(piece: Tensor, like: Tensor) -> Tensor:
    """A DTensor laid out like ``like`` whose local shard is ``piece`` (no communication, no check)."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(piece, like.device_mesh, like.placements, run_check=False, shape=like.shape,  # type: ignore[attr-defined]
                              stride=like.stride())  # fmt: skip


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


def map_full(tensors: Sequence[Tensor], fn: Callable[[int, Tensor], Tensor]) -> list[Tensor]:
    """``fn(i, full_i)`` for each tensor, on the whole (unsharded) tensor; results laid out like the inputs.

    Plain tensors go to ``fn`` as they are.  A DTensor sharded along one mesh dimension (FSDP2, HSDP) is
    gathered on one *owner* rank of that dimension's group, the owners taken round-robin over the sharded
    tensors so the work is spread; each owner runs ``fn`` on the tensors it owns and scatters the result's
    shards back.  So ``fn`` runs once per tensor per group (state it keeps stays on the owner), and each
    tensor costs a gather and a scatter of its size.  ``fn`` must return the input's shape; a sharded
    result is cast to the input's dtype.  Other layouts (sharded along several mesh dimensions) are gathered
    on every rank (``full_tensor``) and ``fn`` runs everywhere.
    """
    out: list[Tensor | None] = [None] * len(tensors)
    pending: list[tuple[int, _Gathered]] = []
    for i, t in enumerate(tensors):
        if not is_dtensor(t):
            out[i] = fn(i, t)
            continue
        dims = [d for d, p in enumerate(t.placements) if p.is_shard()]  # type: ignore[attr-defined]
        if len(dims) != 1:
            out[i] = shard_like(fn(i, t.full_tensor()).to(t.dtype), t)  # type: ignore[attr-defined]
            continue
        pending.append((i, _Gathered(t, dims[0], owner=len(pending))))
    for _i, g in pending:  # every gather is in flight before any waits
        g.start_gather()
    for i, g in pending:
        g.finish_gather()
        g.start_scatter(fn(i, g.full) if g.full is not None else None)  # only the owner holds it whole
    for i, g in pending:
        out[i] = g.finish_scatter()
    return out  # type: ignore[return-value]


class _Gathered:
    """One DTensor's trip to its owner rank and back (see :func:`map_full`): padded shards, async collectives."""

    def __init__(self, t: Any, mesh_dim: int, owner: int) -> None:
        self.t = t
        mesh = t.device_mesh
        self.group = mesh.get_group(mesh_dim)
        self.world = mesh.size(mesh_dim)
        self.rank = mesh.get_local_rank(mesh_dim)
        self.owner = owner % self.world
        self.owns = self.rank == self.owner
        self.dim = t.placements[mesh_dim].dim
        self.size = t.shape[self.dim]
        self.chunk = -(-self.size // self.world)  # torch.chunk's sizes: every rank but the last ones holds this
        self.full: Tensor | None = None

    def _padded(self, x: Tensor) -> Tensor:
        shape = list(x.shape)
        shape[self.dim] = self.chunk
        out = x.new_zeros(shape)
        out.narrow(self.dim, 0, x.shape[self.dim]).copy_(x)
        return out

    def start_gather(self) -> None:
        import torch.distributed as dist

        mine = self._padded(local(self.t))
        self.parts = [torch.empty_like(mine) for _ in range(self.world)] if self.owns else None
        self.work = dist.gather(mine, self.parts, group=self.group, group_dst=self.owner, async_op=True)

    def finish_gather(self) -> None:
        self.work.wait()
        if self.parts is not None:
            self.full = torch.cat(self.parts, self.dim).narrow(self.dim, 0, self.size)
        self.parts = None

    def start_scatter(self, result: Tensor | None) -> None:
        import torch.distributed as dist

        piece = local(self.t)
        self.recv = self._padded(piece.new_empty(piece.shape).zero_())  # the receive buffer, one padded shard
        chunks = None
        if result is not None:
            if result.shape != self.t.shape:
                raise ValueError(
                    f"map_full: fn returned shape {tuple(result.shape)} for a {tuple(self.t.shape)} tensor"
                )
            result = result.to(self.t.dtype)
            chunks = []
            for r in range(self.world):
                start = min(r * self.chunk, self.size)
                part = result.narrow(self.dim, start, min(self.chunk, self.size - start))
                chunks.append(self._padded(part))
        self.work = dist.scatter(self.recv, chunks, group=self.group, group_src=self.owner, async_op=True)
        self.full = None

    def finish_scatter(self) -> Tensor:
        from torch.distributed.tensor import DTensor

        self.work.wait()
        piece = self.recv.narrow(self.dim, 0, local(self.t).shape[self.dim]).contiguous()
        t = self.t
        return DTensor.from_local(piece, t.device_mesh, t.placements, run_check=False, shape=t.shape, stride=t.stride())


def local_index(t: Tensor, index: tuple[int, ...]) -> tuple[int, ...] | None:
    """Where element ``index`` of the whole tensor ``t`` sits in this rank's shard (None: on another rank).

    A plain tensor holds every element itself.
    """
    if not is_dtensor(t):
        return index
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)  # type: ignore[attr-defined]
    out = tuple(i - o for i, o in zip(index, offset, strict=True))
    return out if all(0 <= i < n for i, n in zip(out, shape, strict=True)) else None


def agreed_loss(loss: Tensor, same_value: bool = True) -> Tensor:
    """The closure's loss, checked to be the same on every process (one all-reduce of three numbers).

    ``same_value=False`` (a chain that takes no decision by the loss): only non-finite losses are made to agree.

    Every decision a closure module takes (accepting a trial point, rejecting a non-finite loss) must come out
    the same on every rank of a sharded run, or the ranks fall out of lockstep.  If any rank's loss is not
    finite, every rank gets NaN (so every rank rejects the step the same way); if finite losses differ, every
    rank raises the same error.  Outside an initialised process group the loss is returned as it is.
    """
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return loss
    value = float(loss)
    finite = math.isfinite(value)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    stats = torch.tensor(
        [0.0 if finite else 1.0, value if finite else -math.inf, -value if finite else -math.inf],
        dtype=torch.float64,
        device=device,
    )
    dist.all_reduce(stats, op=dist.ReduceOp.MAX)
    nonfinite, high, low = float(stats[0]), float(stats[1]), -float(stats[2])
    if nonfinite:
        return torch.full_like(loss, math.nan)
    if same_value and high != low:
        raise ValueError(
            f"the closure returned different losses on the ranks of this sharded run (from {low} to {high}). "
            "Every rank must take the same decisions: return the loss averaged over the ranks, "
            "`return tz.mean_over_ranks(loss)` (its value is the mean, its gradient this rank's own) "
            "(the adapters of torchzero_accelerate and torchzero_lightning do this). The step was not taken."
        )
    return loss


def mean_over_ranks(loss: Tensor) -> Tensor:
    """``loss`` with the value of its mean over the processes of the default group, and its own gradient.

    A closure of a sharded run returns this, so that every rank takes the same decisions (line searches, trust
    tests): ``loss + (mean - loss.detach())`` keeps this rank's graph (the backward pass is the rank's own, as
    FSDP's gradient reduction expects) and carries the mean as its value.  One all-reduce of one number; outside
    an initialised process group, ``loss`` as it is.

    Example::

        def closure(backward=True):
            loss = tz.mean_over_ranks(loss_fn(model(x), y))
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss
    """
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return loss
    total = loss.detach().clone()
    dist.all_reduce(total)
    return loss + (total / dist.get_world_size() - loss.detach())
