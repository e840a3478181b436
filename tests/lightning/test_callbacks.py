"""Lightning callbacks that touch the optimizer, each run twice on the same LightningModule: once with a
torch.optim optimizer and once with the tz.Modular chain that equals it.  What the callback produces (the
logged learning rates, momenta and weight decays, the groups it adds or restores on resume, the SWA-averaged
weights, the lr the finder suggests and the losses it recorded) and the final parameters must agree.

The equal pairs (``tests/modules/transforms/test_weight_decay.py`` pins them without Lightning):

- ``SGD(lr, momentum=m, weight_decay=wd)`` is ``Modular(WeightDecay(wd), SGD(momentum=m), LR(lr))``;
- ``Adam(lr, weight_decay=wd)`` is ``Modular(WeightDecay(wd), Adam(), LR(lr))``;
- ``AdamW(lr, weight_decay=wd)`` is ``Modular(Adam(), LR(lr), WeightDecay(wd, scale_by_lr=True))``;
- ``Adam(lr)`` is ``Modular(Adam(), LR(lr))`` (its groups say ``weight_decay=0.0``, as torch's do).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import (
    BackboneFinetuning,
    BaseFinetuning,
    Callback,
    GradientAccumulationScheduler,
    LearningRateMonitor,
    ModelCheckpoint,
    StochasticWeightAveraging,
)
from lightning.pytorch.loggers import Logger
from lightning.pytorch.tuner import Tuner
from torch import nn

import torchzero as tz
import torchzero_lightning as tzl

from ._common import D, assert_params_close, data, loader, params, trainer

F64 = torch.float64
LR, MOMENTUM, WD = 0.02, 0.9, 0.05

Factory = Callable[[Any, float], torch.optim.Optimizer]

# name -> (torch.optim optimizer, the equal tz.Modular chain); both take (params or groups, lr)
OPTIMIZERS: dict[str, tuple[Factory, Factory]] = {
    "sgd": (
        lambda g, lr: torch.optim.SGD(g, lr=lr, momentum=MOMENTUM, weight_decay=WD),
        lambda g, lr: tz.Modular(g, tz.m.WeightDecay(WD), tz.m.SGD(momentum=MOMENTUM), tz.m.LR(lr)),
    ),
    "adam": (
        lambda g, lr: torch.optim.Adam(g, lr=lr, weight_decay=WD),
        lambda g, lr: tz.Modular(g, tz.m.WeightDecay(WD), tz.m.Adam(), tz.m.LR(lr)),
    ),
    "adamw": (
        lambda g, lr: torch.optim.AdamW(g, lr=lr, weight_decay=WD),
        lambda g, lr: tz.Modular(g, tz.m.Adam(), tz.m.LR(lr), tz.m.WeightDecay(WD, scale_by_lr=True)),
    ),
    "adam_no_wd": (
        lambda g, lr: torch.optim.Adam(g, lr=lr),
        lambda g, lr: tz.Modular(g, tz.m.Adam(), tz.m.LR(lr)),
    ),
}
SIDES = {"torch": 0, "tz": 1}


class Net(L.LightningModule):
    """A backbone and a head (float64); ``configure_optimizers`` returns ``make_opt(self)``."""

    def __init__(self, make_opt: Callable[[Net], Any], batchnorm: bool = False, lr: float = LR) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers: list[nn.Module] = [nn.Linear(D, 8), nn.Tanh()]
        if batchnorm:
            layers.append(nn.BatchNorm1d(8))
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Linear(8, 1)
        self.to(F64)
        self.make_opt = make_opt
        self.lr = lr  # the attribute the lr finder reads and updates

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.head(self.backbone(x)), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return self.make_opt(self)


class Recorder(Logger):
    """Keeps every ``log_metrics`` call, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((step, {k: float(v) for k, v in metrics.items()}))


class GroupRecorder(Callback):
    """The optimizer's ``lr`` and ``swa_lr`` of every group before every batch."""

    def __init__(self) -> None:
        self.seen: list[list[tuple[float, float | None]]] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.seen.append([(g["lr"], g.get("swa_lr")) for g in trainer.optimizers[0].param_groups])


def _dl(n: int) -> Any:
    return loader(data(n, dtype=F64))


