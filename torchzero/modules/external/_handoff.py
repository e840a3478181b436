"""What ``Wrap`` and ``WrapClosure`` share: the wrapped optimizer's state, groups, grads and undo."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import StepContext
    from ...core.modular import Modular


class StateView(MutableMapping):
    """``modular.state[p][key]`` seen as the wrapped optimizer's ``state[p]``.

    The wrapped optimizer's per-parameter state then lives in the Modular's state, in torch's format:
    it is saved and loaded by ``Modular.state_dict`` and moved or cast with it (Lightning, Accelerate).
    The Modular is looked up on every access because ``load_state_dict`` replaces its ``state``.
    """

    def __init__(self, opt: Modular, key: str) -> None:
        self._opt = opt
        self._key = key

    def __getitem__(self, p: Tensor) -> dict[str, Any]:
        entry = self._opt.state[p]
        mine = entry.get(self._key)
        if mine is None:
            mine = entry[self._key] = {}
        return mine

    def __setitem__(self, p: Tensor, value: dict[str, Any]) -> None:
        self._opt.state[p][self._key] = value

    def __delitem__(self, p: Tensor) -> None:
        del self._opt.state[p][self._key]

    def __iter__(self) -> Iterator[Tensor]:
        return (p for p, entry in self._opt.state.items() if self._key in entry)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def is_primitive(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_primitive(v) for v in value)
    return False


def set_grads(ctx: StepContext, update: list[Tensor]) -> None:
    """Put ``update`` (real views, canonical order) into ``.grad`` of the parameters."""
    for p, u in zip(ctx.layout.originals, update, strict=True):
        g = torch.view_as_complex(u) if p.is_complex() else u
        if p.grad is not g:
            p.grad = g


def restore_params(ctx: StepContext, before: list[Tensor]) -> None:
    """Copy ``before`` back into the parameters, bit for bit (after a wrapped step failed midway)."""
    params = ctx.params
    for a, b in ctx.layout.buckets:
        ops.copy_(params[a:b], before[a:b])
