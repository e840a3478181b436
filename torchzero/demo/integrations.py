"""Run a demo chain through the Lightning and Accelerate adapters.

Both use the adapters' public API only:

* Lightning: a ``LightningModule`` with :class:`torchzero_lightning.TorchzeroMixin` as its first base
  returns the chain from ``configure_optimizers``; Lightning's own loop steps it.
* Accelerate: ``accelerator.prepare(model, opt)``, then ``opt.step(closure)`` with
  :class:`torchzero_accelerate.AcceleratedClosure`.

Lightning and Accelerate are imported when a trainer runs, not with this module; the runner
(:mod:`.runner`) imports this module, which needs only :mod:`.results` (never the runner).
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .chains import ChainSpec, build_chain
from .models import make_model
from .results import OnStep, RunResult, Trained

if TYPE_CHECKING:
    from .data import Task


def _need(package: str, extra: str) -> None:
    try:
        __import__(package)
    except ImportError as e:
        raise RuntimeError(f"--trainer needs {package!r}: pip install 'torchzero[{extra}]' ({e})") from None


# ---------------------------------------------------------------------------------------------- Lightning
def train_with_lightning(
    spec: ChainSpec, task: Task, steps: int, seed: int, on_step: OnStep, result: RunResult
) -> Trained:
    _need("lightning", "lightning")
    import lightning as L

    from torchzero_lightning import TorchzeroMixin

    class DemoModule(TorchzeroMixin, L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = make_model(task.n_features, task.n_classes, seed=seed)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.model(x), y)

        def configure_optimizers(self) -> Any:
            return build_chain(spec, self.model, steps)

    class Report(L.Callback):
        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            opt = trainer.optimizers[0]
            result.closure_calls += opt.last_info["closure_calls"]
            result.steps = trainer.global_step
            result.losses.append(float(outputs["loss"]))
            on_step(result.steps, result.losses[-1])

    module = DemoModule()
    # the full training set as one batch, so every chain sees the same loss on every call
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(task.x_train, task.y_train), batch_size=len(task.x_train)
    )
    with _quiet():
        trainer = L.Trainer(
            accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Report()],
        )  # fmt: skip
        trainer.fit(module, train_dataloaders=data)
    return module.model, trainer.optimizers[0]


# ---------------------------------------------------------------------------------------------- Accelerate
def train_with_accelerate(
    spec: ChainSpec, task: Task, steps: int, seed: int, on_step: OnStep, result: RunResult
) -> Trained:
    _need("accelerate", "accelerate")
    from accelerate import Accelerator

    import torchzero_accelerate as tza

    accelerator = Accelerator(cpu=True)
    model = make_model(task.n_features, task.n_classes, seed=seed)
    opt = build_chain(spec, model, steps)
    model, opt = accelerator.prepare(model, opt)
    x, y = task.x_train, task.y_train
    for i in range(steps):
        closure = tza.AcceleratedClosure(accelerator, opt, lambda: F.cross_entropy(model(x), y))
        opt.step(closure)  # AcceleratedOptimizer.step returns None; the closure keeps the loss
        result.closure_calls += closure.calls
        result.steps = i + 1
        assert closure.loss is not None
        result.losses.append(float(closure.loss))
        on_step(i + 1, result.losses[-1])
    return accelerator.unwrap_model(model), opt


class _quiet:
    """Silence Lightning's info logs and advice warnings (worker counts, ...) inside the block."""

    NAMES = ("lightning", "lightning.pytorch", "lightning.fabric")

    def __init__(self) -> None:
        names = [n for base in self.NAMES for n in (base, f"{base}.utilities.rank_zero")]
        self.loggers = [logging.getLogger(name) for name in names]
        self.levels: list[int] = []
        self.warnings = warnings.catch_warnings()

    def __enter__(self) -> None:
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.WARNING)
        self.warnings.__enter__()
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*number of training batches.*")
        warnings.filterwarnings("ignore", message=".*is deprecated.*", module="lightning.*")

    def __exit__(self, *exc: Any) -> None:
        self.warnings.__exit__(*exc)
        for lg, level in zip(self.loggers, self.levels, strict=True):
            lg.setLevel(level)
