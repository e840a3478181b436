"""All modules (``tz.m``), one family per subpackage, one concept per file."""

from ..core.lr import LR
from ..core.module import Chain, Module, Transform
from . import (
    external,
    grad_approx,
    line_search,
    optimizers,
    presets,
    quasi_newton,
    routing,
    second_order,
    smoothing,
    transforms,
)
from .external import *  # noqa: F403
from .grad_approx import *  # noqa: F403
from .line_search import *  # noqa: F403
from .optimizers import *  # noqa: F403
from .presets import *  # noqa: F403
from .quasi_newton import *  # noqa: F403
from .routing import *  # noqa: F403
from .second_order import *  # noqa: F403
from .smoothing import *  # noqa: F403
from .transforms import *  # noqa: F403

_FAMILIES = (external, grad_approx, line_search, optimizers, presets, quasi_newton, routing, second_order, smoothing,
             transforms)  # fmt: skip
__all__ = ["LR", "Chain", "Module", "Transform"] + [name for family in _FAMILIES for name in family.__all__]
