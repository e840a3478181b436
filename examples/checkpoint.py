"""Save a chain's state mid-run and resume: the resumed run continues exactly like an uninterrupted one.

The optimizer's ``state_dict`` holds tensors and plain Python values only (per-parameter state, step
counters, the scheduler inside ``LR``), so ``torch.load(..., weights_only=True)`` reads it.

    python examples/checkpoint.py --steps 40
"""

from __future__ import annotations

import os
import tempfile

import torch
from _data import Net, make_data, steps_arg

import torchzero as tz


def make(model: torch.nn.Module, steps: int) -> tz.Modular:
    return tz.Modular(
        model.parameters(),
        tz.m.Adam(),
        tz.m.Cautious(),
        tz.m.LR(1e-2, scheduler_cls=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=steps)),
        tz.m.WeightDecay(1e-4),
    )


def run(model: torch.nn.Module, opt: tz.Modular, steps: int, losses: list[float]) -> None:
    inputs, targets = make_data()
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(steps):
        loss = loss_fn(model(inputs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())


def train(steps: int) -> dict[str, list[float]]:
    half = steps // 2
    path = os.path.join(tempfile.mkdtemp(), "checkpoint.pt")

    # one uninterrupted run
    torch.manual_seed(0)
    model = Net()
    straight: list[float] = []
    run(model, make(model, steps), steps, straight)

    # the same run, saved after half the steps ...
    torch.manual_seed(0)
    model = Net()
    opt = make(model, steps)
    resumed: list[float] = []
    run(model, opt, half, resumed)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)

    # ... and resumed into a fresh model and optimizer
    model = Net()
    opt = make(model, steps)
    checkpoint = torch.load(path, weights_only=True)
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["optimizer"])
    run(model, opt, steps - half, resumed)

    same = straight == resumed
    print(
        f"loss {straight[0]:.4f} -> {straight[-1]:.4f}; resumed after step {half}: identical to the uninterrupted run: {same}"
    )
    return {"loss": straight, "resumed": resumed}


if __name__ == "__main__":
    train(steps_arg(40))
