"""Update rules of first-order optimizers (the learning rate is left to ``LR``)."""

from .adadelta import Adadelta
from .adafactor import Adafactor
from .adagrad import Adagrad
from .adam import Adam
from .adamax import Adamax
from .ademamix import AdEMAMix
from .adopt import ADOPT
from .asgd import ASGD
from .dadapt_adam import DAdaptAdam
from .lamb import Lamb
from .lars import LARS
from .lion import Lion
from .lookahead import Lookahead
from .mars import MARS
from .momentum import HeavyBall, NesterovMomentum
from .muon import Muon
from .nadam import NAdam
from .orthogonalize import Orthogonalize
from .prodigy import Prodigy
from .psgd_kron import PSGDKron
from .radam import RAdam
from .rmsprop import RMSprop
from .rprop import Rprop
from .schedule_free import ScheduleFreeAdamW, ScheduleFreeSGD
from .sgd import SGD
from .shampoo import Shampoo
from .soap import SOAP

__all__ = [
    "ADOPT", "ASGD", "LARS", "MARS", "SGD", "SOAP", "AdEMAMix", "Adadelta", "Adafactor", "Adagrad", "Adam", "Adamax",
    "DAdaptAdam", "HeavyBall", "Lamb", "Lion", "Lookahead", "Muon", "NAdam", "NesterovMomentum", "Orthogonalize",
    "PSGDKron", "Prodigy", "RAdam", "RMSprop", "Rprop", "ScheduleFreeAdamW", "ScheduleFreeSGD", "Shampoo",
]  # fmt: skip
