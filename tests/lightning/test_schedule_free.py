"""``tzl.TrainEvalSwap`` with a schedule-free chain: validation sees x, training steps at y, and the run equals
``schedulefree.AdamWScheduleFree`` driven by hand with ``train()`` / ``eval()`` around the same validations.

Tolerance: float64 parameters; the chain matches the reference to a few ulps per step (see
tests/modules/optimizers/test_schedule_free.py), so 1e-12 relative over 6 steps.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch

import torchzero as tz
import torchzero_lightning as tzl

from ._common import batches, loader, loss_fn, make_net, params, trainer

schedulefree = pytest.importorskip("schedulefree")

TOL = {"rtol": 1e-12, "atol": 1e-14}


class SFModel(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_net(torch.float64)
        self.seen: list[list[torch.Tensor]] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return loss_fn(self.net, batch)

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        self.seen.append(params(self.net))
        return loss_fn(self.net, batch)

    def configure_optimizers(self) -> Any:
        return tz.Modular(self.parameters(), tz.m.ScheduleFreeAdamW(warmup_steps=2), tz.m.LR(0.01))


def _data() -> Any:
    from ._common import data

    return loader(data(dtype=torch.float64))


def test_validation_sees_x_and_training_continues_from_y():
    model = SFModel()
    t = trainer(6, val_check_interval=2, limit_val_batches=1, callbacks=[tzl.TrainEvalSwap()])
    t.fit(model, _data(), _data())

    net = make_net(torch.float64)
    ref = schedulefree.AdamWScheduleFree(net.parameters(), lr=0.01, warmup_steps=2)
    ref.train()
    seen = []
    for i, batch in enumerate(batches(6, _data())):
        ref.zero_grad()
        loss_fn(net, batch).backward()
        ref.step()
        if (i + 1) % 2 == 0:
            ref.eval()
            seen.append(params(net))
            ref.train()
    assert len(model.seen) == len(seen) == 3
    for got, want in zip(model.seen, seen, strict=True):
        for p, q in zip(got, want, strict=True):
            torch.testing.assert_close(p, q, **TOL)
    for p, q in zip(params(model.net), params(net), strict=True):
        torch.testing.assert_close(p, q, **TOL)  # after fit: back at y
    opt = t.optimizers[0]
    assert opt.modules[0].global_state["train_mode"] is True


def test_checkpoint_resume_continues_exactly(tmp_path):
    """A checkpoint saved after validation holds y and z (train mode): resuming equals the uninterrupted run."""
    full = SFModel()
    trainer(6, val_check_interval=2, limit_val_batches=1, callbacks=[tzl.TrainEvalSwap()]).fit(full, _data(), _data())

    first = SFModel()
    t = trainer(4, val_check_interval=2, limit_val_batches=1, callbacks=[tzl.TrainEvalSwap()])
    t.fit(first, _data(), _data())
    path = str(tmp_path / "sf.ckpt")
    t.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    modules = ckpt["optimizer_states"][0]["torchzero"]["modules"]
    assert modules["0"]["train_mode"] is True  # saved after validation, back in train mode

    resumed = SFModel()
    trainer(6, val_check_interval=2, limit_val_batches=1, callbacks=[tzl.TrainEvalSwap()]).fit(
        resumed, _data(), _data(), ckpt_path=path, weights_only=True
    )
    for p, q in zip(params(resumed.net), params(full.net), strict=True):
        assert torch.equal(p, q)
