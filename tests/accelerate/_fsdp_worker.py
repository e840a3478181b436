"""Run under ``torchrun --nproc_per_node 2`` (gloo, CPU): a tz chain on a model sharded by Accelerate's FSDP2
plugin.  Arguments: an output directory and the run (a chain of ``test_fsdp.CHAINS``, or ``<chain>_resume``);
rank 0 saves the gathered parameters and the closure losses to ``<out>/<run>.pt``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.accelerate`

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from accelerate import Accelerator, FullyShardedDataParallelPlugin  # noqa: E402
from accelerate.state import PartialState  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402

import torchzero_accelerate as tza  # noqa: E402
from tests.accelerate._common import make_model, reset_accelerate  # noqa: E402
from tests.accelerate.test_fsdp import CHAINS, STEPS, global_batches, needs_closure  # noqa: E402
from tests.distributed import end_process_group  # noqa: E402


def fsdp2_accelerator() -> Accelerator:
    """An Accelerator with the FSDP2 plugin; each ``nn.Linear`` is its own FSDP unit, the root holds the rest.

    Accelerate keeps ``MULTI_CPU`` and drops the plugin on CPU (``AcceleratorState`` sets FSDP only for GPUs,
    accelerate/state.py ~1010); its FSDP2 code itself runs on CPU, so the state is told FSDP here.
    """
    reset_accelerate(keep_process_group=True)
    if PartialState._shared_state.get("distributed_type") == DistributedType.FSDP:  # set by an earlier call:
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_CPU  # AcceleratorState would keep it
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=["Linear"]
    )
    acc = Accelerator(cpu=True, fsdp_plugin=plugin)
    if acc.distributed_type == DistributedType.MULTI_CPU:
        acc.state.distributed_type = DistributedType.FSDP
        acc.state.fsdp_plugin = plugin
        # every later AcceleratorState() copies PartialState's type back over its own (state.py ~919): set both,
        # as AcceleratorState does itself on GPUs (state.py ~1037)
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    assert acc.is_fsdp2 and acc.num_processes == 2, (acc.distributed_type, acc.num_processes)
    return acc


def train(name: str, first: int, last: int, load: str | None = None, save: str | None = None):
    """Steps ``first..last-1`` of chain ``name`` on this rank's half of each global batch, after
    ``load_state(load)`` if given, then ``save_state(save)`` if given; the gathered parameters and the losses."""
    acc = fsdp2_accelerator()
    model = make_model().double()
    model, opt = acc.prepare(model, CHAINS[name](model.parameters()))
    assert all(type(p).__name__ == "DTensor" for g in opt.param_groups for p in g["params"])
    if load is not None:
        acc.load_state(load)
    n, r = acc.num_processes, acc.process_index
    losses = []
    for x, y in global_batches()[first:last]:
        x, y = x.chunk(n)[r], y.chunk(n)[r]
        if needs_closure(opt.optimizer):
            losses.append(float(tza.step(acc, opt, lambda x=x, y=y: F.mse_loss(model(x), y))))
        else:
            acc.backward(F.mse_loss(model(x), y))
            opt.step()
            opt.zero_grad()
    if save is not None:
        acc.save_state(save)
    return [p.full_tensor().detach().clone() for p in model.parameters()], losses


def main(out: str, run: str) -> None:
    if run.endswith("_resume"):
        name, ckpt = run.removesuffix("_resume"), f"{out}/{run}_state"
        _, losses = train(name, 0, STEPS // 2, save=ckpt)
        params, more = train(name, STEPS // 2, STEPS, load=ckpt)
        losses += more
    else:
        params, losses = train(run, 0, STEPS)
    if torch.distributed.get_rank() == 0:
        torch.save({"params": params, "losses": losses}, f"{out}/{run}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])  # the sharded models and optimizers go with its frames
    if torch.distributed.is_initialized():
        end_process_group()
