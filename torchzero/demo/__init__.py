"""The ``torchzero demo``: a small real task trained by several chains side by side.

Everything here is plain PyTorch plus torchzero; ``rich`` and ``matplotlib`` are only imported by the
command line (:mod:`torchzero.cli`), so the runners can be used and tested without them.
"""

from .chains import CHAINS, ChainSpec, UnavailableChain, build_chain, resolve_chains, spec_chain
from .data import Task, make_task
from .models import make_model
from .runner import TRAINERS, RunResult, run_chain, run_side_by_side

__all__ = [
    "CHAINS", "ChainSpec", "RunResult", "TRAINERS", "Task", "UnavailableChain",
    "build_chain", "make_model", "make_task", "resolve_chains", "run_chain", "run_side_by_side", "spec_chain",
]  # fmt: skip
