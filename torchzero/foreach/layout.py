"""Grouping of parameters by (device, dtype) for the foreach layer.

A :class:`Layout` fixes one canonical order of the parameters taking part in a step: sorted by
(device, dtype) first, then by torch param group, then by the ``set_params`` groups of the modules
that have them, then by position.  Every run of parameters that share all of these is a contiguous
slice, so a module's math is a handful of ``torch._foreach_*`` calls on list slices, with no
per-tensor Python work and no re-grouping on the step path.

Complex parameters are handled as real views (``torch.view_as_real``), so a complex64 tensor lands
in the float32 bucket of its device.  FSDP2 shards (DTensors) get buckets of their own, apart from plain
tensors of the same device and dtype (a model sharded only in part), so each foreach call sees one kind.
The layout is cached by the optimizer and rebuilt when the
tensors in ``param_groups``, their devices or their dtypes change (Accelerate and FSDP swap
``group["params"]`` entries in place; ``module.to(device)`` changes a parameter's device).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from . import shard


class Run(NamedTuple):
    """A contiguous slice of the canonical order whose tensors share everything settings depend on."""

    start: int
    stop: int
    device: torch.device
    dtype: torch.dtype
    group: int
    """index into ``optimizer.param_groups``"""
    sig: tuple[int, ...]
    """per partitioning module, the index of its ``set_params`` group (-1: none)"""
    bucket: int = 0
    """index into ``Layout.buckets``: runs of two buckets never merge into one segment"""


def real_view(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


class Layout:
    """Canonical order of the parameters in one step and the slices the foreach layer works on."""

    def __init__(
        self,
        groups: Sequence[Sequence[Tensor]],
        partitions: Sequence[dict[tuple[int, int], int]] = (),
        include: Sequence[bool] | None = None,
    ) -> None:
        entries: list[tuple[int, int, tuple[int, ...], int, Tensor, torch.dtype]] = []
        buckets: dict[tuple[torch.device, torch.dtype, bool], int] = {}
        flat = 0
        for gi, params in enumerate(groups):
            for i, p in enumerate(params):
                keep = include is None or include[flat]
                flat += 1
                if not keep:
                    continue
                if p.device.type == "meta":
                    raise ValueError(
                        f"parameter {i} of param group {gi} is on the meta device, so it has no data to "
                        "optimize. Materialize the model first (e.g. model.to_empty(device='cpu') and "
                        "initialize it), then build the optimizer on its parameters."
                    )
                dtype = torch.view_as_real(p).dtype if p.is_complex() else p.dtype
                # FSDP2 shards (DTensors) and plain tensors never share a bucket: each foreach call is one or the other
                order = buckets.setdefault((p.device, dtype, shard.is_dtensor(p)), len(buckets))
                sig = tuple(part.get((gi, i), -1) for part in partitions)
                entries.append((order, gi, sig, len(entries), p, dtype))
        entries.sort(key=lambda e: e[:4])

        self.originals: list[Tensor] = [e[4] for e in entries]
        """the parameter tensors (keys of ``optimizer.state``) in canonical order"""
        self.has_complex = any(p.is_complex() for p in self.originals)
        self.sharded = shard.any_dtensor(self.originals)
        """some parameters are FSDP2 shards (DTensors): steps run in :func:`.ops.sharded_mode`"""
        self.views: list[Tensor] = [real_view(p) for p in self.originals] if self.has_complex else self.originals
        """real views of the parameters, what modules compute on"""

        self.runs: list[Run] = []
        self.buckets: list[tuple[int, int]] = []
        """(start, stop) of each (device, dtype, sharded) bucket"""
        for idx, (order, gi, sig, _, p, dtype) in enumerate(entries):
            same_bucket = idx > 0 and entries[idx - 1][0] == order
            if same_bucket:
                self.buckets[-1] = (self.buckets[-1][0], idx + 1)
            else:
                self.buckets.append((idx, idx + 1))
            prev = self.runs[-1] if self.runs else None
            if prev is not None and same_bucket and (prev.group, prev.sig) == (gi, sig):
                self.runs[-1] = prev._replace(stop=idx + 1)
            else:
                self.runs.append(Run(idx, idx + 1, p.device, dtype, gi, sig, len(self.buckets) - 1))

    def __len__(self) -> int:
        return len(self.originals)

    def grads(self) -> list[Tensor | None]:
        """``.grad`` of each parameter in canonical order (real views for complex parameters)."""
        if self.has_complex:
            return [None if p.grad is None else real_view(p.grad) for p in self.originals]
        return [p.grad for p in self.originals]
