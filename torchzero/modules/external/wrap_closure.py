"""Closure-based torch optimizers (``torch.optim.LBFGS``) as a module of the chain."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...core.module import Chain, Module
from ...foreach import ops
from ._handoff import restore_params, set_grads
from .wrap import Wrap

if TYPE_CHECKING:
    from ...core.context import StepContext

Stage = tuple[Module, "Module | None"]


def _stages_before(chain: Chain, target: Module) -> list[Stage] | None:
    """The stages that run before ``target`` (outer chains first), or None if it is not in ``chain``."""
    stages = chain.stages()
    for i, (module, _) in enumerate(stages):
        if module is target:
            return stages[:i]
        if isinstance(module, Chain):
            inner = _stages_before(module, target)
            if inner is not None:
                return stages[:i] + inner
        elif any(m is target for m in module.walk()):
            raise ValueError(
                f"WrapClosure is inside {type(module).__name__}, whose branch cannot be re-run on its own. "
                "Put WrapClosure directly in the chain (or in a nested list)."
            )
    return None


class WrapClosure(Wrap):
    r"""Run a closure-based optimizer such as ``torch.optim.LBFGS`` as a module.

    The wrapped optimizer gets a closure that, at every evaluation, puts *the chain's update up to this
    module* into ``.grad``: at the first evaluation the update already computed for this step, at later
    ones (new trial points) the gradient at the new point passed again through the modules before
    ``WrapClosure``.  So ``tz.Modular(p, tz.m.ClipNorm(1), tz.m.WrapClosure(torch.optim.LBFGS))`` is
    LBFGS on clipped gradients, and with a gradient-approximation module first it is LBFGS on
    approximate gradients.

    The modules before ``WrapClosure`` run once per closure evaluation, so stateful ones (momentum,
    Adam) advance on every evaluation; stateless ones (clipping, normalization, gradient
    approximations) are what this is meant for.  When a module before it builds the update from
    scratch, each later evaluation also costs one loss-only closure call for the returned loss.

    Everything else (settings pass-through, state, measuring and undoing the step when it is not the
    last module, fusing a following ``LR``; off by default because LBFGS's step is not proportional to
    its lr) is as for :class:`Wrap`.  ``step()`` needs a closure.

    Args:
        opt_cls: a closure-based optimizer class (or factory).
        fuse: fuse a following ``LR`` into the wrapped ``lr``.
        **kwargs: passed to ``opt_cls``.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.WrapClosure(torch.optim.LBFGS, history_size=10))
        opt.step(closure)  # == torch.optim.LBFGS(model.parameters(), history_size=10).step(closure)
    """

    needs_closure = True
    supports_sharding = False
    sharding_note = (
        "the wrapped optimizer reduces over the parameters itself, without the mesh (torch.optim.LBFGS flattens "
        "them, and a dot product of shards read with .item() is this rank's part only)"
    )

    def __init__(self, opt_cls: Any, fuse: bool | None = None, **kwargs: Any) -> None:
        super().__init__(opt_cls, fuse=False if fuse is None else fuse, **kwargs)
        self._before: list[Stage] | None = None

    def _preceding(self) -> list[Stage]:
        if self._before is None:
            assert self._opt is not None
            root = self._opt.root  # the chain the Modular runs
            before = _stages_before(root, self)
            assert before is not None, "WrapClosure is not in its optimizer's chain"
            self._before = before
        return self._before

    def step(self, ctx: StepContext) -> None:
        assert self.optimizer is not None and ctx.closure is not None
        self.sync_settings(ctx)
        before_stages = self._preceding()
        creates = bool(before_stages) and self._opt is not None and self._opt.modules[0].creates_update
        originals = ctx.layout.originals
        raw_grads: list[Any] = [p.grad for p in originals]
        start_grad = ctx.grad_or_none()  # the gradient at the start point, for modules after this one
        start_loss = ctx.loss
        before = ops.clone(ctx.params)  # the start point: the new update is measured from it, or it is restored
        closure = ctx.closure
        calls = 0

        def wrapped_closure() -> Tensor:
            nonlocal raw_grads, calls
            calls += 1
            if calls == 1:
                loss = ctx.loss if ctx.loss is not None else closure(False)
            else:
                if creates:
                    ctx.update = []
                    loss = closure(False)
                else:
                    loss = closure(True)
                    raw_grads = [p.grad for p in originals]
                    grad = ctx.collect_grad()
                    ctx.update = ops.clone(grad) if before_stages else list(grad)
                with torch.no_grad():  # the wrapped optimizer calls us under enable_grad
                    for module, fused_lr in before_stages:
                        ctx.run_stage(module, fused_lr)
            set_grads(ctx, ctx.update)
            return loss

        optimizer = self.optimizer

        def wrapped_step() -> None:
            try:
                optimizer.step(wrapped_closure)  # type: ignore[arg-type]  # returns a tensor, as torch's closures do
            except BaseException:
                # the wrapped optimizer moves the parameters before each evaluation: an error from the closure (or
                # from a stage run inside it) must not leave them at a trial point
                restore_params(ctx, before)
                raise
            finally:
                for p, g in zip(originals, raw_grads, strict=True):
                    p.grad = g
                ctx.loss = start_loss

        ctx.external_step(wrapped_step, before)  # the wrapped optimizer moves the parameters; the sink decides
        if start_grad is not None:
            ctx.set_grad(start_grad)
