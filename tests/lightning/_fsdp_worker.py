"""Run under ``torchrun --nproc_per_node 2``: tz chains under Lightning's ``ModelParallelStrategy`` (FSDP2,
``fully_shard`` in ``configure_model``; gloo, CPU). Rank 0 saves the gathered parameters to ``<out>/<chain>.pt``; the chain is the second argument."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.lightning`

import torch  # noqa: E402
from lightning.pytorch.strategies import ModelParallelStrategy  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

from tests.distributed import end_process_group  # noqa: E402
from tests.lightning._common import TzModel, data, loader, trainer  # noqa: E402
from tests.lightning.test_fsdp import CHAINS, N_FSDP, STEPS_FSDP  # noqa: E402


class ShardedModel(TzModel):
    def configure_model(self) -> None:
        mesh = self.device_mesh["data_parallel"]
        for layer in (self.net[0], self.net[2]):
            fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)


def fit_sharded(name: str, steps: int, ckpt_path: str | None = None, save: str | None = None) -> list[torch.Tensor]:
    """Train chain ``name`` on a 2-rank FSDP2 model for ``steps`` steps (resuming from ``ckpt_path``); the
    gathered parameters, and a checkpoint (Lightning's, sharded: DCP) at ``save``."""
    model = ShardedModel(CHAINS[name], dtype=torch.float64)
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    t = trainer(steps, strategy=strategy, devices=2)
    # each rank gets half of the N_FSDP samples (one batch); FSDP averages the gradients
    t.fit(model, loader(data(N_FSDP, torch.float64), batch_size=N_FSDP // 2), ckpt_path=ckpt_path)
    assert type(next(model.net.parameters())).__name__ == "DTensor"
    if save is not None:
        t.save_checkpoint(save)
    return [p.full_tensor().detach().clone() for p in model.net.parameters()]


def main(out: str, name: str) -> None:
    """One chain per run: a chain that fails cannot take the others down with it.  ``<name>_resume``: train
    half the steps, save Lightning's (DCP) checkpoint, resume from it in a new Trainer for the rest."""
    if name.endswith("_resume"):
        chain, ckpt = name.removesuffix("_resume"), f"{out}/{name}.ckpt"
        fit_sharded(chain, STEPS_FSDP // 2, save=ckpt)
        full = fit_sharded(chain, STEPS_FSDP, ckpt_path=ckpt)
    else:
        full = fit_sharded(name, STEPS_FSDP)
    if torch.distributed.get_rank() == 0:
        torch.save(full, f"{out}/{name}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])  # its trainer, strategy and sharded model go with its frame
    if torch.distributed.is_initialized():
        end_process_group()
