"""Lightning with a closure chain and a scheduler: SAM + Adam + LR under a step-wise OneCycleLR.

SAM evaluates the gradient a second time, at a perturbed point, so the chain needs a closure.  The one
line that makes that work in Lightning is ``tzl.TorchzeroMixin`` as the first base class.  The scheduler
is built on the ``tz.Modular`` itself (not on ``opt.get_lr_module()``); OneCycleLR also cycles Adam's
``betas``, which the Modular keeps in its param groups.

    python examples/lightning_sam.py --steps 200
"""

from __future__ import annotations

import lightning as L
import torch
from _data import Net, make_loader, steps_arg

import torchzero as tz
import torchzero_lightning as tzl


class Classifier(tzl.TorchzeroMixin, L.LightningModule):
    def __init__(self, total_steps: int) -> None:
        super().__init__()
        self.net = Net()
        self.total_steps = total_steps
        self.history: dict[str, list[float]] = {"loss": [], "lr": [], "beta1": []}

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)  # logged once per step, not at SAM's perturbed point
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        group = self.trainer.optimizers[0].param_groups[0]
        self.history["loss"].append(float(outputs["loss"]))
        self.history["lr"].append(group["lr"])
        self.history["beta1"].append(group["betas"][0])
        step = len(self.history["loss"]) - 1
        if step % max(1, self.total_steps // 10) == 0 or step == self.total_steps - 1:
            print(f"step {step:4d}  loss {self.history['loss'][-1]:.4f}  lr {group['lr']:.5f}")

    def configure_optimizers(self):
        opt = tz.Modular(self.parameters(), tz.m.SAM(rho=0.05), tz.m.Adam(), tz.m.LR(1e-3))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.02, total_steps=self.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def train(steps: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    model = Classifier(total_steps=steps)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, make_loader(batch_size=64))
    return model.history


if __name__ == "__main__":
    train(steps_arg(200))
