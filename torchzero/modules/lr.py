"""``tz.m.LR`` lives in the core (:mod:`torchzero.core.lr`); this name is kept for imports of 0.1.0."""

from ..core.lr import LR

__all__ = ["LR"]
