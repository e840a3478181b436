"""Presets: named chains of modules from several families (a floor above the families).

A preset is just a chain, with no code path of its own (as optax's ``adamw`` is ``chain(scale_by_adam,
add_decayed_weights, scale_by_learning_rate)``).
"""

from __future__ import annotations

from ..core.lr import LR
from ..core.module import Chain
from .optimizers.adam import Adam
from .transforms.weight_decay import WeightDecay

__all__ = ["AdamW"]


class AdamW(Chain):
    r"""``torch.optim.AdamW`` as a chain: ``Adam(betas, eps, amsgrad)``, ``WeightDecay(weight_decay)``, ``LR(lr)``.

    .. math::
        \theta \leftarrow \theta - \eta\,\big(\mathrm{Adam}(g) + \lambda\, \theta\big)

    ``WeightDecay`` comes after ``Adam`` (so the decay is decoupled from the adaptive scaling) and before
    ``LR`` (so, as in torch and in Loshchilov & Hutter, the decay is scaled by the learning rate and follows
    its schedule).  Putting ``WeightDecay`` after ``LR`` instead gives a decay independent of the learning
    rate, :math:`\theta \leftarrow \theta - \eta\,\mathrm{Adam}(g) - \lambda\theta`, which is not AdamW.

    A preset is just a chain: ``opt.modules`` lists its three modules, per-group ``lr``,
    ``weight_decay``, ``betas`` and ``eps`` work as for any chain, and schedulers reach its ``LR``.

    Args:
        lr: learning rate :math:`\eta`.
        betas: Adam's :math:`(\beta_1, \beta_2)`.
        eps: Adam's epsilon.
        weight_decay: :math:`\lambda`.
        amsgrad: use AMSGrad.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.AdamW(lr=1e-3, weight_decay=1e-2))  # == torch.optim.AdamW

    Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(Adam(betas=betas, eps=eps, amsgrad=amsgrad), WeightDecay(weight_decay), LR(lr))
