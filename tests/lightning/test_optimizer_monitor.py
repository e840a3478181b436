"""``OptimizerMonitor`` logs ``opt.metrics()`` through the trainer's loggers: a real CSVLogger, read back."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

import torchzero as tz
import torchzero_lightning as tzl

from ._common import Model, TzModel, fit, loader


class Recorder(L.Callback):
    """What ``opt.metrics()`` gave after each batch, by ``trainer.global_step``, and the ClipNorm reference norm."""

    def __init__(self) -> None:
        self.seen: dict[int, dict[str, float]] = {}
        self.grad_norms: dict[int, float] = {}
        self._norm = math.nan

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        grads = [p.grad.flatten() for p in pl_module.parameters() if p.grad is not None]
        self._norm = float(torch.linalg.vector_norm(torch.cat(grads)))

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        opt = trainer.optimizers[0]
        self.seen[trainer.global_step] = opt.metrics()
        self.grad_norms[trainer.global_step] = self._norm


def _read(path: Path) -> dict[int, dict[str, float]]:
    rows: dict[int, dict[str, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items() if k.startswith("tz/") and v != ""}
            if values:  # the model's own logged loss has rows of its own
                rows.setdefault(int(row["step"]), {}).update(values)
    return rows


def _fit(
    model: L.LightningModule, tmp_path: Path, steps: int, interval: str
) -> tuple[dict[int, dict[str, float]], Recorder]:
    recorder = Recorder()
    logger = CSVLogger(tmp_path, name="run", version=0)
    monitor = tzl.OptimizerMonitor(logging_interval=interval)  # type: ignore[arg-type]
    fit(model, steps, logger=logger, callbacks=[monitor, recorder], log_every_n_steps=1)
    return _read(tmp_path / "run" / "version_0" / "metrics.csv"), recorder


def test_step_metrics_of_a_closure_chain(tmp_path: Path) -> None:
    model = TzModel(lambda p: tz.Modular(p, tz.m.LBFGS(), tz.m.StrongWolfe()))
    rows, recorder = _fit(model, tmp_path, 5, "step")
    assert sorted(rows) == sorted(recorder.seen) == [1, 2, 3, 4, 5]
    for step, seen in recorder.seen.items():
        logged = {k.removeprefix("tz/"): v for k, v in rows[step].items() if k.startswith("tz/")}
        assert logged.keys() == seen.keys()
        for key, value in seen.items():
            assert logged[key] == pytest.approx(value, rel=1e-6), key
        assert logged["all/1.StrongWolfe/accepted"] == 1.0
        assert logged["all/Modular/closure_calls"] >= 1 + logged["all/1.StrongWolfe/line_search_evals"]
    assert "tz/all/0.LBFGS/pairs_kept" in rows[2]  # a curvature pair from the second step on


def test_clip_norm_metric_is_the_gradient_norm(tmp_path: Path) -> None:
    model = Model(lambda p: tz.Modular(p, tz.m.ClipNorm(0.05), tz.m.Adam(), tz.m.LR(1e-2)))
    rows, recorder = _fit(model, tmp_path, 4, "step")
    for step, norm in recorder.grad_norms.items():
        assert rows[step]["tz/all/0.ClipNorm/norm"] == pytest.approx(norm, rel=1e-5)
        assert rows[step]["tz/all/0.ClipNorm/norm"] == pytest.approx(recorder.seen[step]["all/0.ClipNorm/norm"])


def test_epoch_interval_logs_the_last_step_of_each_epoch(tmp_path: Path) -> None:
    model = Model(lambda p: tz.Modular(p, tz.m.ClipNorm(0.05), tz.m.Adam(), tz.m.LR(1e-2)))
    per_epoch = len(loader())
    rows, recorder = _fit(model, tmp_path, 2 * per_epoch, "epoch")
    assert sorted(rows) == [per_epoch, 2 * per_epoch]
    for step in rows:
        assert rows[step]["tz/all/0.ClipNorm/norm"] == pytest.approx(recorder.seen[step]["all/0.ClipNorm/norm"])


def test_bad_interval() -> None:
    with pytest.raises(ValueError, match="logging_interval"):
        tzl.OptimizerMonitor(logging_interval="batch")  # type: ignore[arg-type]


def _read_tensorboard(logdir: Path) -> dict[int, dict[str, float]]:
    """Every scalar in the event files under ``logdir``, by step (tensorboard's own reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in logdir.rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0})  # 0: keep every value
    acc.Reload()
    rows: dict[int, dict[str, float]] = {}
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):
            rows.setdefault(event.step, {})[tag] = event.value
    return rows


def test_tensorboard_logger_gets_the_metrics(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger

    recorder = Recorder()
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    # update_rms: Adam's per-group RMS, kept on the device until the monitor reads it
    model = Model(lambda p: tz.Modular(p, tz.m.ClipNorm(0.05), tz.m.Adam(), tz.m.LR(1e-2), update_rms=True))
    fit(model, 3, logger=logger, callbacks=[tzl.OptimizerMonitor(), recorder], log_every_n_steps=1)
    logger.experiment.flush()
    rows = _read_tensorboard(tmp_path / "run" / "version_0")
    assert [s for s in sorted(rows) if any(k.startswith("tz/") for k in rows[s])] == [1, 2, 3]
    for step, seen in recorder.seen.items():
        logged = {k.removeprefix("tz/"): v for k, v in rows[step].items() if k.startswith("tz/")}
        assert (
            logged.keys() == seen.keys() == {"all/0.ClipNorm/norm", "0/1.Adam/update_rms", "all/Modular/closure_calls"}
        )
        for key, value in seen.items():
            assert logged[key] == pytest.approx(value, rel=1e-6), key  # event files store float32
        assert logged["all/0.ClipNorm/norm"] == pytest.approx(recorder.grad_norms[step], rel=1e-5)
