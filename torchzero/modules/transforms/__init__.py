"""Update transforms: weight decay, clipping, normalization, sign, moving averages and small ops."""

from .arithmetic import Add, Div, Lerp, Mul, Neg, Sub
from .cautious import Cautious
from .centralize import Centralize
from .clip_value import ClipValue
from .ema import EMA
from .norm import ClipNorm, Normalize
from .sign import Sign
from .sources import Clone, Grad
from .weight_decay import WeightDecay

__all__ = [
    "EMA", "Add", "Cautious", "Centralize", "ClipNorm", "ClipValue", "Clone", "Div", "Grad", "Lerp", "Mul",
    "Neg", "Normalize", "Sign", "Sub", "WeightDecay",
]  # fmt: skip
