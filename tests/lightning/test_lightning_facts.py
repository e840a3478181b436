"""The Lightning 2.6 behaviour ``torchzero_lightning`` is designed around, pinned with a plain torch optimizer
(so a Lightning upgrade that changes it fails here, with a clear name, before it breaks the adapter)."""

from __future__ import annotations

import inspect

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loops.optimization.automatic import ClosureResult
from lightning.pytorch.loops.optimization.closure import AbstractClosure
from lightning.pytorch.plugins.precision import MixedPrecision

import torchzero as tz

from ._common import Model, fit


class RecordingSGD(torch.optim.SGD):
    """Calls the closure twice and records how it was called."""

    def __init__(self, params, model):
        super().__init__(params, lr=0.01)
        self.model = model
        self.seen = []

    def step(self, closure=None):
        self.seen.append(closure)
        if closure is None:
            return super().step()
        with pytest.raises(TypeError):
            closure(False)
        before = dict(self.model.counts)
        closure()
        closure()
        self.model.calls_per_closure = {k: v - before.get(k, 0) for k, v in self.model.counts.items()}
        return super().step()


def _recording_model():
    model = Model(lambda p: None)
    model.make_opt = lambda p: RecordingSGD(p, model)
    return model


def test_closure_takes_no_argument_and_runs_everything_each_call():
    model = _recording_model()
    trainer = fit(model, 1, gradient_clip_val=1.0)
    (closure,) = trainer.optimizers[0].seen
    assert not inspect.signature(closure).parameters
    # each call: training_step, backward with its hooks, on_before_optimizer_step, clipping
    assert model.calls_per_closure == {
        "training_step_grad": 2,
        "on_before_backward": 2,
        "on_after_backward": 2,
        "on_before_optimizer_step": 2,
        "clip": 2,
    }


def test_16_mixed_calls_the_closure_itself_then_steps_without_it():
    model = Model(lambda p: None)
    model.make_opt = lambda p: RecordingSGD(p, model)
    trainer = fit(model, 6, plugins=[MixedPrecision("16-mixed", "cpu")])
    seen = trainer.optimizers[0].seen  # steps with an inf/NaN gradient are skipped (fp16 overflows at first)
    assert seen and all(closure is None for closure in seen)
    assert model.counts["training_step_grad"] == 6


def test_lightning_optimizer_keeps_attribute_writes():
    opt = tz.Modular([torch.nn.Parameter(torch.zeros(2))], tz.m.Adam(), tz.m.LR(0.1))
    wrapper = LightningOptimizer(opt)
    wrapper.custom = 1
    assert not hasattr(opt, "custom")
    assert isinstance(wrapper, tz.Modular) and wrapper.optimizer is opt


def test_scheduler_on_an_inner_object_is_rejected_by_lightning():
    def make_opt(p):
        opt = tz.Modular(p, tz.m.Adam(), tz.m.LR(1e-3))
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt.get_lr_module(), 1)}

    with pytest.raises(MisconfigurationException, match="wasn't returned from `configure_optimizers`"):
        fit(Model(make_opt), 1)


def test_internals_the_adapter_uses():
    assert hasattr(ClosureResult, "from_training_step_output")
    assert "_result" in vars(type("C", (AbstractClosure,), {"closure": lambda self: None})())
    assert hasattr(LightningOptimizer(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1)), "_on_before_step")
