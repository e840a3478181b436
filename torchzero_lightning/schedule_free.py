"""A callback that moves schedule-free chains to their evaluation point around validation, test and predict."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

import torchzero as tz


def _modulars(trainer: Trainer) -> list[tz.Modular]:
    out = []
    for opt in trainer.optimizers:
        opt = getattr(opt, "optimizer", opt)  # a LightningOptimizer wraps the real one
        if isinstance(opt, tz.Modular):
            out.append(opt)
    return out


class TrainEvalSwap(Callback):
    """Call ``opt.eval()`` on every ``tz.Modular`` before validation, test and predict, and ``opt.train()`` after.

    Schedule-free chains (``tz.m.ScheduleFreeSGD``, ``tz.m.ScheduleFreeAdamW``) take gradients at ``y`` but are
    meant to be evaluated at ``x``; for other chains both calls do nothing.  ``on_train_start`` calls
    ``opt.train()`` too, so a run resumed from a checkpoint saved in eval mode trains from ``y`` again.

    Checkpoints: Lightning runs its ``ModelCheckpoint`` callbacks after the others, so a checkpoint saved at the
    end of validation holds the training point ``y`` in the model weights and ``z`` (and the mode, ``train``)
    in the optimizer state; resuming continues exactly.  For the weights to deploy (``x``), load the checkpoint
    with its optimizer and call ``opt.eval()``, or save ``model.state_dict()`` yourself between ``opt.eval()``
    and ``opt.train()``.

    Example::

        trainer = L.Trainer(callbacks=[tzl.TrainEvalSwap()])
    """

    def _eval(self, trainer: Trainer) -> None:
        for opt in _modulars(trainer):
            opt.eval()

    def _train(self, trainer: Trainer) -> None:
        for opt in _modulars(trainer):
            opt.train()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._train(trainer)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._train(trainer)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval(trainer)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._train(trainer)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval(trainer)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._train(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {}
