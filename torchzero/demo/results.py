"""What every demo trainer shares: the record of one run and the trainer's signature.

The plain loop (:mod:`.runner`) and the adapters' loops (:mod:`.integrations`) both fill a :class:`RunResult`;
the runner picks a trainer and imports the integrations, never the other way round.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

OnStep = Callable[[int, float], None]
"""``on_step(step, loss)``: called after every optimizer step (step counts from 1)"""

Trained = tuple[nn.Module, Any]
"""what a trainer returns: the model and its optimizer (for ``opt.eval()`` around the evaluation)"""


@dataclass
class RunResult:
    """What one chain did: per-step losses, final metrics, closure evaluations and wall time."""

    chain: str
    label: str
    status: str = "ok"
    """``ok``, ``unavailable`` (a module is missing), ``diverged`` (non-finite loss) or ``failed``"""
    message: str = ""
    losses: list[float] = field(default_factory=list)
    final_loss: float = math.nan
    train_acc: float = math.nan
    test_acc: float = math.nan
    steps: int = 0
    closure_calls: int = 0
    wall_time: float = 0.0
