"""bf16 parameters with compensated updates: the model is stored in bfloat16 (half the memory of fp32), its
optimizer state in float32, and every step is added to the parameters with Kahan summation, so steps smaller
than bf16's resolution are not lost.

python examples/bf16_compensated.py --steps 200
"""

from __future__ import annotations

import itertools

import torch
from _data import Net, make_loader, steps_arg

import torchzero as tz


def train(steps: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    model, dataloader, loss_fn = Net().to(torch.bfloat16), make_loader(), torch.nn.CrossEntropyLoss()

    opt = tz.Modular(
        model.parameters(),
        tz.m.Adam(),
        tz.m.LR(1e-2),
        state_dtype="float32",  # Adam's moments in fp32: the chain computes in fp32 for these bf16 parameters
        param_update="kahan",  # or "stochastic_rounding" (no extra buffer, unbiased on average)
    )

    losses = []
    batches = itertools.cycle(dataloader)
    for step in range(steps):
        inputs, targets = next(batches)
        loss = loss_fn(model(inputs.to(torch.bfloat16)), targets)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")

    weight = model.decoder.weight
    kept = opt.state[weight]
    print(
        f"parameters {weight.dtype}, Adam's moments {kept['0']['exp_avg'].dtype}, "
        f"Kahan buffer {kept['param_update']['kahan'].dtype}"
    )
    return {"loss": losses}


if __name__ == "__main__":
    train(steps_arg(200))
