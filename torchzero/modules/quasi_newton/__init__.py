"""Quasi-Newton directions: L-BFGS, and dense BFGS and SR1 for small problems."""

from .dense import BFGS, SR1
from .lbfgs import LBFGS

__all__ = ["BFGS", "LBFGS", "SR1"]
