"""PyTorch Lightning integration for torchzero (Lightning 2.6).

**Plain chains need nothing.**  Return a ``tz.Modular`` from ``configure_optimizers`` as you would any
torch optimizer; a scheduler (``{"scheduler": ..., "interval": "step"}``) is built on the Modular
itself, which keeps ``lr`` and ``betas``/``momentum`` in its ``param_groups``, so momentum cycling works::

    def configure_optimizers(self):
        opt = tz.Modular(self.parameters(), tz.m.Adam(), tz.m.LR(1e-3))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=1000)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

Lightning always steps with a closure, so ``opt.step`` checks that the loss it returns is finite (one
host sync per step) and raises ``tz.NonFiniteLossError`` before changing anything, where ``torch.optim``
would write NaN into the weights; skip such batches in ``training_step`` (return ``None``) if you expect
them.

This covers ``accumulate_grad_batches``, ``gradient_clip_val``, manual optimization, checkpoints
(``weights_only=True`` loading) and every precision, ``16-mixed`` included (Lightning calls the closure,
unscales, and ``GradScaler.step`` skips the step when a gradient is not finite).

**Closure chains need one line**, the mixin as the first base class::

    class Model(tzl.TorchzeroMixin, L.LightningModule):
        ...
        def configure_optimizers(self):
            return tz.Modular(self.parameters(), tz.m.LBFGS(), tz.m.StrongWolfe())

Why a closure chain cannot run unchanged: the closure Lightning hands to ``optimizer.step`` takes no
arguments and each call runs ``training_step``, backward (with its hooks), ``on_before_optimizer_step`` and
gradient clipping.  A line search asking for the loss alone would pay a backward pass and run those hooks at
every trial point; under ``16-mixed`` the GradScaler calls the closure once and steps without it; and under
DDP each process would judge trial points by its own loss and take its own branch, deadlocking at the next
all-reduce.  ``TorchzeroMixin`` gives the chain a real ``closure(backward)`` instead: loss-only evaluations
run ``training_step`` under ``no_grad`` and nothing else, and every loss is averaged over processes.

Why a mixin and not the alternatives:

* a **callback** cannot change how ``optimizer.step`` is called (that is the LightningModule's
  ``optimizer_step`` hook), nor mute ``self.log`` during re-evaluations, nor change what
  ``self.optimizers()`` returns in manual optimization;
* a **precision or strategy plugin** would replace the plugin the user chose with ``precision=`` /
  ``strategy=`` (one subclass per combination), and the loop would still give it a no-argument closure;
* a **wrapper** around the optimizer breaks schedulers built on the Modular (Lightning rejects a scheduler
  whose optimizer is not the one returned), ``isinstance`` checks and checkpoints;
* the mixin overrides public hooks made for this (``optimizer_step``, ``optimizers``, ``log``,
  ``on_train_batch_start``) and works with whatever precision and strategy the Trainer was given.
"""

from .config import ChainOptimizer
from .mixin import TorchzeroMixin, check_optimizer_config
from .monitor import OptimizerMonitor
from .schedule_free import TrainEvalSwap

__all__ = ["ChainOptimizer", "OptimizerMonitor", "TorchzeroMixin", "TrainEvalSwap", "check_optimizer_config"]
