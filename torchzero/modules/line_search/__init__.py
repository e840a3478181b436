"""Line searches: choose how far to move along the update the rest of the chain produced."""

from .backtracking import ArmijoTrials, Backtracking
from .base import LineSearch
from .strong_wolfe import StrongWolfe

__all__ = ["ArmijoTrials", "Backtracking", "LineSearch", "StrongWolfe"]
