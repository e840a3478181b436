"""Worker for test_distributed.py: closure chains on 2 gloo processes with all-reduced losses.

Each rank holds half of the data.  The closure all-reduces the gradient (as DDP does) and returns the
all-reduced loss, so every decision (line-search acceptance, curvature checks) is taken on the same
numbers everywhere.  Checks: parameters are bitwise identical on both ranks, and equal to a
single-process run on the whole data set.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import torchzero as tz  # noqa: E402
from tests.distributed import end_process_group  # noqa: E402

CHAINS = {
    "lbfgs_wolfe": lambda: [tz.m.LBFGS(history_size=4), tz.m.StrongWolfe()],
    "rfdm_lbfgs_backtracking": lambda: [tz.m.RandomizedFDM(eps=1e-4, n_samples=3), tz.m.LBFGS(), tz.m.Backtracking()],
    "sam_sgd_armijo": lambda: [tz.m.SAM(rho=0.05), tz.m.SGD(momentum=0.5), tz.m.ArmijoTrials(n_trials=5)],
    "fdm_lbfgs_backtracking": lambda: [tz.m.FDM(eps=1e-4), tz.m.LBFGS(), tz.m.Backtracking()],
    "bfgs_wolfe": lambda: [tz.m.BFGS(), tz.m.StrongWolfe()],
}


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 4, generator=g, dtype=torch.float64)
    Y = torch.sin(X.sum(1, keepdim=True))
    return X, Y


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).double()


def train(name: str, X: torch.Tensor, Y: torch.Tensor, distributed: bool) -> list[torch.Tensor]:
    net = model()
    params = list(net.parameters())
    opt = tz.Modular(params, *CHAINS[name]())
    world = dist.get_world_size() if distributed else 1

    def closure(backward: bool = True) -> torch.Tensor:
        loss = ((net(X) - Y) ** 2).mean()
        if backward:
            opt.zero_grad()
            loss.backward()
            if distributed:
                for p in params:
                    dist.all_reduce(p.grad)
                    p.grad /= world
        value = loss.detach().clone()
        if distributed:
            dist.all_reduce(value)
            value /= world
        return value

    for _ in range(6):
        opt.step(closure)
    return [p.detach().clone() for p in params]


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    X, Y = data()
    shard = slice(rank * len(X) // world, (rank + 1) * len(X) // world)
    for name in CHAINS:
        mine = train(name, X[shard], Y[shard], distributed=True)
        flat = torch.cat([p.reshape(-1) for p in mine])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        assert all(torch.equal(gathered[0], g) for g in gathered), f"{name}: ranks diverged"
        single = torch.cat([p.reshape(-1) for p in train(name, X, Y, distributed=False)])
        torch.testing.assert_close(flat, single, rtol=1e-7, atol=1e-9, msg=f"{name}: differs from one process")
        print(f"{name} OK", flush=True)
    end_process_group()


if __name__ == "__main__":
    main()
