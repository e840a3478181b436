"""The chains, model and data of the DCP checkpoint tests (``_dcp_worker.py`` and ``test_fsdp.py``)."""

import torch

import torchzero as tz

STEPS = 3

# one of each kind of state: per-parameter tensors, 0-dim tensors (Prodigy's d), per-group scalars in
# global_state (NAdam's mu product, ScheduleFree's weight sum), a history of curvature pairs (LBFGS), a closure
# chain (a line search), matrix state (Muon), and two state namespaces side by side (Split)
CHAINS = {
    "adam": lambda p: tz.Modular(p, tz.m.Adam(), tz.m.LR(1e-2)),
    "sgd_momentum": lambda p: tz.Modular(p, tz.m.SGD(momentum=0.9), tz.m.LR(1e-2)),
    "muon": lambda p: tz.Modular(p, tz.m.Muon(), tz.m.LR(1e-2)),
    "lbfgs": lambda p: tz.Modular(p, tz.m.LBFGS(), tz.m.LR(0.1)),
    "lbfgs_backtracking": lambda p: tz.Modular(p, tz.m.LBFGS(), tz.m.Backtracking()),
    "nadam": lambda p: tz.Modular(p, tz.m.NAdam(), tz.m.LR(1e-2)),
    "prodigy": lambda p: tz.Modular(p, tz.m.Prodigy(), tz.m.LR(1.0)),
    "schedule_free": lambda p: tz.Modular(p, tz.m.ScheduleFreeAdamW(warmup_steps=2), tz.m.LR(1e-2)),
    "split": lambda p: tz.Modular(
        p, tz.m.Split(lambda t: t.ndim >= 2, true=[tz.m.Adam()], false=[tz.m.SGD(momentum=0.9)]), tz.m.LR(1e-2)
    ),
}

# LBFGS and Prodigy do not run on FSDP2 shards yet (torch has no DTensor rule for their _foreach_copy_; the fsdp
# branch makes them shard-aware): their checkpoints are made from a model replicated on each rank, saved once
REPLICATED = ("lbfgs", "lbfgs_backtracking", "prodigy")

# the rule is elementwise (or a scalar from elementwise sums with no shard-aware reduction needed), so a
# single-process continuation equals the 2-rank one up to the order of the gradient reduction (a replicated
# model trains on the whole batch on each rank, as the single process does)
ELEMENTWISE = ("adam", "sgd_momentum", "nadam", "schedule_free", "split", *REPLICATED)


def model(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 8, generator=g), torch.randn(16, 4, generator=g)


def train(net: torch.nn.Module, opt: tz.Modular, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    def closure(backward: bool = True) -> torch.Tensor:
        # every rank sees the same loss (the mean over the ranks' batches); gradients unchanged
        loss = tz.mean_over_ranks(torch.nn.functional.mse_loss(net(x), y))
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
