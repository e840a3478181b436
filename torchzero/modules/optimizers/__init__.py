"""Update rules of first-order optimizers (the learning rate is left to ``LR``)."""

from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam
from .adamax import Adamax
from .lion import Lion
from .lookahead import Lookahead
from .momentum import HeavyBall, NesterovMomentum
from .muon import Muon
from .nadam import NAdam
from .orthogonalize import Orthogonalize
from .radam import RAdam
from .rmsprop import RMSprop
from .rprop import Rprop
from .schedule_free import ScheduleFreeAdamW, ScheduleFreeSGD
from .sgd import SGD

__all__ = [
    "SGD", "Adadelta", "Adagrad", "Adam", "Adamax", "HeavyBall", "Lion", "Lookahead", "Muon", "NAdam",
    "NesterovMomentum", "Orthogonalize", "RAdam", "RMSprop", "Rprop", "ScheduleFreeAdamW", "ScheduleFreeSGD",
]  # fmt: skip
