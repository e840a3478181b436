"""Hugging Face Accelerate integration for torchzero.

``tz.Modular`` is a ``torch.optim.Optimizer``, so ``accelerator.prepare`` takes it like any optimizer::

    model, opt, dl, sched = accelerator.prepare(model, tz.Modular(model.parameters(), tz.m.Adam(), tz.m.LR(1e-3)), dl, sched)

Chains without a closure train exactly as with torch optimizers (``accelerator.backward(loss)``,
``opt.step()``, ``opt.zero_grad()``), with gradient accumulation and fp16/bf16 mixed precision.

Chains that need a closure (line searches, L-BFGS, SAM, gradient approximation) step with
:class:`AcceleratedClosure` (or the :func:`step` shorthand).  It backpropagates through
``accelerator.backward``, evaluates loss-only calls under ``torch.no_grad()``, and returns the loss
averaged over processes, so that every process makes the same decisions and the parameters stay
identical everywhere.  With gradient accumulation, :func:`step` keeps the micro-batches of the optimizer
step (pass each as the arguments of the loss function) and the closure re-evaluates all of them.

``RandomizedFDM`` draws its directions from its own seeded generator, so every process draws the same
ones.  Seed every process the same for everything else (``accelerate.utils.set_seed(seed)``).

On a machine without a GPU, pass ``Accelerator(cpu=True)`` under ``torchrun``: without it Accelerate
1.15 runs every process as its own single-process job (no gloo group, nothing averaged).  fp16 on CPU
is plain fp32 in Accelerate 1.15 (no autocast, no GradScaler).  At the end of a ``torchrun`` script, free
the prepared model before ``accelerator.end_training()`` (the examples show how; the distributed-training
guide says why: otherwise the exit can deadlock).
"""

from .closure import AcceleratedClosure, check_closure_support, step
from .metrics import log_metrics, unwrap

__all__ = ["AcceleratedClosure", "check_closure_support", "log_metrics", "step", "unwrap"]
