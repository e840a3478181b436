"""Lightning: log what the optimizer did with ``OptimizerMonitor``, into CSV files.

``tz.Modular(..., update_rms=True)`` makes Adam report the RMS of its update per param group, ``ClipNorm``
reports the gradient norm before clipping; ``tzl.OptimizerMonitor`` logs ``opt.metrics()`` to every logger of
the trainer (here a ``CSVLogger``) under ``tz/<group>/<module>/<name>``, every ``log_every_n_steps`` steps.
The metrics stay on the device while training; the monitor reads them only when it logs.

    python examples/lightning_metrics.py --steps 200 --log-dir logs
    # then: logs/metrics/version_0/metrics.csv (or point TensorBoardLogger at the same folder)
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import lightning as L
import torch
from _data import Net, make_loader
from lightning.pytorch.loggers import CSVLogger

import torchzero as tz
import torchzero_lightning as tzl


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = Net()

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return tz.Modular(self.parameters(), tz.m.ClipNorm(1.0), tz.m.Adam(), tz.m.LR(1e-2), update_rms=True)


def read_csv(path: Path) -> dict[int, dict[str, float]]:
    """The rows of a CSVLogger's metrics.csv by step (the loss and the optimizer's metrics share a step)."""
    rows: dict[int, dict[str, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.setdefault(int(row["step"]), {}).update({k: float(v) for k, v in row.items() if v and k != "step"})
    return rows


def train(steps: int, log_dir: str | Path, every: int = 1) -> dict[int, dict[str, float]]:
    torch.manual_seed(0)
    logger = CSVLogger(log_dir, name="metrics", version=0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=logger,
        log_every_n_steps=every,
        callbacks=[tzl.OptimizerMonitor(logging_interval="step")],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Classifier(), make_loader(batch_size=64))
    rows = read_csv(Path(logger.log_dir) / "metrics.csv")
    for step, row in sorted(rows.items()):
        if "tz/all/0.ClipNorm/norm" in row:
            # self.log files a batch's loss under the steps taken before its optimizer step, the monitor files
            # that step's metrics under the steps taken after it: the batch's loss is one row up
            loss = rows.get(step - 1, {}).get("train_loss", float("nan"))
            print(
                f"step {step:4d}  loss {loss:.4f}  grad norm {row['tz/all/0.ClipNorm/norm']:.4f}  "
                f"Adam update rms {row['tz/0/1.Adam/update_rms']:.4f}"
            )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    parser.add_argument("--log-dir", default=None, help="where the CSV logs go (default: a temporary folder)")
    parser.add_argument("--every", type=int, default=None, help="log every N steps (default: 20 rows a run)")
    args = parser.parse_args()
    every = args.every or max(1, args.steps // 20)
    if args.log_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            train(args.steps, tmp, every)
    else:
        train(args.steps, args.log_dir, every)
