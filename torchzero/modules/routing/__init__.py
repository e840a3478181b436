"""Routing: sub-chains for subsets of the parameters (Muon on the hidden matrices, Adam on the rest)."""

from .split import Split

__all__ = ["Split"]
