"""Hugging Face Accelerate with a closure chain: L-BFGS with a strong-Wolfe line search.

``torchzero_accelerate.step`` builds the closure: it backpropagates through ``accelerator.backward``,
runs loss-only evaluations under ``torch.no_grad()`` and averages the loss over processes, so every
process accepts the same line-search trials and the parameters stay identical.  It returns the step's
loss (``AcceleratedOptimizer.step`` itself returns None).  Each process works on its shard of the data;
DDP averages the gradients.

    python examples/accelerate_closure.py --steps 20
    torchrun --nproc_per_node 2 examples/accelerate_closure.py --steps 20    # two CPU processes (gloo)
    python examples/accelerate_closure.py --chain sam --mixed-precision bf16
"""

from __future__ import annotations

import argparse

import torch
from _data import Net, make_data
from accelerate import Accelerator
from accelerate.utils import set_seed

import torchzero as tz
import torchzero_accelerate as tza

CHAINS = {
    "lbfgs": lambda: [tz.m.LBFGS(), tz.m.StrongWolfe()],
    "sam": lambda: [tz.m.SAM(rho=0.05), tz.m.Adam(), tz.m.LR(3e-2)],
    "rfdm": lambda: [tz.m.RandomizedFDM(n_samples=4), tz.m.Adam(), tz.m.LR(1e-2)],
}

# Without cpu=True, Accelerate 1.15 on a machine without a GPU runs every torchrun process as its own
# single-process job (no DDP, no communication); with it, the processes form a gloo group.
CPU_ONLY = not torch.cuda.is_available()


def train(steps: int, chain: str = "lbfgs", mixed_precision: str = "no", cpu: bool = CPU_ONLY) -> list[float]:
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision)
    set_seed(0)
    model, loss_fn = Net(), torch.nn.CrossEntropyLoss()
    opt = tz.Modular(model.parameters(), *CHAINS[chain]())
    model, opt = accelerator.prepare(model, opt)

    accelerator.print(f"{accelerator.num_processes} process(es), {accelerator.distributed_type.name}")
    x, y = make_data()
    with accelerator.split_between_processes({"x": x, "y": y}) as shard:  # this process's rows
        inputs, targets = shard["x"].to(accelerator.device), shard["y"].to(accelerator.device)

    losses: list[float] = []
    for step in range(steps):
        loss = tza.step(accelerator, opt, lambda: loss_fn(model(inputs), targets))
        losses.append(loss.item())
        info = opt.optimizer.last_info  # what the chain reported about this step
        accelerator.print(f"step {step:3d}  loss {loss.item():.5f}  closure calls {info['closure_calls']}")
    # A clean exit under torchrun (docs/guides/distributed.md): free the DDP-wrapped model while the process
    # group is alive, then destroy the group.  DDP's C++ Reducer holds the group; freed after end_training()
    # it would run gloo's shutdown with the GIL held and can deadlock with a gloo thread that needs the GIL.
    accelerator.wait_for_everyone()
    model = opt = None  # the DDP wrapper goes: Accelerate keeps only the unwrapped model
    accelerator.free_memory()  # drops Accelerate's references to the prepared objects, runs gc.collect()
    accelerator.end_training()  # destroys the process group
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps (default 20)")
    parser.add_argument("--chain", default="lbfgs", choices=sorted(CHAINS))
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    args = parser.parse_args()
    train(args.steps, args.chain, args.mixed_precision)
