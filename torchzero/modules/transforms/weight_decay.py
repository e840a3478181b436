"""Weight decay: coupled (L2) or decoupled, depending on where it sits in the chain."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.lr import LR
from ...core.module import Module, Transform
from ...core.schema import FLAG, Setting, at_least

if TYPE_CHECKING:
    from ...core.context import StepContext
    from ...core.modular import Modular


class WeightDecay(Transform):
    r"""Add :math:`\lambda\,\theta` to the update (or :math:`\eta\lambda\,\theta` with ``scale_by_lr``).

    .. math::  u \leftarrow u + \lambda\,\theta \qquad\text{or}\qquad u \leftarrow u + \eta\,\lambda\,\theta

    where :math:`\eta` is the learning rate of the chain's :class:`~torchzero.m.LR` for that parameter
    (its current value, so schedulers reach it).  What it means depends on its place in the chain:

    * before the update rule, it is an L2 penalty on the gradient (**coupled**):
      ``WeightDecay(wd), Adam(), LR(lr)`` is ``torch.optim.Adam(lr=lr, weight_decay=wd)`` and
      ``WeightDecay(wd), SGD(...), LR(lr)`` is ``torch.optim.SGD(..., weight_decay=wd)``;
    * after ``LR``, it decays the weights directly (**decoupled**).  ``torch.optim.AdamW`` computes
      :math:`\theta \leftarrow \theta (1 - \eta\lambda) - \eta\,\mathrm{adam}`, so its decay is scaled
      by the learning rate: ``Adam(), LR(lr), WeightDecay(wd, scale_by_lr=True)`` is
      ``torch.optim.AdamW(lr=lr, weight_decay=wd)``, and stays so under any lr scheduler.  Without
      ``scale_by_lr`` the decay is independent of the learning rate
      (:math:`\theta \leftarrow \theta(1-\lambda) - \eta\,\mathrm{adam}`, "fully decoupled"; use a
      correspondingly small ``weight_decay``);
    * between the rule and ``LR`` (``Adam(), WeightDecay(wd), LR(lr)``) it is also AdamW: the decay
      skips Adam's normalization and is multiplied by the lr with the rest of the update.

    As the last stage (or fused with the ``LR`` that follows it) it writes the parameters in one pass,
    :math:`\theta \leftarrow \theta(1 - d) - s\,u`, the same arithmetic as torch's AdamW.

    Args:
        weight_decay: :math:`\lambda` (per param group, e.g. ``{"params": biases, "weight_decay": 0}``).
        scale_by_lr: multiply by the learning rate of the chain's ``LR`` module; only for a
            ``WeightDecay`` placed after that ``LR`` (before it, ``LR`` already scales the decay).

    Example::

        # AdamW
        opt = tz.Modular(model.parameters(), tz.m.Adam(), tz.m.LR(1e-3), tz.m.WeightDecay(1e-2, scale_by_lr=True))

    Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """

    fuses_lr = True
    schema = {
        "weight_decay": Setting(at_least(0), "Use 0 for no decay, or a value such as 1e-2."),
        "scale_by_lr": FLAG,
    }

    def __init__(self, weight_decay: float = 1e-4, scale_by_lr: bool = False) -> None:
        super().__init__({"weight_decay": weight_decay}, options={"scale_by_lr": scale_by_lr})
        self.scale_by_lr = scale_by_lr
        if scale_by_lr:
            self.fuses_lr = False  # type: ignore[misc]  # the lr it reads belongs to an LR before it
        self._lr: Module | None = None

    def bind(self, opt: Modular) -> None:
        if not self.scale_by_lr:
            return

        lrs = [m for m in opt.modules if isinstance(m, LR)]
        if not lrs:
            raise ValueError(
                "WeightDecay(scale_by_lr=True) multiplies the decay by the learning rate of the chain's tz.m.LR "
                "module, but this chain has none. Add tz.m.LR(lr) before the WeightDecay, or drop scale_by_lr."
            )
        modules = opt.modules
        if modules.index(lrs[0]) > modules.index(self):
            raise ValueError(
                "WeightDecay(scale_by_lr=True) comes before the chain's tz.m.LR, which multiplies the update by "
                "the learning rate again (the decay would be scaled by lr twice). Move the WeightDecay after LR, "
                "or drop scale_by_lr (WeightDecay before LR is already scaled by it)."
            )
        self._lr = lrs[0]

    def step(self, ctx: StepContext) -> None:
        for seg in ctx.segments(self, self._lr if self.scale_by_lr else None):
            wd, lr = seg.settings["weight_decay"], seg.scale
            # the update becomes s * u + d * theta (theta <- theta (1 - d) - s u when the sink writes the params)
            seg.emit(seg.update, 1.0 if self.scale_by_lr else lr, decay=wd * lr)
