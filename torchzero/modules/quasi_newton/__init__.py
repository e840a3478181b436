"""Quasi-Newton directions: L-BFGS, and dense BFGS and SR1 for small problems."""

from .lbfgs import LBFGS

__all__ = ["LBFGS"]
