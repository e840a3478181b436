"""Update rules of first-order optimizers (the learning rate is left to ``LR``)."""

from .adam import Adam
from .sgd import SGD

__all__ = ["Adam", "SGD"]
