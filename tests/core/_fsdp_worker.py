"""Run under torchrun (2 CPU processes, gloo): FSDP2-sharded model, tz chains vs torch on the full model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.distributed`

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

import torchzero as tz  # noqa: E402
from tests.distributed import end_process_group  # noqa: E402


def _model():
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


CHAINS = {
    "adam_fused": (lambda p: tz.Modular(p, tz.m.Adam(), tz.m.LR(1e-2)), lambda p: torch.optim.Adam(p, lr=1e-2), None),
    "adam_foreach": (
        lambda p: tz.Modular(p, tz.m.Adam(fused=False), tz.m.LR(1e-2), tz.m.SGD()),
        lambda p: torch.optim.Adam(p, lr=1e-2),
        None,
    ),
    "sgd_nesterov": (
        lambda p: tz.Modular(p, tz.m.SGD(momentum=0.9, nesterov=True), tz.m.LR(1e-2)),
        lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True),
        None,
    ),
    # low precision on sharded parameters: the reference is the same chain on the unsharded model
    "adam_bf16_state": (
        lambda p: tz.Modular(p, tz.m.Adam(), tz.m.LR(1e-2), state_dtype="bfloat16"),
        lambda p: tz.Modular(p, tz.m.Adam(), tz.m.LR(1e-2), state_dtype="bfloat16"),
        None,
    ),
    "sgd_kahan": (
        lambda p: tz.Modular(p, tz.m.SGD(momentum=0.9), tz.m.LR(1e-2), param_update="kahan"),
        lambda p: tz.Modular(p, tz.m.SGD(momentum=0.9), tz.m.LR(1e-2), param_update="kahan"),
        None,
    ),
    "clipnorm_global": (
        lambda p: tz.Modular(p, tz.m.ClipNorm(0.1), tz.m.SGD(), tz.m.LR(0.1)),
        lambda p: torch.optim.SGD(p, lr=0.1),
        0.1,
    ),
}


def check_chain(name: str, mesh, X: torch.Tensor, Y: torch.Tensor) -> None:
    """Five steps of the chain on the sharded model and of torch's optimizer on the full one; compare."""
    make, make_ref, clip = CHAINS[name]
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model, ref = _model(), _model()
    ref.load_state_dict(model.state_dict())
    fully_shard(model[0], mesh=mesh)
    fully_shard(model[2], mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt, ref_opt = make(model.parameters()), make_ref(ref.parameters())
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(model(X.chunk(world)[rank]), Y.chunk(world)[rank])
        loss.backward()
        opt.step()
        opt.zero_grad()
        torch.nn.functional.mse_loss(ref(X), Y).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
        ref_opt.step()
        ref_opt.zero_grad()
    assert type(next(model.parameters())).__name__ == "DTensor"
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a.full_tensor(), b.detach(), rtol=1e-5, atol=1e-6)


def main():
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(16, 8, generator=g), torch.randn(16, 3, generator=g)
    for name in CHAINS:
        check_chain(name, mesh, X, Y)
        print(f"rank {rank}: {name} OK", flush=True)
    # the sharded models hold the process group and sit in reference cycles: end_process_group's
    # gc.collect() frees them before the group goes
    end_process_group()


if __name__ == "__main__":
    main()
