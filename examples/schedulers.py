"""Learning-rate schedulers: built into ``tz.m.LR`` (with momentum cycling), or on the optimizer.

python examples/schedulers.py --steps 100
"""

from __future__ import annotations

import itertools

import torch
from _data import Net, make_loader, steps_arg
from torch.optim.lr_scheduler import CosineAnnealingLR, OneCycleLR

import torchzero as tz


def train(steps: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    model, dataloader, loss_fn = Net(), make_loader(), torch.nn.CrossEntropyLoss()

    # 1. scheduler_cls: LR builds the scheduler and steps it after every opt.step(); OneCycleLR also
    #    cycles SGD's momentum, because the optimizer exposes it.
    opt = tz.Modular(
        model.parameters(),
        tz.m.SGD(momentum=0.9),
        tz.m.LR(0.1, scheduler_cls=lambda o: OneCycleLR(o, max_lr=0.1, total_steps=steps)),
    )
    history: dict[str, list[float]] = {"loss": [], "lr": [], "momentum": []}
    batches = itertools.cycle(dataloader)
    for step in range(steps):
        inputs, targets = next(batches)
        loss = loss_fn(model(inputs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()  # also steps the scheduler
        group = opt.param_groups[0]
        history["loss"].append(loss.item())
        history["lr"].append(group["lr"])
        history["momentum"].append(group["momentum"])
        if step % 25 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  lr {group['lr']:.4f}  momentum {group['momentum']:.3f}")

    # 2. any torch scheduler built on the optimizer itself, stepped by you
    opt2 = tz.Modular(model.parameters(), tz.m.Adam(), tz.m.LR(1e-2))
    cosine = CosineAnnealingLR(opt2, T_max=steps)
    for _ in range(steps):
        inputs, targets = next(batches)
        loss = loss_fn(model(inputs), targets)
        opt2.zero_grad()
        loss.backward()
        opt2.step()
        cosine.step()
    print(f"cosine schedule ended at lr {opt2.param_groups[0]['lr']:.2e}")
    return history


if __name__ == "__main__":
    train(steps_arg(100))
