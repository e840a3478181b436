"""Core engine: the optimizer, modules and chains, settings, closures and per-step context."""

from .closure import Closure, NonFiniteLossError
from .context import Segment, StepContext
from .modular import Modular
from .module import Chain, Module, Transform

__all__ = ["Chain", "Closure", "Modular", "Module", "NonFiniteLossError", "Segment", "StepContext", "Transform"]
