"""Gradient approximation from loss values or forward-mode AD: first in the chain, no backward pass."""

from .fdm import FDM, RandomizedFDM
from .forward_gradient import ForwardGradient

__all__ = ["FDM", "ForwardGradient", "RandomizedFDM"]
