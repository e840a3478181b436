"""Wrong use gets an error that names the fix, raised before any parameter or optimizer state changes."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

import torchzero as tz

from ._common import TzModel, assert_params_close, fit, make_net, params


def lbfgs(p):
    return tz.Modular(p, tz.m.LBFGS(), tz.m.StrongWolfe())


def _assert_untouched(model):
    assert_params_close(params(model.net), make_net().parameters(), rtol=0, atol=0)
    opt = model.trainer.optimizers[0]
    assert not opt.state, "the optimizer state should still be empty"


def test_closure_chain_under_16_mixed():
    model = TzModel(lbfgs)
    with pytest.raises(RuntimeError, match=r"StrongWolfe.*16-mixed.*GradScaler.*bf16-mixed"):
        fit(model, 2, plugins=[MixedPrecision("16-mixed", "cpu")])
    _assert_untouched(model)
    assert model.counts["training_step_grad"] == 0


class _NoSuperBeforeBackward(TzModel):
    def on_before_backward(self, loss):  # hides the mixin's hook: the earlier micro-batches' losses go unseen
        self.counts["on_before_backward"] += 1


def test_closure_chain_with_gradient_accumulation_needs_the_micro_batch_losses():
    """accumulate_grad_batches works (test_closure_chains.py); a hook that hides the losses is a clear error."""
    model = _NoSuperBeforeBackward(lbfgs)
    with pytest.raises(RuntimeError, match=r"accumulate_grad_batches=2.*super\(\).on_before_backward\(loss\)"):
        fit(model, 2, accumulate_grad_batches=2)
    _assert_untouched(model)


def test_scheduler_on_lr_module():
    def make_opt(p):
        opt = tz.Modular(p, tz.m.Adam(), tz.m.LR(1e-3))
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt.get_lr_module(), 1)}

    model = TzModel(make_opt)
    with pytest.raises(ValueError, match=r"StepLR built on opt.get_lr_module\(\).*StepLR\(opt, \.\.\.\)"):
        fit(model, 2)
    assert_params_close(params(model.net), make_net().parameters(), rtol=0, atol=0)


def test_scheduler_on_lr_module_in_a_list_and_the_right_way_passes():
    from torchzero_lightning import check_optimizer_config

    opt = tz.Modular(make_net().parameters(), tz.m.Adam(), tz.m.LR(1e-3))
    with pytest.raises(ValueError, match="get_lr_module"):
        check_optimizer_config(([opt], [torch.optim.lr_scheduler.StepLR(opt.get_lr_module(), 1)]))
    check_optimizer_config(([opt], [{"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1), "interval": "step"}]))


class ManualNoClosure(TzModel):
    def manual_step(self, batch, loss):
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()


def test_manual_optimization_without_closure():
    model = ManualNoClosure(lbfgs, manual=True)
    with pytest.raises(RuntimeError, match=r"(?s)StrongWolfe must re-evaluate the loss.*opt.step\(closure\)"):
        fit(model, 2)
    _assert_untouched(model)


class ForgetsSuper(TzModel):
    def on_train_batch_start(self, batch, batch_idx):
        pass


def test_on_train_batch_start_override_without_super():
    model = ForgetsSuper(lbfgs)
    with pytest.raises(RuntimeError, match=r"super\(\).on_train_batch_start\(batch, batch_idx\)"):
        fit(model, 2)
    _assert_untouched(model)


class ReturnsNone(TzModel):
    def training_step(self, batch, batch_idx):
        super().training_step(batch, batch_idx)
        return None


def test_closure_chain_needs_a_loss():
    model = ReturnsNone(lambda p: tz.Modular(p, tz.m.RandomizedFDM(), tz.m.LR(0.1)))
    with pytest.raises(RuntimeError, match=r"training_step returned NoneType.*return the loss"):
        fit(model, 2)
    _assert_untouched(model)


def test_mixin_must_come_first():
    import lightning as L

    import torchzero_lightning as tzl

    with pytest.raises(TypeError, match=r"class Wrong\(tzl.TorchzeroMixin, L.LightningModule\)"):

        class Wrong(L.LightningModule, tzl.TorchzeroMixin):
            pass


def test_closure_chain_under_fsdp1_strategy_is_refused():
    """FSDPStrategy (FSDP1) gives the optimizer flat per-rank shards: a closure chain cannot run exactly there."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import Precision
    from lightning.pytorch.strategies import FSDPStrategy

    from torchzero_lightning._closure import check_supported

    fake = SimpleNamespace(precision_plugin=Precision(), strategy=FSDPStrategy(), accumulate_grad_batches=1)
    opt = lbfgs([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(RuntimeError, match=r"FSDPStrategy \(FSDP1\).*ModelParallelStrategy"):
        check_supported(fake, opt, manual=False)
