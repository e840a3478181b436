"""Any torch optimizer as a module of a chain, with ``tz.m.Wrap``.

The wrapped optimizer runs with ``lr=1`` and the chain's ``LR`` sets the learning rate, so per-group
learning rates and schedulers work as for any chain. Gradient clipping before it and cautioning
after it are ordinary modules.

    python examples/wrap_external.py --steps 100
"""

from __future__ import annotations

import itertools

import torch
from _data import Net, make_loader, steps_arg

import torchzero as tz


def train(steps: int) -> list[float]:
    torch.manual_seed(0)
    model, dataloader, loss_fn = Net(), make_loader(), torch.nn.CrossEntropyLoss()

    opt = tz.Modular(
        model.parameters(),
        tz.m.ClipNorm(1.0),
        tz.m.Wrap(torch.optim.Adagrad, lr=1),
        tz.m.LR(5e-2),
        tz.m.Cautious(),
    )

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
