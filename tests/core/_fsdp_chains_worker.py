"""Run under torchrun (CPU, gloo): tz chains on FSDP2-sharded parameters equal the same chains unsharded.

Each rank trains a ``fully_shard``ed model on its part of the batch (FSDP averages the gradients) and, next
to it, an unsharded copy of the same model with the same chain on the whole batch; after five steps the
gathered parameters of the first must equal the second.  Closure chains return the loss averaged over the
ranks, so both runs see the same loss.  Usage: ``_fsdp_chains_worker.py [mesh]`` with mesh ``1d`` (default)
or ``hsdp`` (a (replicate, shard) mesh over 4 processes).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.distributed`

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

import torchzero as tz  # noqa: E402
from tests.distributed import end_process_group  # noqa: E402
from torchzero.modules.optimizers import orthogonalize  # noqa: E402

# name -> (modules factory, uses a closure)
CHAINS = {
    "adam": (lambda: [tz.m.Adam(), tz.m.LR(1e-2)], False),
    "clipnorm_adam": (lambda: [tz.m.ClipNorm(0.05), tz.m.Adam(), tz.m.LR(1e-2)], False),
    "muon": (lambda: [tz.m.Muon(ns_dtype=None), tz.m.LR(2e-2)], False),
    "split_muon_adam": (
        lambda: [
            tz.m.Split(lambda p: p.ndim >= 2, true=[tz.m.Muon(ns_dtype=None)], false=[tz.m.Adam()]),
            tz.m.LR(1e-2),
        ],
        False,
    ),
    "shampoo": (lambda: [tz.m.Shampoo(momentum=0.9), tz.m.LR(1e-2)], False),
    "psgd_kron": (lambda: [tz.m.PSGDKron(seed=0), tz.m.LR(1e-2)], False),  # seeded noise: the same on the owner
    # the bases refreshed at steps 3 and 5, vectors preconditioned too: every part of SOAP's step on the owner
    "soap": (lambda: [tz.m.SOAP(precondition_frequency=2, precondition_1d=True), tz.m.LR(1e-2)], False),
    "lbfgs_strong_wolfe": (lambda: [tz.m.LBFGS(), tz.m.StrongWolfe()], True),
    "fdm_adam": (lambda: [tz.m.RandomizedFDM(n_samples=2), tz.m.Adam(), tz.m.LR(1e-2)], True),
}


def _model() -> torch.nn.Module:
    # 7 and 5 rows: uneven shards over 2 (and 4) ranks, one of them smaller
    return torch.nn.Sequential(torch.nn.Linear(6, 7), torch.nn.Tanh(), torch.nn.Linear(7, 5), torch.nn.Tanh(),
                               torch.nn.Linear(5, 3))  # fmt: skip


def _mean_over_ranks(loss: torch.Tensor) -> torch.Tensor:
    """The loss averaged over every rank (its autograd graph stays the local part, as under FSDP)."""
    total = loss.detach().clone()
    dist.all_reduce(total)
    return loss + (total / dist.get_world_size() - loss.detach())


def _whole(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if type(t).__name__ == "DTensor" else t


def check_chain(name: str, mesh, X: torch.Tensor, Y: torch.Tensor, shard_group, partial: bool = False) -> None:
    """``partial``: only the first two layers are sharded, the last one stays plain (its gradient averaged by
    hand, as DDP would), so plain tensors and shards meet in one optimizer."""
    make, closure_chain = CHAINS[name]
    rank, world = dist.get_rank(shard_group), dist.get_world_size(shard_group)
    torch.manual_seed(0)
    model, ref = _model(), _model()
    ref.load_state_dict(model.state_dict())
    for layer in (model[0], model[2]) if partial else (model[0], model[2], model[4], model):
        fully_shard(layer, mesh=mesh)
    opt, ref_opt = tz.Modular(model.parameters(), *make()), tz.Modular(ref.parameters(), *make())
    x, y = X.chunk(world)[rank], Y.chunk(world)[rank]

    def closure(backward=True):
        loss = _mean_over_ranks(torch.nn.functional.mse_loss(model(x), y))
        if backward:
            opt.zero_grad()
            loss.backward()
            for p in model[4].parameters() if partial else ():
                dist.all_reduce(p.grad)
                p.grad /= world
        elif partial:  # a root FSDP module stays unsharded after a forward without backward: reshard it, so the
            model[0].reshard()  # next forward gathers the parameters the optimizer moved (docs: Sharded training)
            model[2].reshard()
        return loss

    def ref_closure(backward=True):  # the whole batch
        loss = torch.nn.functional.mse_loss(ref(X), Y)
        if backward:
            ref_opt.zero_grad()
            loss.backward()
        return loss

    calls = []  # the matrices Newton-Schulz ran on in this rank's sharded steps
    newton_schulz = orthogonalize.newton_schulz

    def counting(x, *args, **kwargs):
        calls.append(type(x).__name__)
        return newton_schulz(x, *args, **kwargs)

    for _ in range(5):
        orthogonalize.newton_schulz = counting
        try:
            if closure_chain:
                opt.step(closure)
            else:
                closure()
                opt.step()
        finally:
            orthogonalize.newton_schulz = newton_schulz
        if closure_chain:
            ref_opt.step(ref_closure)
        else:
            # the gradient FSDP reduce-scattered, whole: both optimizers start from the same numbers, so what
            # differs is only the optimizer's own work (full-batch gradients differ in the last bits)
            for a, b in zip(model.parameters(), ref.parameters(), strict=True):
                b.grad = _whole(a.grad).clone()
            ref_opt.step()
    if "muon" in name:
        # 3 weight matrices, owners round-robin over the shard group: ranks 0, 1, 0 (2 ranks); partial: the 2
        # sharded ones on ranks 0 and 1, the plain one on every rank
        sharded, plain = (2, 1) if partial else (3, 0)
        owned = sum(1 for k in range(sharded) if k % world == rank) + plain
        assert calls == ["Tensor"] * (5 * owned), (rank, calls)
    assert type(next(model.parameters())).__name__ == "DTensor"
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        # float32 sums in another order (local shards, then across ranks): a few ulps per step
        torch.testing.assert_close(_whole(a), b.detach(), rtol=2e-5, atol=2e-6)


def check_sophia_refused(mesh) -> None:
    """Sophia declares supports_sharding = False: a clear error before anything changes."""
    model = _model()
    for layer in (model[0], model[2], model[4], model):
        fully_shard(layer, mesh=mesh)
    opt = tz.Modular(model.parameters(), tz.m.Sophia(), tz.m.LR(1e-2))

    def closure(backward=True):
        loss = model(torch.ones(2, 6)).sum()
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    before = [p.full_tensor() for p in model.parameters()]
    try:
        opt.step(closure)
    except NotImplementedError as e:
        assert "Sophia cannot run on parameters sharded by FSDP2" in str(e), e
    else:
        raise AssertionError("Sophia stepped on sharded parameters")
    assert not opt.state
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a.full_tensor(), b)
    print(f"rank {dist.get_rank()}: sophia_refused OK", flush=True)


def main():
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    kind = sys.argv[1] if len(sys.argv) > 1 else "1d"
    if kind == "hsdp":
        mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("replicate", "shard"))
        shard_group = mesh.get_group("shard")
    else:  # "1d", or "partial": a 1-D mesh, only some layers sharded
        mesh = init_device_mesh("cpu", (world,))
        shard_group = None
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else list(CHAINS)
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)
    for name in names:
        check_chain(name, mesh, X, Y, shard_group, partial=kind == "partial")
        print(f"rank {dist.get_rank()}: {name} OK", flush=True)
    if len(sys.argv) <= 2 and kind != "partial":
        check_sophia_refused(mesh)
    end_process_group()


if __name__ == "__main__":
    main()