def _fit(model: L.LightningModule, dl: Any, tmp_path: Any, ckpt_path: str | None = None, **kwargs: Any) -> L.Trainer:
    t = trainer(kwargs.pop("max_steps", -1), default_root_dir=tmp_path, log_every_n_steps=1, **kwargs)
    t.fit(model, dl, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return t


def _same_name(metrics: dict[str, Any]) -> dict[str, Any]:
    """LearningRateMonitor names a metric after the optimizer class ("lr-SGD/head", "lr-Modular/head")."""
    return {re.sub(r"^lr-[A-Za-z]+", "lr", k): v for k, v in metrics.items()}


def _lrs(t: L.Trainer) -> list[float]:
    return [g["lr"] for g in t.optimizers[0].param_groups]


# ------------------------------------------------------------------------------------------ LearningRateMonitor
def _named_groups(make: Factory, with_wd: bool) -> Callable[[Net], Any]:
    def make_opt(m: Net) -> Any:
        head: dict[str, Any] = {"params": m.head.parameters(), "name": "head"}
        if with_wd:
            head["weight_decay"] = WD / 5  # a group of its own
        groups = [{"params": m.backbone.parameters(), "name": "backbone", "lr": LR / 4}, head]
        opt = make(groups, LR)
        # cycles the lr and the momentum (beta1 for Adam) of both groups, every step
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[LR / 2, LR * 2], total_steps=8, base_momentum=0.8)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return make_opt


def _one_group(make: Factory, with_wd: bool) -> Callable[[Net], Any]:
    return lambda m: make(m.parameters(), LR)


@pytest.mark.parametrize(
    ("case", "layout"),
    [("sgd", "named"), ("adam", "named"), ("adamw", "named"), ("adam_no_wd", "named"), ("sgd", "one_group")],
)
def test_learning_rate_monitor(case, layout, tmp_path):
    """lr, momentum and weight decay of each (named) group, logged every step, under the names torch.optim gets."""
    build = {"named": _named_groups, "one_group": _one_group}[layout]
    runs = {}
    for side, i in SIDES.items():
        model = Net(build(OPTIMIZERS[case][i], case != "adam_no_wd"))
        logger = Recorder()
        monitor = LearningRateMonitor(logging_interval="step", log_momentum=True, log_weight_decay=True)
        t = _fit(model, _dl(32), tmp_path / side, max_steps=8, logger=logger, callbacks=[monitor])
        rows = [(step, _same_name(m)) for step, m in logger.rows]
        runs[side] = (params(model), rows, _same_name(dict(t.callback_metrics)), _same_name(monitor.lrs))

    (p_tz, rows_tz, cb_tz, lrs_tz), (p_ref, rows_ref, cb_ref, lrs_ref) = runs["tz"], runs["torch"]
    names = [k for _, m in rows_ref for k in m if k.startswith("lr")]
    suffix = "/backbone" if layout == "named" else ""
    assert {f"lr{suffix}", f"lr{suffix}-momentum", f"lr{suffix}-weight_decay"} <= set(names)
    torch.testing.assert_close(rows_tz, rows_ref)
    torch.testing.assert_close(cb_tz, cb_ref)
    torch.testing.assert_close(lrs_tz, lrs_ref)
    if layout == "named":
        assert len(set(lrs_ref["lr/head"])) > 1, "OneCycleLR should have changed the lr"
        assert len({m["lr/head-momentum"] for _, m in rows_ref if "lr/head-momentum" in m}) > 1
    assert_params_close(p_tz, p_ref)


# ----------------------------------------------------------------------------- BaseFinetuning, BackboneFinetuning
# Lightning freezes the backbone again when a run resumes (``setup`` calls ``freeze_before_training``), and neither
# BackboneFinetuning nor the usual ``if epoch == k: unfreeze_and_add_param_group(...)`` unfreezes it after epoch k:
# a run resumed later would train without its backbone.  Both finetuners below make it trainable again.
class UnfreezeAtEpochOne(BaseFinetuning):
    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Any) -> None:
        if epoch == 1:  # the group's lr: param_groups[0]["lr"] / 4
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, initial_denom_lr=4.0)
        elif epoch > 1:
            self.make_trainable(pl_module.backbone)


class ResumableBackboneFinetuning(BackboneFinetuning):
    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Any) -> None:
        if epoch > self.unfreeze_backbone_at_epoch:
            self.make_trainable(pl_module.backbone)
        super().finetune_function(pl_module, epoch, optimizer)


FINETUNERS: dict[str, Callable[[], BaseFinetuning]] = {
    "base": UnfreezeAtEpochOne,
    # lr of the backbone group: head lr / 10 at epoch 1, then x1.5 every epoch (until it reaches the head's)
    "backbone": lambda: ResumableBackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda _: 1.5),
}


