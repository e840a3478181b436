"""Modules that look at a neighbourhood of the parameters: sharpness-aware minimization."""

from .sam import SAM

__all__ = ["SAM"]
