"""torchzero: modular optimizers for PyTorch.

``tz.Modular(params, tz.m.Adam(), tz.m.Cautious(), tz.m.LR(1e-3))`` chains small modules into a real
``torch.optim.Optimizer``.
"""

from . import foreach
from . import modules as m
from .core import Chain, Closure, Modular, Module, NonFiniteLossError, Segment, StepContext, Transform

__version__ = "0.1.0"

__all__ = [
    "Chain", "Closure", "Modular", "Module", "NonFiniteLossError", "Segment", "StepContext", "Transform",
    "foreach", "m", "__version__",
]  # fmt: skip
