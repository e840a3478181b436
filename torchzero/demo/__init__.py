"""The ``torchzero demo``: small classification tasks trained by several chains side by side.

Everything here is plain PyTorch plus torchzero; ``rich`` and ``matplotlib`` are only imported by the
command line (:mod:`torchzero.cli`), and scikit-learn only when the digits task is loaded, so the runners
can be used and tested without them.
"""

from .chains import CHAINS, ChainSpec, UnavailableChain, build_chain, resolve_chains, spec_chain
from .data import TASKS, Task, load_digits_task, load_task, make_task
from .models import make_model
from .results import RunResult
from .runner import TRAINERS, run_chain, run_side_by_side

__all__ = [
    "CHAINS", "ChainSpec", "RunResult", "TASKS", "TRAINERS", "Task", "UnavailableChain", "build_chain",
    "load_digits_task", "load_task", "make_model", "make_task", "resolve_chains", "run_chain", "run_side_by_side",
    "spec_chain",
]  # fmt: skip
