"""All parameters as one flat vector and back, for modules that keep dense matrices (BFGS, SR1, Newton)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def flatten(tensors: Sequence[Tensor], like: Tensor) -> Tensor:
    """All tensors as one vector in ``like``'s dtype and on its device."""
    return torch.cat([t.reshape(-1).to(like.device, like.dtype) for t in tensors])


def unflatten(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split ``vector`` into tensors shaped (and typed, and placed) like ``like``."""
    out, offset = [], 0
    for t in like:
        n = t.numel()
        out.append(vector[offset : offset + n].view_as(t).to(t.device, t.dtype))
        offset += n
    return out
