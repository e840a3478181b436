"""Gradient approximation from loss values: first in the chain, ``closure(False)`` only."""

from .fdm import FDM, RandomizedFDM

__all__ = ["FDM", "RandomizedFDM"]
