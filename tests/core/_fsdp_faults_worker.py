"""Run under torchrun (2 CPU processes, gloo): faults in closures of a sharded (FSDP2) run.

``nan``: a NaN loss on one rank only makes every rank reject the step the same way (Adam: every rank raises
NonFiniteLossError, nothing changes; LBFGS + StrongWolfe: every rank rejects the trial point, as an unsharded
run does whose closure returns NaN at the same evaluation).  ``differing``: losses that differ between ranks
(not averaged) raise the same error on every rank.  ``raise``: rank 1's closure raises; the run must end on
every rank with an error (the test checks it ends, and how).
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


def _models(mesh):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    ref = torch.nn.Sequential(torch.nn.Linear(6, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    ref.load_state_dict(model.state_dict())
    for layer in (model[0], model[2], model):
        fully_shard(layer, mesh=mesh)
    return model, ref


def _closure(opt, model, x, y, *, average=True, nan_at=None, raise_at=None):
    """A closure; on rank 1 its ``nan_at``-th evaluation returns NaN (on that rank only) and its ``raise_at``-th
    raises."""
    calls = [0]

    def closure(backward=True):
        calls[0] += 1
        loss = torch.nn.functional.mse_loss(model(x), y)
        if average:
            loss = tz.mean_over_ranks(loss)
        if dist.get_rank() == 1 and calls[0] == raise_at:
            raise RuntimeError("boom from rank 1's closure")
        if dist.get_rank() == 1 and calls[0] == nan_at:
            loss = loss * float("nan")
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    return closure, calls


def nan_first_order(mesh, X, Y):
    rank, world = dist.get_rank(), dist.get_world_size()
    model, _ = _models(mesh)
    opt = tz.Modular(model.parameters(), tz.m.Adam(), tz.m.LR(1e-2))
    closure, calls = _closure(opt, model, X.chunk(world)[rank], Y.chunk(world)[rank], nan_at=3)
    rejected = []
    for step in range(5):
        before = [p.full_tensor() for p in model.parameters()]
        try:
            opt.step(closure)
        except tz.NonFiniteLossError:
            rejected.append(step)
            assert all(torch.equal(p.full_tensor(), b) for p, b in zip(model.parameters(), before, strict=True))
    assert rejected == [2], rejected  # the third evaluation is step 2's, on every rank
    print(f"rank {rank}: nan_first_order OK", flush=True)


def nan_line_search(mesh, X, Y):
    """The 2nd evaluation (the first trial point of step 0's line search) is NaN on rank 1 only: every rank
    rejects it, exactly as an unsharded run whose 2nd evaluation is NaN."""
    rank, world = dist.get_rank(), dist.get_world_size()
    model, ref = _models(mesh)

    def make(p):
        return tz.Modular(p, tz.m.LBFGS(), tz.m.StrongWolfe())

    opt, ref_opt = make(model.parameters()), make(ref.parameters())
    closure, _ = _closure(opt, model, X.chunk(world)[rank], Y.chunk(world)[rank], nan_at=2)
    ref_calls = [0]

    def ref_closure(backward=True):
        ref_calls[0] += 1
        loss = torch.nn.functional.mse_loss(ref(X), Y)
        if ref_calls[0] == 2:
            loss = loss * float("nan")
        if backward:
            ref_opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(4):
        opt.step(closure)
        ref_opt.step(ref_closure)
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a.full_tensor(), b.detach(), rtol=2e-5, atol=2e-6)
    print(f"rank {rank}: nan_line_search OK", flush=True)


def differing(mesh, X, Y):
    rank, world = dist.get_rank(), dist.get_world_size()
    model, _ = _models(mesh)
    opt = tz.Modular(model.parameters(), tz.m.LBFGS(), tz.m.StrongWolfe())
    closure, _ = _closure(opt, model, X.chunk(world)[rank], Y.chunk(world)[rank], average=False)
    before = [p.full_tensor() for p in model.parameters()]
    try:
        opt.step(closure)
    except ValueError as e:
        assert "different losses on the ranks" in str(e), e
    else:
        raise AssertionError("differing losses were accepted")
    assert all(torch.equal(p.full_tensor(), b) for p, b in zip(model.parameters(), before, strict=True))
    print(f"rank {rank}: differing OK", flush=True)


def raising(mesh, X, Y):
    rank, world = dist.get_rank(), dist.get_world_size()
    model, _ = _models(mesh)
    opt = tz.Modular(model.parameters(), tz.m.LBFGS(), tz.m.StrongWolfe())
    closure, _ = _closure(opt, model, X.chunk(world)[rank], Y.chunk(world)[rank], raise_at=4)
    for _ in range(5):
        opt.step(closure)  # rank 1 raises in step 2's line search; rank 0 then fails in its next collective
    print(f"rank {rank}: finished without an error", flush=True)


def main():
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)
    if sys.argv[1] == "raise":
        raising(mesh, X, Y)
    else:
        nan_first_order(mesh, X, Y)
        nan_line_search(mesh, X, Y)
        differing(mesh, X, Y)
    end_process_group()


if __name__ == "__main__":
    main()
