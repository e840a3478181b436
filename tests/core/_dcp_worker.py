"""Run under torchrun (2 CPU processes, gloo): DCP checkpoints of tz chains on an FSDP2-sharded model.

For each chain: 3 steps, ``dcp.save`` (sharded), 3 more steps (the uninterrupted run); then a fresh model and
optimizer load the checkpoint (``dcp.load`` into their own state dicts, and separately from a full state dict
broadcast from rank 0) and take the same 3 steps: their parameters must equal the uninterrupted run's exactly
(same ranks, same reductions). Rank 0 leaves the gathered optimizer state at the save and the final parameters
in ``<dir>`` for the single-process resharding check of ``test_fsdp.py``.
"""

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.distributed`

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint.state_dict import (  # noqa: E402
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

from tests.core.dcp_chains import CHAINS, REPLICATED, STEPS, data, model, train  # noqa: E402
from tests.distributed import end_process_group  # noqa: E402


def sharded(mesh, seed: int, name: str, replicated: tuple[str, ...]) -> torch.nn.Module:
    net = model(seed)
    if name in replicated:  # a whole copy on each rank, trained on the whole batch: plain tensors, saved once
        return net
    fully_shard(net[0], mesh=mesh)
    fully_shard(net[2], mesh=mesh)
    fully_shard(net, mesh=mesh)
    return net


def full_params(net: torch.nn.Module) -> list[torch.Tensor]:
    return [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for p in net.parameters()]


def check_chain(name: str, mesh, out: Path, replicated: tuple[str, ...]) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    X, Y = data()
    x, y = (X, Y) if name in replicated else (X.chunk(world)[rank], Y.chunk(world)[rank])
    net = sharded(mesh, 0, name, replicated)
    opt = CHAINS[name](net.parameters())
    train(net, opt, x, y, STEPS)
    ckpt = out / name
    dcp.save({"model": get_model_state_dict(net), "optim": get_optimizer_state_dict(net, opt)}, checkpoint_id=ckpt)
    gathered = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank 0 only
    # copies: on CPU, the gathered state of a replicated model holds the live tensors themselves
    full = copy.deepcopy(get_optimizer_state_dict(net, opt, options=gathered))
    full_model = copy.deepcopy(get_model_state_dict(net, options=gathered))
    if rank == 0:
        torch.save(full, out / f"{name}_optim_full.pt")
    train(net, opt, x, y, STEPS)
    straight = full_params(net)
    if rank == 0:
        torch.save(straight, out / f"{name}_final.pt")

    # resume 1: dcp.load into the state dicts of a fresh model and optimizer (DCP makes the optimizer's state)
    net2 = sharded(mesh, 1, name, replicated)
    opt2 = CHAINS[name](net2.parameters())
    target = {"model": get_model_state_dict(net2), "optim": get_optimizer_state_dict(net2, opt2)}
    dcp.load(target, checkpoint_id=ckpt)
    set_model_state_dict(net2, target["model"])
    set_optimizer_state_dict(net2, opt2, target["optim"])
    train(net2, opt2, x, y, STEPS)
    for i, (a, b) in enumerate(zip(straight, full_params(net2), strict=True)):
        assert torch.equal(a, b), f"{name}: dcp resume, parameter {i} differs by {(a - b).abs().max():.3g}"

    # resume 2: the full (gathered) optimizer state, broadcast from rank 0 into a fresh sharded optimizer
    net3 = sharded(mesh, 1, name, replicated)
    opt3 = CHAINS[name](net3.parameters())
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(net3, full_model if rank == 0 else {}, options=options)
    set_optimizer_state_dict(net3, opt3, full if rank == 0 else {}, options=options)
    train(net3, opt3, x, y, STEPS)
    for i, (a, b) in enumerate(zip(straight, full_params(net3), strict=True)):
        assert torch.equal(a, b), f"{name}: full-state resume, parameter {i} differs by {(a - b).abs().max():.3g}"


def main():
    """``_dcp_worker.py OUT [CHAIN ...] [--shard-all]``: the chains (all by default); ``--shard-all`` shards the
    chains that otherwise run on a replicated model too."""
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    out = Path(sys.argv[1])
    names = [a for a in sys.argv[2:] if not a.startswith("--")] or list(CHAINS)
    replicated = () if "--shard-all" in sys.argv else REPLICATED
    for name in names:
        check_chain(name, mesh, out, replicated)
        print(f"rank {rank}: {name} OK", flush=True)
    end_process_group()  # the sharded models are freed (gc) before the group goes


if __name__ == "__main__":
    main()
