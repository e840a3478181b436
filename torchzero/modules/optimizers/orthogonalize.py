"""Orthogonalisation of matrix-shaped updates by a Newton-Schulz iteration."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...core.module import Transform
from ...core.schema import ALPHA, FLAG, Setting, dtype_name, greater_than, integer, one_of, real, tuple_of

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""coefficients of the quintic iteration from Keller Jordan's Muon (the same as ``torch.optim.Muon``)"""

_ADJUST = (None, "original", "match_rms_adamw", "none")


def newton_schulz(
    x: Tensor, steps: int = 5, coefficients: tuple[float, float, float] = NS_COEFFICIENTS, eps: float = 1e-7,
    dtype: torch.dtype | None = torch.bfloat16,
) -> Tensor:  # fmt: skip
    r"""Approximate :math:`U V^\top` of a matrix :math:`X = U S V^\top` by a quintic Newton-Schulz iteration.

    :math:`X_0 = X / \max(\|X\|_F, \epsilon)`, then :math:`A = X_k X_k^\top`,
    :math:`X_{k+1} = a X_k + (b A + c A^2) X_k`, on the wide orientation of the matrix, computed in
    ``dtype`` (None: the input's dtype).  Returns a tensor of that dtype and the input's shape.
    """
    a, b, c = coefficients
    y = x if dtype is None else x.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        y = y.T
    y = y / y.norm().clamp(min=eps)
    for _ in range(steps):
        gram = y @ y.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        y = torch.addmm(y, poly, y, beta=a)
    return y.T if tall else y


def lr_ratio(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """Scale of the orthogonalised update of a ``shape[0] x shape[1]`` matrix (see :class:`Orthogonalize`)."""
    rows, cols = shape[0], shape[1]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


NS_SCHEMA = {
    "ns_steps": Setting(integer(0, 100, closed="left"), "5 steps are usually enough."),
    "ns_coefficients": Setting(tuple_of(real(), 3, "(a, b, c)"), f"Use the default {NS_COEFFICIENTS}."),
    "eps": Setting(greater_than(0), "Use e.g. 1e-7."),
    "adjust_lr_fn": Setting(
        one_of(*_ADJUST),
        "'original' scales by sqrt(max(1, rows/cols)), 'match_rms_adamw' by 0.2*sqrt(max(rows, cols)).",
    ),
    "flatten": FLAG,
    "ns_dtype": Setting(dtype_name(), "None computes in the update's own dtype."),
    "alpha": ALPHA,
}
"""the settings of :class:`Orthogonalize`, which :class:`~torchzero.m.Muon` has too"""


class Orthogonalize(Transform):
    r"""Replace each matrix-shaped update by an approximation of its orthogonal factor.

    For an update :math:`G = U S V^\top` of shape :math:`(r, c)`:

    .. math::  u \leftarrow \alpha\, \gamma(r, c)\, \mathrm{NS}_k(G) \approx \alpha\, \gamma(r, c)\, U V^\top

    where :math:`\mathrm{NS}_k` is :func:`newton_schulz` (``ns_steps`` iterations) and :math:`\gamma` the
    shape adjustment: ``"original"`` (default) :math:`\sqrt{\max(1, r/c)}`, ``"match_rms_adamw"``
    :math:`0.2\sqrt{\max(r, c)}`, ``"none"`` 1.

    Tensors with more than two dimensions are reshaped to ``(shape[0], -1)`` when ``flatten=True``
    (convolution kernels: output channels by everything else), otherwise passed through.  Tensors with
    fewer than two dimensions (biases, norms, scalars) are passed through, scaled by ``alpha`` only.
    A complex ``(r, c)`` matrix is orthogonalised as the real ``(r, 2c)`` matrix of its real view.  The
    iteration is a per-tensor matrix product, so this module loops over the tensors.

    Args:
        ns_steps: Newton-Schulz iterations.
        ns_coefficients: :math:`(a, b, c)` of the quintic iteration.
        eps: lower bound of the Frobenius norm used for the initial scaling.
        adjust_lr_fn: shape adjustment, one of ``"original"`` (or None), ``"match_rms_adamw"``, ``"none"``.
        flatten: orthogonalise tensors with more than two dimensions as ``(shape[0], -1)`` matrices.
        ns_dtype: dtype of the iteration (``"bfloat16"`` like ``torch.optim.Muon``; None: the update's).
        alpha: step size multiplier (use :class:`LR` for the learning rate).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Orthogonalize(), tz.m.LR(0.02))

    Reference: Bernstein & Newhouse, "Old Optimizer, New Norm: An Anthology", arXiv:2409.20325, 2024;
    Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024.
    """

    fuses_lr = True
    full_matrices = True
    schema = NS_SCHEMA

    modifies_update_inplace = False  # reads the update and emits a new one through the sink

    def __init__(
        self,
        ns_steps: int = 5,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = 1e-7,
        adjust_lr_fn: str | None = None,
        flatten: bool = True,
        ns_dtype: str | torch.dtype | None = "bfloat16",
        alpha: float = 1.0,
    ) -> None:
        super().__init__(self._ns_defaults(ns_steps, ns_coefficients, eps, adjust_lr_fn, flatten, ns_dtype, alpha))

    @staticmethod
    def _ns_defaults(
        ns_steps: int, ns_coefficients: Any, eps: float, adjust_lr_fn: Any, flatten: bool, ns_dtype: Any, alpha: float
    ) -> dict[str, Any]:
        return {
            "ns_steps": ns_steps,
            "ns_coefficients": ns_coefficients,
            "eps": eps,
            "adjust_lr_fn": adjust_lr_fn,
            "flatten": flatten,
            "ns_dtype": ns_dtype,
            "alpha": alpha,
        }

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        self.orthogonalize(ctx, seg, seg.update)

    def orthogonalize(self, ctx: StepContext, seg: Segment, direction: list[Tensor]) -> None:
        """Emit the orthogonalised ``direction``, each matrix with its own (adjusted) step size."""
        s = seg.settings
        scale = s["alpha"] * seg.scale
        dtype = None if s["ns_dtype"] is None else getattr(torch, s["ns_dtype"])
        coefficients, steps, eps = tuple(s["ns_coefficients"]), s["ns_steps"], s["eps"]
        flatten, adjust = s["flatten"], s["adjust_lr_fn"]
        originals = ctx.layout.originals[seg.start : seg.stop]
        out: list[Tensor] = list(direction)  # vectors (and >2-D tensors without flatten) pass through, scaled
        scales: list[Any] = [scale] * len(direction)
        matrices = []
        for i, d in enumerate(direction):
            ndim = originals[i].ndim  # a complex matrix is a 3-D real view, but still a matrix
            if ndim == 2 or (ndim > 2 and flatten):
                matrices.append(i)
                scales[i] = scale * lr_ratio(adjust, torch.Size((d.shape[0], math.prod(d.shape[1:]))))

        def orthogonal(_: int, d: Tensor) -> Tensor:
            matrix = d if d.ndim == 2 else d.flatten(1)  # (shape[0], -1), also for a tensor with no elements
            return newton_schulz(matrix, steps, coefficients, eps, dtype).reshape(d.shape)

        # whole matrices also when the parameters are FSDP2 shards: each one orthogonalised on one owner rank
        for i, o in zip(matrices, ctx.map_full(self, [direction[i] for i in matrices], orthogonal), strict=True):
            out[i] = o
        seg.emit_per_tensor(out, scales)
