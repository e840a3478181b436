"""Stop at step k with ``ModelCheckpoint``, resume with ``ckpt_path`` (Lightning loads it with
``weights_only=True``): after step 2k the parameters, the optimizer state and the scheduler equal an
uninterrupted run."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import torchzero as tz

from ._common import Model, TzModel, assert_params_close, data, fit, loader, params

K = 4


def _onecycle(p):
    opt = tz.Modular(p, tz.m.Adam(), tz.m.LR(1e-3))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=2 * K)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _fdm_cosine(p):
    opt = tz.Modular(p, tz.m.RandomizedFDM(n_samples=2, seed=5), tz.m.Adam(), tz.m.LR(0.05))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2 * K)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


CASES = {
    "adam_onecycle": (Model, _onecycle),
    "lbfgs_strongwolfe": (TzModel, lambda p: tz.Modular(p, tz.m.LBFGS(history_size=3), tz.m.StrongWolfe())),
    "randomized_fdm_cosine": (TzModel, _fdm_cosine),
}


def _state(trainer):
    opt = trainer.optimizers[0]
    sd = opt.state_dict()
    tensors = [t for s in sd["state"].values() for ms in s.values() for t in ms.values() if isinstance(t, torch.Tensor)]
    return tensors, sd["torchzero"], [g.get("lr") for g in opt.param_groups]


@pytest.mark.parametrize("name", sorted(CASES))
def test_resume_equals_uninterrupted_run(name, tmp_path):
    cls, make_opt = CASES[name]
    dl = loader(data(16))  # 2 batches per epoch

    full = cls(make_opt)
    full_trainer = fit(full, 2 * K, dl)

    first = cls(make_opt)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=K, save_top_k=-1)
    fit(first, K, dl, enable_checkpointing=True, callbacks=[ckpt])
    (path,) = tmp_path.glob(f"*step={K}.ckpt")

    second = cls(make_opt)
    with torch.no_grad():  # the checkpoint, not the seed, must provide the weights
        for p in second.parameters():
            p.add_(1.0)
    second_trainer = fit(second, 2 * K, dl, ckpt_path=str(path))

    assert second_trainer.global_step == full_trainer.global_step == 2 * K
    assert_params_close(params(second.net), params(full.net))
    got, want = _state(second_trainer), _state(full_trainer)
    assert len(got[0]) == len(want[0]) > 0
    assert_params_close(got[0], want[0])
    assert got[1] == want[1], "module global state (step counters, scheduler) should resume"
    assert got[2] == pytest.approx(want[2])
    if full_trainer.lr_scheduler_configs:
        s1, s2 = (t.lr_scheduler_configs[0].scheduler for t in (second_trainer, full_trainer))
        assert s1.last_epoch == s2.last_epoch == 2 * K
        assert s1.get_last_lr() == pytest.approx(s2.get_last_lr())
