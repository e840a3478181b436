"""Plain chains (no closure modules) need no change: a ``tz.Modular`` returned from ``configure_optimizers``
trains exactly like a plain PyTorch loop with the same seed, in automatic optimization (gradient
accumulation, clipping, a step-interval OneCycleLR that cycles Adam's betas), in manual optimization, and
under every precision (``16-mixed`` through torch's GradScaler contract: unscale, skip on inf)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

import torchzero as tz

from ._common import Model, TzModel, assert_params_close, batches, fit, loss_fn, make_net, params

STEPS = 6


def _onecycle(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.OneCycleLR:
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=STEPS, cycle_momentum=True)


@pytest.mark.parametrize("cls", [Model, TzModel], ids=["no_mixin", "mixin"])
def test_adam_accumulation_clipping_onecycle(cls):
    """``accumulate_grad_batches=2``, ``gradient_clip_val``, and ``{"scheduler": OneCycleLR(opt), "interval": "step"}``
    on the Modular against torch.optim.Adam with the same scheduler in a plain loop."""

    def make_opt(p):
        opt = tz.Modular(p, tz.m.Adam(), tz.m.LR(1e-3))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": _onecycle(opt), "interval": "step"}}

    model = cls(make_opt)
    trainer = fit(model, STEPS, accumulate_grad_batches=2, gradient_clip_val=0.05)

    net = make_net()
    ref = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = _onecycle(ref)
    betas = []
    window = iter(batches(2 * STEPS))
    for _ in range(STEPS):
        for _ in range(2):
            (loss_fn(net, next(window)) / 2).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.05)
        betas.append(ref.param_groups[0]["betas"])
        ref.step()
        sched.step()
        ref.zero_grad()

    assert trainer.global_step == STEPS
    assert_params_close(params(model.net), net.parameters())
    opt = trainer.optimizers[0]
    assert opt.param_groups[0]["lr"] == pytest.approx(ref.param_groups[0]["lr"])
    assert opt.param_groups[0]["betas"] == pytest.approx(ref.param_groups[0]["betas"])
    assert len({b[0] for b in betas}) > 1, "OneCycleLR should have cycled beta1"


def _sgd_wd(p):
    opt = tz.Modular(p, tz.m.SGD(momentum=0.9), tz.m.LR(0.05), tz.m.WeightDecay(1e-2))
    # cycles SGD's momentum (the Modular exposes 'momentum' in its groups) as well as the lr
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=STEPS, base_momentum=0.8)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual"])
def test_sgd_momentum_weight_decay_with_scheduler(manual):
    """The same chain stepped by Lightning (automatic or manual optimization) and by a plain loop."""
    model = Model(_sgd_wd, manual=manual)
    trainer = fit(model, STEPS)

    net = make_net()
    cfg = _sgd_wd(net.parameters())
    ref, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    momenta = []
    for batch in batches(STEPS):
        ref.zero_grad()
        loss_fn(net, batch).backward()
        momenta.append(ref.param_groups[0]["momentum"])
        ref.step()
        sched.step()

    assert trainer.global_step == STEPS
    assert_params_close(params(model.net), net.parameters())
    group = trainer.optimizers[0].param_groups[0]
    assert (group["lr"], group["momentum"]) == pytest.approx(
        (ref.param_groups[0]["lr"], ref.param_groups[0]["momentum"])
    )
    assert len(set(momenta)) > 1, "OneCycleLR should have cycled the momentum"


def test_bf16_mixed():
    model = Model(lambda p: tz.Modular(p, tz.m.Adam(), tz.m.LR(1e-2)))
    fit(model, STEPS, precision="bf16-mixed")

    net = make_net()
    ref = torch.optim.Adam(net.parameters(), lr=1e-2)
    for batch in batches(STEPS):
        ref.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(net, batch)
        loss.backward()
        ref.step()
    assert_params_close(params(model.net), net.parameters())


def test_16_mixed_gradscaler_unscales_and_skips_nonfinite_steps():
    """Lightning's ``16-mixed`` (forced onto CPU with the plugin) against autocast + ``torch.amp.GradScaler``:
    the initial scale 65536 overflows fp16, so the first steps are skipped, then the scale settles and the
    unscaled gradient is used."""
    model = Model(lambda p: tz.Modular(p, tz.m.Adam(), tz.m.LR(1e-2)))
    trainer = fit(model, STEPS, plugins=[MixedPrecision("16-mixed", "cpu")])

    net = make_net()
    ref = tz.Modular(net.parameters(), tz.m.Adam(), tz.m.LR(1e-2))
    scaler = torch.amp.GradScaler("cpu")
    skipped = 0
    for batch in batches(STEPS):
        ref.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = loss_fn(net, batch)
        scaler.scale(loss).backward()
        scaler.unscale_(ref)
        scale = scaler.get_scale()
        scaler.step(ref)
        scaler.update()
        skipped += scaler.get_scale() < scale

    assert 0 < skipped < STEPS, "the reference should skip some steps and take others"
    assert trainer.precision_plugin.scaler.get_scale() == scaler.get_scale()
    for p, q in zip(params(model.net), net.parameters(), strict=True):
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p, q)

    # the optimizer state saw exactly the steps that were taken
    def adam_steps(opt):
        key = opt.modules[0].key
        return {s[key]["step"] for s in opt.state.values()}

    assert adam_steps(trainer.optimizers[0]) == adam_steps(ref) == {STEPS - skipped}


def test_training_step_returning_none_skips_the_step():
    """Lightning's convention: ``training_step`` returning None skips the step; a plain chain follows it."""

    class Skipping(Model):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return None if batch_idx == 1 else loss

    model = Skipping(lambda p: tz.Modular(p, tz.m.SGD(), tz.m.LR(0.1)))
    fit(model, 3)

    net = make_net()
    ref = torch.optim.SGD(net.parameters(), lr=0.1)
    for i, batch in enumerate(batches(3)):
        if i == 1:
            continue
        ref.zero_grad()
        loss_fn(net, batch).backward()
        ref.step()
    assert_params_close(params(model.net), net.parameters())
