"""Per-parameter options: param groups for the whole chain, ``set_params`` for one module.

A key in a param group of ``tz.Modular`` reaches every module of the chain that has a setting of that
name. ``module.set_params(groups)`` gives groups to one module only, and wins over the optimizer's.

    python examples/per_parameter.py --steps 100
"""

from __future__ import annotations

import itertools

import torch
from _data import Net, make_loader, steps_arg

import torchzero as tz


def train(steps: int) -> list[float]:
    torch.manual_seed(0)
    model, dataloader, loss_fn = Net(), make_loader(), torch.nn.CrossEntropyLoss()

    # Only LR has a setting called lr, so a per-group lr is unambiguous: the encoder learns faster.
    groups = [
        {"params": model.encoder.parameters(), "lr": 2e-2},
        {"params": model.decoder.parameters()},
    ]

    # Adam's eps for the encoder only. RandomizedFDM and other modules also have an eps that means
    # something else, so scope it to Adam with set_params instead of putting it in the groups above.
    adam = tz.m.Adam().set_params([{"params": model.encoder.parameters(), "eps": 1e-6}])

    opt = tz.Modular(groups, adam, tz.m.LR(1e-2))
    print(opt)

    losses = []
    batches = itertools.cycle(dataloader)
    for step in range(steps):
        inputs, targets = next(batches)
        loss = loss_fn(model(inputs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    return losses


if __name__ == "__main__":
    train(steps_arg(100))
