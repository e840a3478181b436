"""torchzero: modular optimizers for PyTorch.

``tz.Modular(params, tz.m.Adam(), tz.m.Cautious(), tz.m.LR(1e-3))`` chains small modules into a real
``torch.optim.Optimizer``; ``tz.Modular(params, *tz.from_spec("adam, cautious, lr(1e-3)"))`` builds the same
chain from one line of text (command lines, sweeps).
"""

from . import foreach
from . import modules as m
from .core import Chain, Closure, Modular, Module, NonFiniteLossError, Segment, StepContext, Transform
from .foreach.shard import mean_over_ranks
from .spec import SpecError, from_spec

__version__ = "0.1.0"

__all__ = [
    "mean_over_ranks",
    "Chain", "Closure", "Modular", "Module", "NonFiniteLossError", "Segment", "SpecError", "StepContext", "Transform",
    "from_spec",
    "foreach", "m", "__version__",
]  # fmt: skip
