"""Step time and bytes communicated by the optimizer per step on FSDP2-sharded parameters (CPU, gloo).

Each chain of ``tests/core/_fsdp_chains_worker.py`` steps a ``fully_shard``ed MLP (``--width`` wide, 3 layers) on
every rank.  Reported per ``opt.step()``: its wall time (median over the timed steps; for closure chains it
includes the closure's forward and backward passes), the number of collectives the optimizer itself issued and
their payload per rank (all-reduce: the tensor; gather and all-gather: the shard sent; scatter: the shard
received).  The
collectives of FSDP's own forward and backward (all-gather, reduce-scatter) and the closure's loss all-reduce are
not counted: they are the same for every chain.  Counting wraps ``torch.distributed``'s collectives and the
functional collectives that DTensor uses (``full_tensor``).

    python -m torch.distributed.run --nproc_per_node 2 benchmarks/distributed.py          # the table
    python -m torch.distributed.run --nproc_per_node 2 benchmarks/distributed.py --quick  # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torchzero as tz  # noqa: E402

CHAINS: dict[str, tuple[Callable[[], list[Any]], bool]] = {
    "Adam + LR": (lambda: [tz.m.Adam(), tz.m.LR(1e-3)], False),
    "ClipNorm + Adam + LR": (lambda: [tz.m.ClipNorm(1.0), tz.m.Adam(), tz.m.LR(1e-3)], False),
    "Muon + LR": (lambda: [tz.m.Muon(), tz.m.LR(1e-3)], False),
    "Split(Muon / Adam) + LR": (
        lambda: [tz.m.Split(lambda p: p.ndim >= 2, true=[tz.m.Muon()], false=[tz.m.Adam()]), tz.m.LR(1e-3)],
        False,
    ),
    "Shampoo + LR": (lambda: [tz.m.Shampoo(), tz.m.LR(1e-3)], False),
    "PSGDKron + LR": (lambda: [tz.m.PSGDKron(seed=0), tz.m.LR(1e-3)], False),
    "LBFGS + StrongWolfe": (lambda: [tz.m.LBFGS(), tz.m.StrongWolfe()], True),
    "RandomizedFDM + Adam + LR": (lambda: [tz.m.RandomizedFDM(), tz.m.Adam(), tz.m.LR(1e-3)], True),
    "BFGS + Backtracking": (lambda: [tz.m.BFGS(), tz.m.Backtracking()], True),
}


DENSE = {"BFGS + Backtracking"}
"""chains that keep an n x n matrix: measured only on small models"""


class Counter:
    """Wraps the collectives of ``torch.distributed``; counts calls and payload bytes while ``on``."""

    NAMES = ("all_reduce", "gather", "scatter", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor",
             "broadcast")  # fmt: skip

    def __init__(self) -> None:
        self.on = False
        self.calls = 0
        self.bytes = 0
        for name in self.NAMES:
            setattr(dist, name, self._wrap(name, getattr(dist, name)))
        # DTensor's own redistributions (full_tensor(), implicit all-gathers) go through the functional collectives
        import torch.distributed._functional_collectives as funcol

        for name in ("all_gather_single", "all_gather_tensor", "all_reduce", "reduce_scatter_single",
                     "reduce_scatter_tensor"):  # fmt: skip
            if hasattr(funcol, name):
                setattr(funcol, name, self._wrap(name, getattr(funcol, name)))

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if self.on:
                # the first argument: the tensor reduced or sent (gather, all-gather), or received (scatter)
                t = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("tensor")
                self.calls += 1
                self.bytes += 0 if t is None else t.numel() * t.element_size()
            return fn(*args, **kwargs)

        return counted


def run(name: str, width: int, steps: int, counter: Counter, mesh: Any) -> tuple[float, float, float]:
    make, closure_chain = CHAINS[name]
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(width, width), torch.nn.Tanh(), torch.nn.Linear(width, width), torch.nn.Tanh(),
        torch.nn.Linear(width, 10),
    )  # fmt: skip
    for layer in (model[0], model[2], model[4], model):
        fully_shard(layer, mesh=mesh)
    opt = tz.Modular(model.parameters(), *make())
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(64, width, generator=g), torch.randn(64, 10, generator=g)
    x, y = X.chunk(world)[rank], Y.chunk(world)[rank]

    def closure(backward: bool = True) -> torch.Tensor:
        on, counter.on = counter.on, False  # the closure's own collectives are FSDP's and the user's
        try:
            loss = tz.mean_over_ranks(torch.nn.functional.mse_loss(model(x), y))
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss
        finally:
            counter.on = on

    times, calls, payload = [], 0, 0
    for i in range(steps + 2):  # two warm-up steps
        if not closure_chain:
            closure()
        counter.calls = counter.bytes = 0
        dist.barrier()
        start = time.perf_counter()
        counter.on = True
        opt.step(closure) if closure_chain else opt.step()
        counter.on = False
        elapsed = time.perf_counter() - start
        if i >= 2:
            times.append(elapsed)
            calls += counter.calls
            payload += counter.bytes
    return statistics.median(times), calls / steps, payload / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="width 32, 2 timed steps")
    args = parser.parse_args()
    width, steps = (32, 2) if args.quick else (args.width, args.steps)
    dist.init_process_group("gloo")
    counter = Counter()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    rows = []
    n = sum(p.numel() for p in _shapes(width))
    for name in CHAINS:
        if name in DENSE and n > 5000:
            continue  # an n x n matrix: the quick run (width 32) measures it
        rows.append((name, *run(name, width, steps, counter, mesh)))
    if dist.get_rank() == 0:
        print(f"{dist.get_world_size()} ranks (gloo, CPU), MLP {width}-{width}-{width}-10 ({n} parameters), "
              f"median of {steps} steps; collectives and bytes per step, per rank\n")  # fmt: skip
        print("| chain | step time (ms) | optimizer collectives | bytes communicated |")
        print("|---|---:|---:|---:|")
        for name, t, c, b in rows:
            print(f"| {name} | {t * 1e3:.1f} | {c:.0f} | {b:,.0f} |")
    import gc

    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def _shapes(width: int) -> list[torch.Tensor]:
    return [torch.empty(width, width), torch.empty(width), torch.empty(width, width), torch.empty(width),
            torch.empty(10, width), torch.empty(10)]  # fmt: skip


if __name__ == "__main__":
    main()
