"""Scaling the update by its norm: clipping (:class:`ClipNorm`) and normalization (:class:`Normalize`).

The norm is computed over all parameters together by default (one 0-dim tensor, no host sync), or per
tensor.  Both modules report the norm before scaling to ``opt.metrics()``: ``all/<module>/norm`` for the global
norm, ``<group>/<module>/largest_tensor_norm`` (the largest per-tensor norm of each param group) per tensor.  Complex parameters are handled as real views; for ``ord=2`` that is the complex norm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...core.module import Transform
from ...core.schema import FLAG, Setting, at_least, greater_than
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import StepContext


class _NormScale(Transform):
    """Multiply the update by ``coef(norm, settings)``; the norm is global or per tensor."""

    schema = {
        "ord": Setting(greater_than(0), "The norm order is 2, 1, float('inf'), ..."),
        "per_tensor": FLAG,
        "eps": Setting(at_least(0), "Use a small value such as 1e-6."),
    }

    def __init__(self, defaults: dict[str, Any], ord: float, per_tensor: bool) -> None:
        super().__init__(defaults, options={"ord": ord, "per_tensor": per_tensor})
        self.ord = ord
        self.per_tensor = per_tensor
        self.per_segment = per_tensor  # type: ignore[misc]  # a global norm reads the whole update

    def coef_(self, norm: Tensor | list[Tensor], settings: dict[str, Any]) -> Any:
        """Turn norms into multipliers (in place for a list of per-tensor norms)."""
        raise NotImplementedError

    def step(self, ctx: StepContext) -> None:
        segments = ctx.segments(self)
        if self.per_tensor:
            for seg in segments:
                norms = ops.norm(seg.update, self.ord)
                for group, a, b in seg.group_slices():  # before scaling: the largest norm each group had
                    ctx.report_segment(seg, group, "largest_tensor_norm", torch.stack(norms[a:b]).max())
                self.coef_(norms, seg.settings)
                ops.mul_(seg.update, norms)
            return
        total = ops.global_norm(ctx.update, self.ord)
        ctx.report(self, "norm", total)  # before scaling: ClipNorm's norm before clipping
        cache: dict[tuple[Any, ...], Tensor] = {}
        for seg in segments:
            key = (*seg.settings.values(), seg.device)
            coef = cache.get(key)
            if coef is None:
                coef = cache[key] = self.coef_(total, seg.settings).to(seg.device, non_blocking=True)
            ops.mul_(seg.update, coef)


class ClipNorm(_NormScale):
    r"""Scale the update down when its norm exceeds ``max_norm``.

    .. math::  u \leftarrow u \cdot \min\left(1, \frac{c}{\lVert u \rVert_p + \epsilon}\right)

    With the defaults and as the first module this is ``torch.nn.utils.clip_grad_norm_``: the norm is
    taken over all parameters together.  ``max_norm`` may differ per param group (each group is
    scaled by its own threshold against the same global norm).  ``opt.metrics()`` shows the norm before
    clipping: ``all/<key>.ClipNorm/norm``, or per tensor the largest of each group,
    ``<group>/<key>.ClipNorm/largest_tensor_norm``.

    Args:
        max_norm: the threshold :math:`c`.
        ord: order :math:`p` of the norm (``2``, ``1``, ``float("inf")``, ...).
        per_tensor: clip each tensor by its own norm instead of the global one.
        eps: added to the norm, as in torch.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.ClipNorm(1.0), tz.m.Adam(), tz.m.LR(1e-3))
    """

    schema = {**_NormScale.schema, "max_norm": Setting(greater_than(0), "Use the largest norm allowed, e.g. 1.0.")}

    def __init__(self, max_norm: float, ord: float = 2, per_tensor: bool = False, eps: float = 1e-6) -> None:
        super().__init__({"max_norm": max_norm, "eps": eps}, ord, per_tensor)

    def coef_(self, norm: Tensor | list[Tensor], settings: dict[str, Any]) -> Any:
        c, eps = settings["max_norm"], settings["eps"]
        if isinstance(norm, Tensor):
            return torch.clamp(c / (norm + eps), max=1.0)
        ops.add_(norm, eps)
        ops.reciprocal_(norm)
        ops.mul_(norm, c)
        ops.clamp_max_(norm, 1.0)
        return norm


class Normalize(_NormScale):
    r"""Rescale the update to a fixed norm.

    .. math::  u \leftarrow u \cdot \frac{c}{\max(\lVert u \rVert_p, \epsilon)}

    A zero update stays zero.

    Args:
        norm: the target norm :math:`c`.
        ord: order :math:`p` of the norm.
        per_tensor: give each tensor the norm ``c`` instead of the whole update.
        eps: lower bound of the measured norm.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Normalize(), tz.m.LR(1e-2))  # normalized gradient descent
    """

    schema = {
        **_NormScale.schema,
        "norm": Setting(at_least(0), "Use the target norm, e.g. 1.0."),
        "eps": Setting(
            greater_than(0), "eps bounds the measured norm from below (a zero update stays zero): e.g. 1e-12."
        ),
    }

    def __init__(self, norm: float = 1.0, ord: float = 2, per_tensor: bool = False, eps: float = 1e-12) -> None:
        super().__init__({"norm": norm, "eps": eps}, ord, per_tensor)

    def coef_(self, norm: Tensor | list[Tensor], settings: dict[str, Any]) -> Any:
        c, eps = settings["norm"], settings["eps"]
        if isinstance(norm, Tensor):
            return c / torch.clamp(norm, min=eps)
        ops.clamp_min_(norm, eps)
        ops.reciprocal_(norm)
        ops.mul_(norm, c)
        return norm