@pytest.mark.parametrize(("finetuner", "case"), [("base", "sgd"), ("backbone", "adamw"), ("backbone", "adam")])
def test_finetuning_adds_a_group_and_resumes(finetuner, case, tmp_path):
    """The backbone joins as a second group at epoch 1; a run stopped after epoch 1 and resumed from its checkpoint
    (Lightning then replaces ``param_groups`` with the saved list, the added group included) ends where an
    uninterrupted run ends, and the tz chain where torch.optim does."""
    dl = _dl(16)  # 2 batches per epoch, 4 epochs
    runs = {}
    for side, i in SIDES.items():
        make = OPTIMIZERS[case][i]

        def make_opt(m: Net, make: Factory = make) -> Any:
            return make([p for p in m.parameters() if p.requires_grad], LR)

        full = Net(make_opt)
        t_full = _fit(full, dl, tmp_path / side / "full", max_epochs=4, callbacks=[FINETUNERS[finetuner]()])
        assert len(t_full.optimizers[0].param_groups) == 2

        ckpt = ModelCheckpoint(dirpath=tmp_path / side / "ckpt", every_n_epochs=1, save_top_k=-1)
        first = Net(make_opt)
        callbacks = [FINETUNERS[finetuner](), ckpt]
        _fit(first, dl, tmp_path / side / "first", max_epochs=2, enable_checkpointing=True, callbacks=callbacks)
        (path,) = (tmp_path / side / "ckpt").glob("epoch=1-*.ckpt")

        second = Net(make_opt)
        with torch.no_grad():  # the checkpoint, not the seed, must provide the weights
            for p in second.parameters():
                p.add_(1.0)
        t_second = _fit(second, dl, tmp_path / side / "second", str(path), max_epochs=4,
                        callbacks=[FINETUNERS[finetuner]()])  # fmt: skip
        assert t_second.global_step == t_full.global_step == 8
        assert_params_close(params(second), params(full))
        assert _lrs(t_second) == pytest.approx(_lrs(t_full))
        runs[side] = (params(full), _lrs(t_full), params(second), _lrs(t_second))

    assert runs["torch"][1][1] != LR, "the backbone group should have an lr of its own"
    for got, want in zip(runs["tz"], runs["torch"], strict=True):
        torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------------ StochasticWeightAveraging
def _with_step_lr(make: Factory) -> Callable[[Net], Any]:
    """An epoch-interval StepLR, which SWA swaps for its SWALR at ``swa_epoch_start``."""

    def make_opt(m: Net) -> Any:
        opt = make(m.parameters(), LR)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)}

    return make_opt


@pytest.mark.parametrize(
    ("case", "batchnorm", "scheduler"), [("sgd", False, True), ("adamw", False, False), ("sgd", True, False)]
)
def test_stochastic_weight_averaging(case, batchnorm, scheduler, tmp_path):
    """SWALR anneals every group's lr to ``swa_lr`` (written into the groups); the averaged weights, which SWA
    copies into the model at the end (then, with batch norm, one more epoch to refit its statistics), agree."""
    runs = {}
    for side, i in SIDES.items():
        make = OPTIMIZERS[case][i]
        model = Net(_with_step_lr(make) if scheduler else (lambda m, make=make: make(m.parameters(), LR)), batchnorm)
        swa = StochasticWeightAveraging(swa_lrs=0.005, swa_epoch_start=2, annealing_epochs=2)
        groups = GroupRecorder()
        _fit(model, _dl(16), tmp_path / side, max_epochs=5, callbacks=[swa, groups])
        assert swa.n_averaged is not None
        averaged = params(swa._average_model)
        buffers = [b.detach().clone() for b in model.buffers()]
        runs[side] = (params(model), averaged, int(swa.n_averaged), groups.seen, buffers)

    assert runs["torch"][2] == 4, "epochs 2..5 should have been averaged"
    swa_lrs = [lr for step in runs["torch"][3] for lr, swa_lr in step if swa_lr is not None]
    assert swa_lrs and swa_lrs[-1] == pytest.approx(0.005), "SWALR should have annealed the lr to swa_lr"
    for got, want in zip(runs["tz"], runs["torch"], strict=True):
        torch.testing.assert_close(got, want)


class SamNet(tzl.TorchzeroMixin, Net):
    """The same model with the mixin a closure chain needs."""


