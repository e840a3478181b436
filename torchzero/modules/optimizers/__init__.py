"""Update rules of first-order optimizers (the learning rate is left to ``LR``)."""

from .adadelta import Adadelta
from .adafactor import Adafactor
from .adagrad import Adagrad
from .adam import Adam
from .adamax import Adamax
from .adamw import AdamW
from .asgd import ASGD
from .lamb import Lamb
from .lars import LARS
from .lion import Lion
from .momentum import HeavyBall, NesterovMomentum
from .muon import Muon
from .nadam import NAdam
from .orthogonalize import Orthogonalize
from .radam import RAdam
from .rmsprop import RMSprop
from .rprop import Rprop
from .sgd import SGD

__all__ = [
    "ASGD", "LARS", "SGD", "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "HeavyBall", "Lamb", "Lion",
    "Muon", "NAdam", "NesterovMomentum", "Orthogonalize", "RAdam", "RMSprop", "Rprop",
]  # fmt: skip
