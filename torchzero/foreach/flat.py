"""All parameters as one flat vector and back, for modules that keep dense matrices (BFGS, SR1, Newton).

FSDP2 shards (DTensors) are gathered whole (``full_tensor``, an all-gather) into the vector, which is then the
same on every rank, and each rank keeps its own shard of the tensors made from it: the dense matrix and the
vectors kept with it are replicated, and every rank does the same dense work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import shard


def flatten(tensors: Sequence[Tensor], like: Tensor) -> Tensor:
    """All tensors (whole, also when sharded) as one vector in ``like``'s dtype and on its local device."""
    device = shard.local_device(like)
    return torch.cat([_whole(t).reshape(-1).to(device, like.dtype) for t in tensors])


def _whole(t: Tensor) -> Tensor:
    return t.full_tensor() if shard.is_dtensor(t) else t  # type: ignore[attr-defined]


def unflatten(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split ``vector`` into tensors shaped (and typed, and placed, and sharded) like ``like``."""
    out, offset = [], 0
    for t in like:
        n = t.numel()
        piece = vector[offset : offset + n].view(t.shape).to(shard.local_device(t), t.dtype)
        out.append(shard.shard_like(piece, t))
        offset += n
    return out
