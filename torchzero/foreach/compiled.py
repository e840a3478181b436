"""Scalars computed while torch.compile traces a step, realized once per step instead of once per element.

When dynamo traces a step, numbers derived from values that change between steps (the step count in a bias
correction ``1 - beta ** t``, a scheduled lr or beta) become symbolic floats.  Inductor prints such an
expression into the generated kernel, inside the loop over the elements: on the CPU, where ``std::pow`` may
set ``errno`` and is therefore never hoisted, every 16 elements pay for a double ``pow`` and ``sqrt`` (a 2x to
3x slower step than torch's fused Adam on 4 x 200k parameters).

:func:`realize` turns such a scalar into a 0-dim tensor behind an opaque custom op: Inductor then computes it
in a tiny kernel of its own, once per step, and the elementwise kernel reads it from memory (one scalar load).
:mod:`.ops` applies it to every symbolic scalar argument of a foreach op under compile, so no module has to
know about it.  Outside torch.compile nothing here runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

_REALIZED_DTYPES = (torch.float32, torch.float64)
"""list dtypes whose symbolic scalars are realized: the op's own computation type, so the result is the same as
with the Python number.  A half-precision list would round a tensor scalar to its own dtype first (type
promotion), so its scalars stay inline (exact, slower)."""


@torch.library.custom_op("torchzero::realized_scalar", mutates_args=())
def _realized_scalar(value: Tensor) -> Tensor:
    """A copy of the 0-dim ``value``: opaque to Inductor, so ``value`` is computed once, into a buffer."""
    return value.clone()


@_realized_scalar.register_fake
def _(value: Tensor) -> Tensor:
    return torch.empty_like(value)


def is_symbolic(x: Any) -> bool:
    """True for a float scalar argument, which may be symbolic while dynamo traces.

    Dynamo shows a symbolic float to the traced code as a ``float`` (``isinstance(x, torch.SymFloat)`` is False
    there), so every float is realized: a constant costs one tiny kernel per step, far less than a ``pow`` per
    element.  Integers (``clamp_min_(x, 0)``) stay as they are."""
    return isinstance(x, (float, torch.SymFloat))


def realizes(like: Tensor) -> bool:
    """True when the symbolic scalars of a foreach op over tensors like ``like`` are realized."""
    return like.dtype in _REALIZED_DTYPES


def realize(x: Any, like: Tensor) -> Tensor:
    """The symbolic float ``x`` as a 0-dim tensor of ``like``'s dtype and device, computed once per step."""
    return _realized_scalar(torch.scalar_tensor(x, dtype=like.dtype, device=like.device))
