"""The chains the demo compares.

Each chain is a recipe (a function of the model and the step budget) plus the names of the ``tz.m``
modules it uses.  Modules are looked up when a chain is built, never at import time, so a chain whose
module is not in this version of torchzero is reported as unavailable instead of breaking the demo.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import m
from ..core import Modular
from ..spec import from_spec


class UnavailableChain(RuntimeError):
    """A chain uses a module that this installation of torchzero does not have."""


@dataclass(frozen=True)
class ChainSpec:
    """A named optimizer chain for the demo.

    Args:
        name: short name used on the command line (``--chains adam,lbfgs``).
        label: what the table and the plot call it (the chain written out).
        modules: names in ``tz.m`` the recipe uses; checked before building.
        build: ``build(model, steps) -> tz.Modular``.
        note: one line on what the chain shows.
    """

    name: str
    label: str
    modules: tuple[str, ...]
    build: Callable[[nn.Module, int], Modular] = field(repr=False)
    note: str = ""

    def missing(self) -> list[str]:
        """Modules of this chain that ``tz.m`` does not have."""
        return [name for name in self.modules if not hasattr(m, name)]


def build_chain(spec: ChainSpec, model: nn.Module, steps: int) -> Modular:
    """Build ``spec`` on ``model``'s parameters; :class:`UnavailableChain` names what is missing."""
    missing = spec.missing()
    if missing:
        raise UnavailableChain(f"needs tz.m.{', tz.m.'.join(missing)}, which this torchzero does not have")
    return spec.build(model, steps)


def _adam(model: nn.Module, steps: int) -> Modular:
    return Modular(model.parameters(), m.Adam(), m.LR(1e-2))


def _adam_cautious(model: nn.Module, steps: int) -> Modular:
    return Modular(model.parameters(), m.Adam(), m.Cautious(), m.LR(1e-2))


def _sgd_onecycle(model: nn.Module, steps: int) -> Modular:
    def one_cycle(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        # cycles the learning rate up and down and SGD's momentum the other way
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=max(steps, 2), cycle_momentum=True)

    return Modular(model.parameters(), m.SGD(momentum=0.9, nesterov=True), m.LR(0.5, scheduler_cls=one_cycle))


def _lbfgs(model: nn.Module, steps: int) -> Modular:
    return Modular(model.parameters(), m.LBFGS(), m.StrongWolfe())


def _fdm_adam(model: nn.Module, steps: int) -> Modular:
    return Modular(model.parameters(), m.RandomizedFDM(n_samples=4), m.Adam(), m.LR(0.1))


def _muon(model: nn.Module, steps: int) -> Modular:
    return Modular(model.parameters(), m.Muon(), m.LR(5e-2))


def _sam_adam(model: nn.Module, steps: int) -> Modular:
    return Modular(model.parameters(), m.SAM(rho=0.05), m.Adam(), m.LR(1e-2))


def _bfgs(model: nn.Module, steps: int) -> Modular:
    return Modular(model.parameters(), m.BFGS(), m.StrongWolfe())


def _is_matrix(p: torch.Tensor) -> bool:
    return p.ndim >= 2


def _muon_adam(model: nn.Module, steps: int) -> Modular:
    return Modular(
        model.parameters(),
        m.Split(_is_matrix, true=[m.Muon(), m.LR(5e-2)], false=[m.Adam(), m.LR(1e-2)]),
    )


