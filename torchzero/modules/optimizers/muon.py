"""Muon: momentum, then orthogonalisation of matrix-shaped updates (Jordan et al., 2024)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...core.schema import FLAG, Setting, in_range
from ...foreach import ops
from .orthogonalize import NS_COEFFICIENTS, NS_SCHEMA, Orthogonalize

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


class Muon(Orthogonalize):
    r"""Muon's update rule (``torch.optim.Muon``), with the learning rate left to :class:`LR`.

    .. math::
        b_t = \mu\, b_{t-1} + (1-\mu)\, g_t, \qquad
        \tilde b_t = \begin{cases} (1-\mu)\, g_t + \mu\, b_t & \text{nesterov} \\ b_t & \text{otherwise}\end{cases},\\
        u \leftarrow \alpha\, \gamma(r, c)\, \mathrm{NS}_k(\tilde b_t)

    with :math:`\mathrm{NS}_k` and :math:`\gamma` as in :class:`Orthogonalize`.  Tensors that are not
    matrices follow :class:`Orthogonalize`'s rules: more than two dimensions are flattened to
    ``(shape[0], -1)`` (``flatten=True``), fewer than two get the momentum direction :math:`\tilde b_t`
    unchanged; torch rejects both.  Muon is meant for hidden-layer matrices: embeddings, heads, biases
    and norms usually get another rule (for example a second optimizer with ``tz.m.Adam``).

    ``tz.Modular(p, tz.m.Muon(), tz.m.WeightDecay(wd), tz.m.LR(lr))`` equals
    ``torch.optim.Muon(p, lr=lr, weight_decay=wd)`` on 2-D parameters.

    Args:
        momentum: :math:`\mu`.
        nesterov: use the Nesterov form of the momentum.
        ns_steps, ns_coefficients, eps, adjust_lr_fn, flatten, ns_dtype: see :class:`Orthogonalize`.
        alpha: step size multiplier (use :class:`LR` for the learning rate).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Muon(), tz.m.LR(0.02))

    Reference: Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024,
    https://kellerjordan.github.io/posts/muon/
    """

    keeps_state = True
    schema = {"momentum": Setting(in_range(0, 1, closed="left"), "Use e.g. 0.95."), "nesterov": FLAG, **NS_SCHEMA}

    def __init__(
        self,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = 1e-7,
        adjust_lr_fn: str | None = None,
        flatten: bool = True,
        ns_dtype: str | torch.dtype | None = "bfloat16",
        alpha: float = 1.0,
    ) -> None:
        defaults = self._ns_defaults(ns_steps, ns_coefficients, eps, adjust_lr_fn, flatten, ns_dtype, alpha)
        super(Orthogonalize, self).__init__({"momentum": momentum, "nesterov": nesterov, **defaults})

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        s = seg.settings
        momentum = s["momentum"]
        update = seg.update
        (buf,) = seg.state("momentum_buffer")
        ops.lerp_(buf, update, 1 - momentum)
        if s["nesterov"]:
            self.orthogonalize(ctx, seg, ops.lerp(update, buf, momentum))  # out of place, as torch.optim.Muon
        else:
            self.orthogonalize(ctx, seg, buf)

    def extra_repr(self) -> str:
        return Orthogonalize.extra_repr(self)
