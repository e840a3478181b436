"""Hugging Face Accelerate integration for torchzero.

``tz.Modular`` is a ``torch.optim.Optimizer``, so ``accelerator.prepare`` takes it like any optimizer::

    model, opt, dl, sched = accelerator.prepare(model, tz.Modular(model.parameters(), tz.m.Adam(), tz.m.LR(1e-3)), dl, sched)

Chains without a closure train exactly as with torch optimizers (``accelerator.backward(loss)``,
``opt.step()``, ``opt.zero_grad()``), with gradient accumulation and fp16/bf16 mixed precision.

Chains that need a closure (line searches, L-BFGS, SAM, gradient approximation) step with
:class:`AcceleratedClosure` (or the :func:`step` shorthand).  It backpropagates through
``accelerator.backward``, evaluates loss-only calls under ``torch.no_grad()``, and returns the loss
averaged over processes, so that every process makes the same decisions and the parameters stay
identical everywhere.

Random modules (``RandomizedFDM``, ...) draw from torch's random generator: seed every process the same
(``accelerate.utils.set_seed(seed)``, the default ``device_specific=False``) so that they draw the same
directions.
"""

from .closure import AcceleratedClosure, check_closure_support, step

__all__ = ["AcceleratedClosure", "check_closure_support", "step"]
