"""All modules (``tz.m``), one family per file."""

from ..core.module import Chain, Module, Transform
from .adam import Adam
from .lr import LR
from .sgd import SGD

__all__ = ["LR", "SGD", "Adam", "Chain", "Module", "Transform"]
