"""Hugging Face Accelerate with a plain chain: Adam + LR, a OneCycleLR schedule, gradient accumulation.

A chain that needs no closure goes through ``accelerator.prepare`` like any torch optimizer, and the
loop is Accelerate's usual one: ``accelerator.backward(loss)``, ``opt.step()``, ``opt.zero_grad()``.
The scheduler cycles Adam's ``beta1`` too (through the optimizer's param groups).

    python examples/accelerate_plain.py --steps 50
    torchrun --nproc_per_node 2 examples/accelerate_plain.py --steps 50      # two CPU processes (gloo)
    accelerate launch examples/accelerate_plain.py --mixed-precision bf16
"""

from __future__ import annotations

import argparse

import torch
from _data import Net, make_loader
from accelerate import Accelerator
from accelerate.utils import set_seed

import torchzero as tz

# Without cpu=True, Accelerate 1.15 on a machine without a GPU runs every torchrun process as its own
# single-process job (no DDP, no communication); with it, the processes form a gloo group.
CPU_ONLY = not torch.cuda.is_available()


def train(steps: int, accumulation: int = 2, mixed_precision: str = "no", cpu: bool = CPU_ONLY) -> list[float]:
    accelerator = Accelerator(cpu=cpu, gradient_accumulation_steps=accumulation, mixed_precision=mixed_precision)
    set_seed(0)  # the same initial weights on every process
    model, loss_fn = Net(), torch.nn.CrossEntropyLoss()
    opt = tz.Modular(model.parameters(), tz.m.Adam(), tz.m.LR(1e-2))
    # Accelerate steps a prepared scheduler once per process per optimizer step: size it accordingly
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-2, total_steps=(steps + 1) * accelerator.num_processes)
    model, opt, loader, sched = accelerator.prepare(model, opt, make_loader(batch_size=32), sched)

    accelerator.print(f"{accelerator.num_processes} process(es), {accelerator.distributed_type.name}")
    losses: list[float] = []
    window: list[torch.Tensor] = []
    while len(losses) < steps:
        for inputs, targets in loader:
            with accelerator.accumulate(model):
                loss = loss_fn(model(inputs), targets)
                accelerator.backward(loss)
                opt.step()  # skipped by Accelerate until the window is complete
                sched.step()
                opt.zero_grad()
            window.append(loss.detach())
            if accelerator.sync_gradients:  # an optimizer step was taken
                mean = accelerator.reduce(torch.stack(window).mean(), reduction="mean").item()
                window.clear()
                losses.append(mean)
                accelerator.print(
                    f"step {len(losses) - 1:3d}  loss {mean:.5f}  lr {opt.param_groups[0]['lr']:.4f}  "
                    f"beta1 {opt.param_groups[0]['betas'][0]:.3f}"
                )
                if len(losses) == steps:
                    break
    # A clean exit under torchrun (docs/guides/distributed.md): free the DDP-wrapped model while the process
    # group is alive, then destroy the group.  DDP's C++ Reducer holds the group; freed after end_training()
    # it would run gloo's shutdown with the GIL held and can deadlock with a gloo thread that needs the GIL.
    accelerator.wait_for_everyone()
    model = opt = loader = sched = None  # the DDP wrapper goes: Accelerate keeps only the unwrapped model
    accelerator.free_memory()  # drops Accelerate's references to the prepared objects, runs gc.collect()
    accelerator.end_training()  # destroys the process group
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps (default 50)")
    parser.add_argument("--accumulation", type=int, default=2, help="batches per optimizer step (default 2)")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    args = parser.parse_args()
    train(args.steps, args.accumulation, args.mixed_precision)
