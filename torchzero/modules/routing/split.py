"""Routing: different sub-chains for different parameters inside one chain."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ...core.module import Chain, Module
from ...core.schema import FLAG

if TYPE_CHECKING:
    from ...core.context import StepContext

Filter = Callable[[Tensor], bool] | str | Iterable[Tensor]


class Split(Module):
    r"""Send each parameter through one of two sub-chains: ``true`` where ``filter`` holds, ``false`` elsewhere.

    .. math::  u_i \leftarrow \begin{cases} T(u)_i & \text{filter}(\theta_i) \\ F(u)_i & \text{otherwise} \end{cases}

    The two sub-chains keep their own state (one namespace each in ``opt.state``) and see only their own
    parameters; the modules after the ``Split`` see the whole update again.  The classic use is Muon on the
    hidden weight matrices and Adam on everything else (embeddings, biases, norms and the output layer are
    usually better with Adam):

    Args:
        filter: which parameters go to ``true``: a predicate ``filter(param) -> bool`` (e.g. ``lambda p: p.ndim
            >= 2``), the name of a param-group key (the parameters of groups where that key is true; the key
            becomes a setting of the chain, so torch accepts it in the groups), or a list of parameters.  It is
            evaluated when the optimizer is built and whenever its param groups change.
        true: a module or a list of modules for the parameters the filter selects.
        false: a module or a list of modules for the others (empty: they pass through unchanged).

    Inside a branch only modules that work segment by segment are allowed (update rules, elementwise
    transforms, ``LR``); whole-vector modules (line searches, L-BFGS, global-norm clipping) treat all parameters
    as one vector and are refused with an error when the optimizer is built.

    Example::

        opt = tz.Modular(
            model.parameters(),
            tz.m.Split(lambda p: p.ndim >= 2, true=[tz.m.Muon()], false=[tz.m.Adam()]),
            tz.m.LR(0.02),
        )

    With one ``LR`` after the split both branches share the learning rate (schedulers reach it); put an ``LR``
    into each branch for two learning rates.
    """

    modifies_update_inplace = False  # each branch's stages copy the update themselves where they need to

    def __init__(self, filter: Filter, true: Any = (), false: Any = ()) -> None:  # noqa: A002 - the natural name
        defaults: dict[str, Any] = {}
        self.key_filter: str | None = None
        self.params_filter: dict[int, Tensor] | None = None
        self.predicate: Callable[[Tensor], bool] | None = None
        if isinstance(filter, str):
            self.key_filter = filter
            defaults[filter] = False  # a group that does not set the key goes to ``false``
            self.schema = {filter: FLAG}  # type: ignore[misc]  # the key is a setting of this instance
        elif callable(filter):
            self.predicate = filter
        elif isinstance(filter, Iterable) and not isinstance(filter, Tensor):
            self.params_filter = {id(p): p for p in filter}
        else:
            raise TypeError(
                "Split's filter must be a predicate on a parameter (lambda p: p.ndim >= 2), the name of a "
                f"param-group key, or a list of parameters; got {type(filter).__name__}."
            )
        super().__init__(defaults)
        self.true = _as_chain(true)
        self.false = _as_chain(false)
        for branch, chain in enumerate((self.true, self.false)):
            for m in chain.walk():
                if m is chain or isinstance(m, Chain):
                    continue
                if not m.per_segment or m.uniform_settings or m.needs_closure or m.creates_update:
                    raise TypeError(
                        f"{type(m).__name__} cannot run inside a Split branch: it treats all parameters as one "
                        "vector (or evaluates the closure), so it would mix both branches' parameters. Put it "
                        "before or after the Split, e.g. tz.m.Split(filter, true=[...], false=[...]), "
                        f"tz.m.{type(m).__name__}(...)."
                    )
                m.branches.append((self, branch))

    def children(self) -> list[Module]:
        return [self.true, self.false]

    # ---------------------------------------------------------------- partitions
    @property
    def partitions_params(self) -> bool:
        return True

    def partition_of(self, param: Tensor, group: dict[str, Any]) -> int:
        if self.predicate is not None:
            return 0 if self.predicate(param) else 1
        if self.params_filter is not None:
            return 0 if id(param) in self.params_filter else 1
        return 0 if group.get(self.key_filter) else 1  # type: ignore[arg-type]

    def check_partitions(self, positions: dict[tuple[int, int], int], groups: Any) -> None:
        if self.params_filter is None:
            return
        placed = {id(p) for g in groups for p in g["params"]}
        missing = [tuple(p.shape) for i, p in self.params_filter.items() if i not in placed]
        if missing:
            raise ValueError(
                f"Split was given parameters of shapes {missing} that are not among the optimizer's parameters; "
                "list parameters of the model the optimizer trains."
            )

    # ---------------------------------------------------------------- stepping
    def step(self, ctx: StepContext) -> None:
        # each branch changes only the update slices of its own parameters and hands them on
        ctx.run_stage(self.true)
        ctx.run_stage(self.false)

    def extra_repr(self) -> str:
        how = self.key_filter or (
            "params" if self.params_filter is not None else getattr(self.predicate, "__name__", "?")
        )
        return f"{how}, true={self.true!r}, false={self.false!r}"


def _as_chain(modules: Any) -> Chain:
    if isinstance(modules, Chain):
        return modules
    if isinstance(modules, Module):
        return Chain(modules)
    return Chain(*modules)
