"""``OptimizerMonitor``: log what the modules of every ``tz.Modular`` reported about the last step."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L

import torchzero as tz


def _modular(optimizer: Any) -> tz.Modular | None:
    """The ``tz.Modular`` inside a (possibly wrapped) optimizer, or None."""
    for _ in range(4):  # LightningOptimizer, Accelerate and similar wrappers keep it as `.optimizer`
        if isinstance(optimizer, tz.Modular):
            return optimizer
        optimizer = getattr(optimizer, "optimizer", None)
    return None


class OptimizerMonitor(L.Callback):
    """Log ``opt.metrics()`` of every ``tz.Modular`` optimizer of the trainer to the trainer's loggers.

    Like ``LearningRateMonitor``: with ``logging_interval="step"`` the metrics of each optimizer step are logged
    after the batch, every ``trainer.log_every_n_steps`` steps; with ``"epoch"`` those of the last step of each
    training epoch.  The names are ``"<prefix>/<group>/<module>/<name>"``, e.g.
    ``"tz/all/1.StrongWolfe/step_size"``; ``prefix`` is ``"tz"`` with one optimizer and ``"tz-<i>"`` (its index
    in ``trainer.optimizers``) with several.  The step logged is ``trainer.global_step``, the number of optimizer
    steps taken so far.  Reading the metrics syncs with the device once per logged value, so log less often
    (``log_every_n_steps``) where that matters.
    """

    def __init__(self, logging_interval: Literal["step", "epoch"] = "step", prefix: str = "tz") -> None:
        if logging_interval not in ("step", "epoch"):
            raise ValueError(f"logging_interval must be 'step' or 'epoch', got {logging_interval!r}")
        self.logging_interval = logging_interval
        self.prefix = prefix

    def collect(self, trainer: L.Trainer) -> dict[str, float]:
        """The metrics of every ``tz.Modular`` of ``trainer``, as they would be logged now."""
        found = [(i, m) for i, o in enumerate(trainer.optimizers) if (m := _modular(o)) is not None]
        out: dict[str, float] = {}
        for i, opt in found:
            prefix = self.prefix if len(trainer.optimizers) == 1 else f"{self.prefix}-{i}"
            out.update({f"{prefix}/{k}": v for k, v in opt.metrics().items()})
        return out

    def _log(self, trainer: L.Trainer) -> None:
        metrics = self.collect(trainer)
        if metrics:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        every = max(int(getattr(trainer, "log_every_n_steps", 1)), 1)  # set by Trainer.__init__, not typed
        if self.logging_interval == "step" and trainer.global_step % every == 0:
            self._log(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.logging_interval == "epoch":
            self._log(trainer)
