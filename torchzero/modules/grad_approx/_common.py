"""What every gradient-approximation module shares: the step counter, seeded directions, handing on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ...core.module import Module
from ...core.schema import Setting, integer, one_of
from ...foreach import ops, shard

if TYPE_CHECKING:
    from ...core.context import StepContext

DISTRIBUTIONS = ("rademacher", "gaussian", "spsa")

SAMPLING_SCHEMA = {
    "n_samples": Setting(integer(1), "It is the number of directions per step: a positive integer such as 1."),
    "distribution": Setting(one_of(*DISTRIBUTIONS), "e.g. 'rademacher' (random signs) or 'gaussian'."),
    "seed": Setting(integer(), "Any integer; the directions depend on it and on the step count."),
}
"""settings of the modules that draw random directions"""


class GradApprox(Module):
    """Base of modules that estimate the gradient from loss values (``closure(False)`` only).

    They come first in the chain (``creates_update``): the optimizer then does not call the closure
    itself, and the estimate becomes both the update and ``ctx.get_grad()`` for the modules after.
    """

    needs_closure = True
    creates_update = True
    uniform_settings = True

    @staticmethod
    def hand_on(ctx: StepContext, estimate: list[Tensor]) -> None:
        # a copy for the update: later modules transform it in place, the gradient must stay as it is
        ctx.set_grad(estimate)
        ctx.update = ops.clone(estimate)


def generators(seed: int, step: int, devices: list[torch.device]) -> dict[torch.device, torch.Generator]:
    """One generator per device, seeded from (seed, step) only, so every process draws the same numbers."""
    value = (int(seed) * 1_000_003 + int(step)) % (2**63 - 1)
    out = {}
    for d in devices:
        if d not in out:
            out[d] = torch.Generator(device=d).manual_seed(value)
    return out


def draw(like: Tensor, distribution: str, gen: torch.Generator) -> Tensor:
    """A random direction shaped like ``like``: Rademacher (+-1) or standard normal entries.

    For a sharded ``like`` (an FSDP2 DTensor) every rank draws the whole tensor and keeps its own shard, so
    the direction is the one an unsharded run draws.
    """
    device = shard.local_device(like)
    if distribution == "gaussian":
        v = torch.randn(like.shape, generator=gen, device=device, dtype=like.dtype)
    else:
        v = torch.randint(0, 2, like.shape, generator=gen, device=device, dtype=like.dtype).mul_(2).sub_(1)
    return shard.shard_like(v, like)
