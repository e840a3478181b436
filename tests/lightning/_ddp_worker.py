"""Run under ``torchrun --nproc_per_node 2``: closure chains with ``TorchzeroMixin`` under Lightning's DDP
(gloo, CPU). Each rank saves its parameters and counts to ``<out>/<chain>_rank<r>.pt``."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.lightning`

import torch  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy  # noqa: E402

from tests.distributed import end_process_group  # noqa: E402
from tests.lightning._common import ManualClosureModel, TzModel, data, loader, params, trainer  # noqa: E402
from tests.lightning.test_ddp import CHAINS, N_DDP, STEPS_DDP  # noqa: E402


def main(out: str) -> None:
    rank = int(os.environ["RANK"])
    for name, make_opt in CHAINS.items():
        manual = name.startswith("manual")
        model = (ManualClosureModel if manual else TzModel)(make_opt, dtype=torch.float64, manual=manual)
        # a desynchronised collective raises after 45 s instead of hanging (torchrun then exits with an error)
        accumulate = 2 if name.startswith("accumulate") else 1
        t = trainer(
            STEPS_DDP,
            strategy=DDPStrategy(timeout=timedelta(seconds=45)),
            devices=2,
            accumulate_grad_batches=accumulate,
        )
        # Lightning's DistributedSampler (shuffle=False) gives each rank half of the N_DDP samples: one batch, or
        # `accumulate` micro-batches of equal size (their window is the whole batch again)
        t.fit(model, loader(data(N_DDP, torch.float64), batch_size=N_DDP // 2 // accumulate))
        assert t.world_size == 2
        result = {"params": params(model.net), "counts": dict(model.counts), "local_losses": model.logged}
        torch.save(result, f"{out}/{name}_rank{rank}.pt")
    # Lightning's teardown at the end of fit() unwraps the DDP model (strategy.model = the LightningModule):
    # with the last trainer gone, no DDP model is left to free after the process group
    del t, model
    if torch.distributed.is_initialized():
        end_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
