"""Small elementwise operations for composing new rules: ``Add``, ``Sub``, ``Mul``, ``Div``, ``Lerp``, ``Neg``.

The operand of a binary operation is a number or a *branch*: a module, or a list of modules, that runs
on a copy of the current update and whose result is the operand.  ``Grad()`` as a branch gives the
raw gradient, so for example::

    tz.Modular(p, tz.m.Adam(), tz.m.Lerp(tz.m.Grad(), 0.1), tz.m.LR(1e-3))  # 90% Adam, 10% gradient
    tz.Modular(p, tz.m.Mul([tz.m.Grad(), tz.m.Sign()]), tz.m.LR(1e-3))     # u * sign(g)

A branch's modules have their own state; they never write the parameters.
"""

from __future__ import annotations

from numbers import Real
from typing import TYPE_CHECKING, Any

from ...core.module import Chain, Module, Transform
from ...core.schema import Setting, real
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


class _Binary(Transform):
    """``u <- op(u, other)`` where ``other`` is a number (setting ``other``) or a branch."""

    schema = {"other": Setting(real(), "other is a number, or a module (or a list of modules) run on the update.")}

    def __init__(self, other: Any, defaults: dict[str, Any] | None = None) -> None:
        defaults = dict(defaults or {})
        self.branch: Module | None = None
        if isinstance(other, Real) and not isinstance(other, bool):
            defaults["other"] = other
        elif isinstance(other, Module):
            self.branch = other
        elif isinstance(other, (list, tuple)):
            self.branch = Chain(*other)
        else:
            raise TypeError(
                f"{type(self).__name__} takes a number or a module (or a list of modules, run on a copy of the "
                f"update) as its operand, got {type(other).__name__}. For the gradient use tz.m.Grad()."
            )
        super().__init__(defaults)
        self.per_segment = self.branch is None  # type: ignore[misc]  # a branch runs on the whole update

    def children(self) -> list[Module]:
        return [] if self.branch is None else [self.branch]

    def step(self, ctx: StepContext) -> None:
        other = None if self.branch is None else ctx.run_branch(self.branch)
        for seg in ctx.segments(self):
            operand = seg.settings["other"] if other is None else other[seg.start : seg.stop]
            self.op(seg, operand)

    def op(self, seg: Segment, other: Any) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        parts = [repr(self.branch)] if self.branch is not None else []
        return ", ".join(parts + [f"{k}={v!r}" for k, v in self.defaults.items()])


def _add_scaled(seg: Segment, other: Any, alpha: Any) -> None:
    """``u += alpha * other`` for a branch's tensors or a number."""
    if isinstance(other, list):
        ops.add_(seg.update, other, alpha=alpha)
    else:
        ops.add_(seg.update, other * alpha)


class Add(_Binary):
    r"""Add a number or a branch's result: :math:`u \leftarrow u + \alpha\, o`.

    Args:
        other: a number, or a module / list of modules run on a copy of the update.
        alpha: multiplier of ``other``.

    Example::

        tz.Modular(p, tz.m.Adam(), tz.m.Add(tz.m.Grad(), alpha=0.1), tz.m.LR(1e-3))
    """

    schema = {**_Binary.schema, "alpha": Setting(real(), "alpha multiplies other, e.g. 1.0.")}

    def __init__(self, other: Any, alpha: float = 1.0) -> None:
        super().__init__(other, {"alpha": alpha})

    def op(self, seg: Segment, other: Any) -> None:
        _add_scaled(seg, other, seg.settings["alpha"])


class Sub(_Binary):
    r"""Subtract a number or a branch's result: :math:`u \leftarrow u - \alpha\, o`.

    Args:
        other: a number, or a module / list of modules run on a copy of the update.
        alpha: multiplier of ``other``.

    Example::

        tz.Modular(p, tz.m.Grad(), tz.m.Sub(tz.m.EMA(0.9)), tz.m.LR(1e-3))  # gradient minus its running mean
    """

    schema = Add.schema

    def __init__(self, other: Any, alpha: float = 1.0) -> None:
        super().__init__(other, {"alpha": alpha})

    def op(self, seg: Segment, other: Any) -> None:
        _add_scaled(seg, other, -seg.settings["alpha"])


class Mul(_Binary):
    r"""Multiply by a number or a branch's result: :math:`u \leftarrow u \odot o`.

    Args:
        other: a number, or a module / list of modules run on a copy of the update.

    Example::

        tz.Modular(p, tz.m.Adam(), tz.m.Mul(0.5), tz.m.LR(1e-3))  # == Adam(alpha=0.5)
    """

    def __init__(self, other: Any) -> None:
        super().__init__(other)

    def op(self, seg: Segment, other: Any) -> None:
        ops.mul_(seg.update, other)


class Div(_Binary):
    r"""Divide by a number or a branch's result: :math:`u \leftarrow u \oslash o`.

    Args:
        other: a number, or a module / list of modules run on a copy of the update.

    Example::

        tz.Modular(p, tz.m.Div(10.0), tz.m.LR(1e-2))  # == LR(1e-3)
    """

    schema = {"other": Setting(real(nonzero=True), "Dividing by 0 gives inf; use a nonzero number or a branch.")}

    def __init__(self, other: Any) -> None:
        super().__init__(other)

    def op(self, seg: Segment, other: Any) -> None:
        ops.div_(seg.update, other)


class Lerp(_Binary):
    r"""Interpolate towards a branch's result: :math:`u \leftarrow u + w\,(o - u)`.

    Args:
        end: a module or a list of modules, run on a copy of the update (e.g. ``tz.m.Grad()``).
        weight: :math:`w` (0 keeps the update, 1 replaces it by ``end``).

    Example::

        tz.Modular(p, tz.m.Adam(), tz.m.Lerp(tz.m.Grad(), 0.1), tz.m.LR(1e-3))  # 90% Adam, 10% gradient
    """

    schema = {"weight": Setting(real(), "0 keeps the update, 1 replaces it by end; e.g. 0.1.")}

    def __init__(self, end: Any, weight: float) -> None:
        if isinstance(end, Real):
            raise TypeError("Lerp's end must be a module or a list of modules; to scale by a number use tz.m.Mul")
        super().__init__(end, {"weight": weight})

    def op(self, seg: Segment, other: Any) -> None:
        ops.lerp_(seg.update, other, seg.settings["weight"])


class Neg(Transform):
    r"""Negate the update: :math:`u \leftarrow -u` (turns a descent direction into the ascent one).

    Example::

        tz.Modular(p, tz.m.Neg(), tz.m.LR(1e-2))  # gradient ascent
    """

    def __init__(self) -> None:
        super().__init__({})

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        ops.neg_(seg.update)
