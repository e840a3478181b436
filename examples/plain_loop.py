"""A torchzero chain in an ordinary PyTorch training loop: backward, step, zero_grad.

python examples/plain_loop.py --steps 200
"""

from __future__ import annotations

import itertools

import torch
from _data import Net, make_loader, steps_arg

import torchzero as tz


def train(steps: int) -> list[float]:
    torch.manual_seed(0)
    model, dataloader, loss_fn = Net(), make_loader(), torch.nn.CrossEntropyLoss()

    # Adam's rule, then cautioning, then the learning rate, then decoupled weight decay
    opt = tz.Modular(model.parameters(), tz.m.Adam(), tz.m.Cautious(), tz.m.LR(1e-2), tz.m.WeightDecay(1e-4))

    losses = []
    batches = itertools.cycle(dataloader)
    for step in range(steps):
        inputs, targets = next(batches)
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    return losses


if __name__ == "__main__":
    train(steps_arg(200))
