"""Hugging Face Accelerate: log what the optimizer did with ``torchzero_accelerate.log_metrics``.

L-BFGS with a strong-Wolfe line search on the full batch; after each step ``tza.log_metrics(accelerator, opt,
step)`` sends ``opt.metrics()`` (the accepted step size, the line search's evaluations, the curvature pairs
kept, the closure calls) through ``accelerator.log`` to the trackers given to ``Accelerator(log_with=...)``,
here TensorBoard (``pip install tensorboard``; ``tensorboard --logdir LOG_DIR`` shows the curves).  Only the
main process writes.

    python examples/accelerate_metrics.py --steps 20 --log-dir runs
    torchrun --nproc_per_node 2 examples/accelerate_metrics.py --steps 20 --log-dir runs
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _data import Net, make_data
from accelerate import Accelerator
from accelerate.utils import set_seed

import torchzero as tz
import torchzero_accelerate as tza

CPU_ONLY = not torch.cuda.is_available()  # cpu=True lets torchrun's CPU processes form a gloo group


def train(steps: int, log_dir: str | Path, cpu: bool = CPU_ONLY) -> list[dict[str, float]]:
    """Train, logging every step; returns what was logged at each step (the loss and the optimizer's metrics)."""
    accelerator = Accelerator(cpu=cpu, log_with="tensorboard", project_dir=str(log_dir))
    accelerator.init_trackers("lbfgs")  # a run folder under log_dir
    set_seed(0)
    model, loss_fn = Net(), torch.nn.CrossEntropyLoss()
    model, opt = accelerator.prepare(model, tz.Modular(model.parameters(), tz.m.LBFGS(), tz.m.StrongWolfe()))
    accelerator.print(f"{accelerator.num_processes} process(es), {accelerator.distributed_type.name}")
    x, y = make_data()
    with accelerator.split_between_processes({"x": x, "y": y}) as shard:
        inputs, targets = shard["x"].to(accelerator.device), shard["y"].to(accelerator.device)

    logged: list[dict[str, float]] = []
    for step in range(steps):
        loss = tza.step(accelerator, opt, lambda: loss_fn(model(inputs), targets))  # averaged over processes
        accelerator.log({"loss": loss.item()}, step=step)
        values = tza.log_metrics(accelerator, opt, step=step)  # {"tz/all/1.StrongWolfe/step_size": ..., ...}
        logged.append({"loss": loss.item(), **values})
        accelerator.print(
            f"step {step:3d}  loss {loss.item():.5f}  step size {values['tz/all/1.StrongWolfe/step_size']:.4f}  "
            f"line-search evals {values['tz/all/1.StrongWolfe/line_search_evals']:.0f}"
        )
    accelerator.wait_for_everyone()
    model = opt = None  # free the DDP wrapper while the process group lives (docs/guides/distributed.md)
    accelerator.free_memory()
    accelerator.end_training()  # closes the trackers (the event files are complete) and the process group
    return logged


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps (default 20)")
    parser.add_argument("--log-dir", default=None, help="where the TensorBoard files go (default: a temporary folder)")
    args = parser.parse_args()
    if args.log_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            train(args.steps, tmp)
    else:
        train(args.steps, args.log_dir)
