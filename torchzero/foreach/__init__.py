"""The foreach layer: device/dtype grouping (:mod:`.layout`) and multi-tensor ops (:mod:`.ops`)."""

from . import ops
from .layout import Layout, Run, real_view
from .ops import reference_mode

__all__ = ["Layout", "Run", "ops", "real_view", "reference_mode"]
