"""The parameters Newton's methods differentiate the loss with respect to.

The loss with its graph comes from :func:`torchzero.core.probe.raw_loss` (one closure call).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from ...core.context import StepContext


def graph_params(ctx: StepContext, who: str) -> list[Tensor]:
    """The parameters to differentiate with respect to (real tensors only)."""
    params = ctx.layout.originals
    if ctx.layout.has_complex:
        raise TypeError(f"{who} supports real parameters only; got a complex parameter.")
    return params
