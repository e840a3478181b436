"""External optimizers as modules: :class:`Wrap` (any torch optimizer) and :class:`WrapClosure` (LBFGS-like)."""

from .wrap import Wrap
from .wrap_closure import WrapClosure

__all__ = ["Wrap", "WrapClosure"]
