"""The learning rate a rule's output will be multiplied by, for rules whose math needs the lr itself.

ASGD's step-size schedule, Adafactor's relative step and Lamb's decoupled decay depend on the learning rate
non-linearly, so these rules read the lr of the ``LR`` that comes after them (``ctx.segments(self,
scale_from=...)`` resolves it per param group) and hand on an lr-free update that this ``LR`` then scales.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.module import Chain

if TYPE_CHECKING:
    from ...core.context import StepContext
    from ...core.module import Module


def following_lr(ctx: StepContext, module: Module) -> Module | None:
    """The first ``LR`` after ``module`` in the chain that runs it (then in the chains around it), or None.

    Inside a ``Split`` branch the search stays in that branch and continues after the ``Split``; it never looks
    into the other branch or before the module.
    """
    return _search(ctx.opt.root, module)[1]


def _search(node: Module, target: Module) -> tuple[bool, Module | None]:
    """``(found, lr)``: whether ``target`` is under ``node``, and the first ``LR`` after it there."""
    if node is target:
        return True, None
    children = node.children()
    for i, child in enumerate(children):
        found, lr = _search(child, target)
        if not found:
            continue
        if lr is None and isinstance(node, Chain):  # sequential: the modules after the child come next
            lr = next((m for c in children[i + 1 :] for m in _sequential(c) if m.fusable_scale), None)
        return True, lr
    return False, None


def _sequential(node: Module) -> list[Module]:
    """The modules of ``node`` that every parameter goes through (not the branches of a ``Split``)."""
    if isinstance(node, Chain):
        return [m for c in node.children() for m in _sequential(c)]
    return [node] if not node.children() else []