def _sf_adamw(model: nn.Module, steps: int) -> Modular:
    # evaluate with opt.eval() (the averaged point x) and go back with opt.train(); the runner does both
    return Modular(model.parameters(), m.ScheduleFreeAdamW(warmup_steps=max(1, steps // 20)), m.LR(5e-2))


def _prodigy(model: nn.Module, steps: int) -> Modular:
    return Modular(model.parameters(), m.Prodigy())


def _soap(model: nn.Module, steps: int) -> Modular:
    return Modular(model.parameters(), m.SOAP(), m.LR(1e-2))


CHAINS: dict[str, ChainSpec] = {
    spec.name: spec
    for spec in (
        ChainSpec("adam", "Adam, LR(1e-2)", ("Adam", "LR"), _adam, "the baseline: equals torch.optim.Adam"),
        ChainSpec(
            "cautious", "Adam, Cautious, LR(1e-2)", ("Adam", "Cautious", "LR"), _adam_cautious,
            "drops update entries whose sign disagrees with the gradient",
        ),
        ChainSpec(
            "sgd-onecycle", "SGD(momentum=0.9, nesterov), LR(0.5, OneCycleLR)", ("SGD", "LR"), _sgd_onecycle,
            "the scheduler cycles lr and SGD's momentum",
        ),
        ChainSpec(
            "lbfgs", "LBFGS, StrongWolfe", ("LBFGS", "StrongWolfe"), _lbfgs,
            "quasi-Newton with a line search: several closure calls per step",
        ),
        ChainSpec(
            "fdm-adam", "RandomizedFDM(n_samples=4), Adam, LR(0.1)", ("RandomizedFDM", "Adam", "LR"), _fdm_adam,
            "gradient-free: loss evaluations only, no backward pass",
        ),
        ChainSpec("muon", "Muon, LR(5e-2)", ("Muon", "LR"), _muon, "orthogonalised updates for matrices"),
        # not run by default
        ChainSpec(
            "sam-adam", "SAM(rho=0.05), Adam, LR(1e-2)", ("SAM", "Adam", "LR"), _sam_adam,
            "Adam on the gradient at a nearby worst-case point: two backward passes per step",
        ),
        ChainSpec(
            "bfgs", "BFGS, StrongWolfe", ("BFGS", "StrongWolfe"), _bfgs,
            "dense quasi-Newton: fine for this small model",
        ),
        # the modern suite (with adam)
        ChainSpec(
            "muon-adam", "Split(ndim >= 2: Muon, LR(5e-2); else: Adam, LR(1e-2))", ("Split", "Muon", "Adam", "LR"),
            _muon_adam, "Muon on the weight matrices, Adam on the biases",
        ),
        ChainSpec(
            "sf-adamw", "ScheduleFreeAdamW(warmup 5%), LR(5e-2)", ("ScheduleFreeAdamW", "LR"), _sf_adamw,
            "no lr schedule; evaluated at the averaged weights, via opt.eval()",
        ),
        ChainSpec("prodigy", "Prodigy", ("Prodigy",), _prodigy, "learns its own step size (no lr to tune)"),
        ChainSpec("soap", "SOAP, LR(1e-2)", ("SOAP", "LR"), _soap, "Adam in Shampoo's eigenbasis"),
    )
}  # fmt: skip
"""every chain the demo knows, by command-line name"""

DEFAULT_CHAINS = ("adam", "cautious", "sgd-onecycle", "lbfgs", "fdm-adam", "muon")
"""the chains ``torchzero demo`` runs without ``--chains``"""

MODERN_CHAINS = ("adam", "muon-adam", "sf-adamw", "prodigy", "soap")
"""``torchzero demo --suite modern``: Adam beside newer optimizers"""


def spec_chain(text: str, name: str = "custom") -> ChainSpec:
    """A demo chain from a spec string (``torchzero demo --chain "adam, cautious, lr(1e-2)"``).

    The spec is checked here, by building it once on a stand-in parameter, so that a mistake (an unknown module, a
    wrong setting, a module that must come first) is a :class:`~torchzero.SpecError` or ``ValueError`` before any
    training starts; every run then builds the modules anew.
    """
    modules = from_spec(text)
    Modular([torch.zeros(2, 2, requires_grad=True)], *modules)
    label = " ".join(text.split())

    def build(model: nn.Module, steps: int) -> Modular:
        return Modular(model.parameters(), *from_spec(text))

    names = tuple(dict.fromkeys(type(x).__name__ for x in modules))
    return ChainSpec(name, label, names, build, "your chain (--chain)")


SUITES: dict[str, tuple[str, ...]] = {"default": DEFAULT_CHAINS, "modern": MODERN_CHAINS}
"""the named sets of chains, for ``--suite``"""


def resolve_chains(names: Sequence[str] | None, suite: str = "default") -> list[ChainSpec]:
    """The specs for ``names``, or for the chains of ``suite`` when ``names`` is None; unknown names raise
    ``ValueError`` listing the known ones."""
    if names is None:
        if suite not in SUITES:
            raise ValueError(f"unknown suite {suite!r}; choose from: {', '.join(SUITES)}")
        return [CHAINS[n] for n in SUITES[suite]]
    unknown = [n for n in names if n not in CHAINS]
    if unknown:
        raise ValueError(f"unknown chain(s) {', '.join(map(repr, unknown))}; choose from: {', '.join(CHAINS)}")
    if not names:
        raise ValueError(f"no chains given; choose from: {', '.join(CHAINS)}")
    return [CHAINS[n] for n in dict.fromkeys(names)]