class EpochStartParams(Callback):
    def __init__(self) -> None:
        self.seen: list[list[torch.Tensor]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen.append(params(pl_module))


def test_swa_batchnorm_epoch_with_a_closure_chain(tmp_path):
    """With batch norm SWA runs one more epoch without backward, accumulating over all its batches, only to refit the
    statistics; a closure chain (SAM under the mixin) has no gradient to evaluate there and is not stepped: the
    model ends at the average of its weights at the starts of epochs 1..3, with the batch-norm statistics of that
    average over one pass of the data."""
    make_opt = lambda m: tz.Modular(m.parameters(), tz.m.SAM(rho=0.05), tz.m.Adam(), tz.m.LR(LR))  # noqa: E731
    model = SamNet(make_opt, batchnorm=True)
    swa = StochasticWeightAveraging(swa_lrs=0.005, swa_epoch_start=2, annealing_epochs=2)
    starts = EpochStartParams()  # after SWA's own hook, which copies the average in at the extra epoch
    dl = _dl(16)
    t = _fit(model, dl, tmp_path, max_epochs=4, callbacks=[swa, starts])

    assert len(starts.seen) == 5 and t.global_step == 9  # 4 epochs of 2 steps, then the refit epoch's one
    average = [torch.stack(ps).mean(0) for ps in zip(*starts.seen[1:4], strict=True)]
    assert_params_close(params(model), average)
    assert_params_close(params(model), starts.seen[4])
    opt = t.optimizers[0]
    assert {s[opt.modules[1].key]["step"] for s in opt.state.values()} == {8}, "Adam should have taken 8 steps"

    torch.manual_seed(0)
    ref = Net(make_opt, batchnorm=True)
    with torch.no_grad():
        for p, q in zip(ref.parameters(), average, strict=True):
            p.copy_(q)
        bn = ref.backbone[2]
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average, as SWA sets it
        for x, _ in dl:
            ref.backbone(x)
    assert_params_close(list(model.backbone[2].buffers()), bn.buffers())


# ---------------------------------------------------------------------------------- GradientAccumulationScheduler
@pytest.mark.parametrize("case", ["sgd", "adamw"])
def test_gradient_accumulation_scheduler(case, tmp_path):
    """Accumulate 1, then 2, then 4 batches (4 batches per epoch: 4 + 2 + 1 steps), with a step-interval scheduler."""
    runs = {}
    for side, i in SIDES.items():
        make = OPTIMIZERS[case][i]

        def make_opt(m: Net, make: Factory = make) -> Any:
            opt = make(m.parameters(), LR)
            sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.8)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

        model = Net(make_opt)
        accumulate = GradientAccumulationScheduler(scheduling={0: 1, 1: 2, 2: 4})
        t = _fit(model, _dl(32), tmp_path / side, max_epochs=3, callbacks=[accumulate])
        runs[side] = (params(model), t.global_step, _lrs(t))

    assert runs["torch"][1] == 7
    for got, want in zip(runs["tz"], runs["torch"], strict=True):
        torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------------------------- lr finder
@pytest.mark.parametrize(("case", "mode"), [("sgd", "exponential"), ("adamw", "linear"), ("adam_no_wd", "exponential")])
def test_lr_finder(case, mode, tmp_path):
    """``Tuner.lr_find`` runs its own scheduler on the optimizer, records a loss per lr, restores the model and the
    optimizer from a checkpoint and sets ``model.lr`` to its suggestion; the training that follows uses it."""
    runs = {}
    for side, i in SIDES.items():
        make = OPTIMIZERS[case][i]
        model = Net(lambda m, make=make: make(m.parameters(), m.lr))
        t = trainer(4, default_root_dir=tmp_path / side)
        finder = Tuner(t).lr_find(model, train_dataloaders=_dl(32), min_lr=1e-4, max_lr=1.0, num_training=24, mode=mode)
        assert finder is not None
        suggestion = finder.suggestion()
        assert suggestion is not None and model.lr == suggestion
        results = {k: [float(v) for v in finder.results[k]] for k in ("lr", "loss")}
        t.fit(model, _dl(32))
        runs[side] = (results, suggestion, params(model), t.global_step, _lrs(t))

    assert len(runs["torch"][0]["loss"]) > 12, "suggestion() skips the first 10 points and the last one"
    for got, want in zip(runs["tz"], runs["torch"], strict=True):
        torch.testing.assert_close(got, want)
