"""A closure loop: L-BFGS with a strong-Wolfe line search on the full batch.

A closure re-evaluates the loss; ``closure(backward=True)`` also computes the gradient.  The line
search calls it several times per step, with ``backward=False`` when it only needs the loss.

    python examples/closure_loop.py --steps 30
"""

from __future__ import annotations

import torch
from _data import Net, make_data, steps_arg

import torchzero as tz


def train(steps: int) -> list[float]:
    torch.manual_seed(0)
    model, loss_fn = Net(), torch.nn.CrossEntropyLoss()
    inputs, targets = make_data()

    opt = tz.Modular(model.parameters(), tz.m.LBFGS(), tz.m.StrongWolfe())

    def closure(backward=True):
        loss = loss_fn(model(inputs), targets)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    losses = []
    for step in range(steps):
        loss = opt.step(closure)  # the loss before the step
        losses.append(loss.item())
        print(f"step {step:3d}  loss {loss.item():.5f}  closure calls {opt.last_info['closure_calls']}")
    return losses


if __name__ == "__main__":
    train(steps_arg(30))
