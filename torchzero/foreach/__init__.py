"""The foreach layer: device/dtype grouping (:mod:`.layout`), multi-tensor ops (:mod:`.ops`), reductions
over tensor lists (:mod:`.reduce`), flat vectors (:mod:`.flat`) and compensated low-precision writes
(:mod:`.rounding`).

This is the ground floor: it imports nothing from :mod:`torchzero.core` or :mod:`torchzero.modules`.
"""

from . import flat, ops, reduce, rounding
from .layout import Layout, Run, real_view
from .ops import reference_mode

__all__ = ["Layout", "Run", "flat", "ops", "real_view", "reduce", "reference_mode", "rounding"]
