"""Worker for ``test_distributed.py``: run under ``torchrun --nproc_per_node 2`` (gloo, CPU).

Every check runs on every rank in the same order (the collectives must match); a failed check raises,
torchrun tears the other rank down, and the test shows both outputs.  Prints ``RANK <r> OK <n>`` at the end and, given a directory as the first argument,
writes the list of passed checks to ``rank<r>.json`` there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from accelerate import Accelerator  # noqa: E402

import torchzero as tz  # noqa: E402
from tests.accelerate._common import (  # noqa: E402
    CHAINS,
    accelerate_run,
    flat_params,
    make_data,
    make_model,
    reference_run,
    reset_accelerate,
)
from tests.distributed import end_process_group  # noqa: E402

N_STEPS, GLOBAL_BATCH = 4, 8
checks: list[str] = []


def fresh_accelerator(**kwargs) -> Accelerator:
    """A new Accelerator configuration on the same process group."""
    reset_accelerate(keep_process_group=True)
    return Accelerator(cpu=True, **kwargs)


def same_on_all_ranks(acc: Accelerator, t: torch.Tensor, what: str) -> None:
    rows = acc.gather(t.detach().reshape(1, -1).contiguous())
    for r in range(1, rows.shape[0]):
        if not torch.equal(rows[0], rows[r]):
            diff = (rows[0] - rows[r]).abs().max().item()
            raise AssertionError(f"{what}: rank {r} differs from rank 0 (max abs diff {diff:.3g})")


def global_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = make_data(N_STEPS * GLOBAL_BATCH)
    return list(zip(x.split(GLOBAL_BATCH), y.split(GLOBAL_BATCH), strict=True))


def local(batches, acc: Accelerator):
    """This process's share of each global batch (the concatenation over ranks is the global batch)."""
    n, r = acc.num_processes, acc.process_index
    return [(x.chunk(n)[r], y.chunk(n)[r]) for x, y in batches]


def check_chain(chain: str, mixed_precision: str) -> None:
    acc = fresh_accelerator(mixed_precision=mixed_precision)
    batches = global_batches()
    model, opt, losses = accelerate_run(acc, chain, local(batches, acc))
    assert type(model).__name__ == "DistributedDataParallel", type(model)
    flat = flat_params(model)
    same_on_all_ranks(acc, flat, f"{chain}/{mixed_precision} params")
    ref_model, ref_losses = reference_run(chain, batches, bf16=mixed_precision == "bf16")
    tol = {"rtol": 1e-4, "atol": 1e-5} if mixed_precision == "no" else {"rtol": 2e-2, "atol": 2e-3}
    torch.testing.assert_close(
        flat, flat_params(ref_model), **tol, msg=lambda m: f"{chain}/{mixed_precision} vs one process: {m}"
    )
    assert not torch.allclose(flat, flat_params(make_model())), f"{chain}: did not train"
    if ref_losses[0] is not None:
        got = torch.stack(losses)
        same_on_all_ranks(acc, got, f"{chain}/{mixed_precision} losses")
        torch.testing.assert_close(got, torch.stack(ref_losses), **tol)
    checks.append(f"{chain}/{mixed_precision}")


def check_random_directions_need_agreeing_seeds() -> None:
    """Negative control for the check above: different seeds per rank do make the params differ."""
    acc = fresh_accelerator()
    model = make_model()
    opt = tz.Modular(model.parameters(), tz.m.RandomizedFDM(seed=acc.process_index), tz.m.Adam(), tz.m.LR(1e-2))
    model, opt = acc.prepare(model, opt)
    import torchzero_accelerate as tza

    for x, y in local(global_batches(), acc):
        tza.step(acc, opt, lambda x=x, y=y: F.mse_loss(model(x), y))
    rows = acc.gather(flat_params(model).reshape(1, -1).contiguous())
    assert not torch.equal(rows[0], rows[1]), "different direction seeds per rank should desynchronise the params"
    checks.append("rfdm seeds control")


def check_accumulation() -> None:
    """2 processes x 2 micro-batches of 2 rows == one process on windows of 8 rows."""
    acc = fresh_accelerator(gradient_accumulation_steps=2)
    batches = global_batches()
    ref_model, _ = reference_run("adam", batches)
    model = make_model()
    opt = tz.Modular(model.parameters(), *CHAINS["adam"][1]())
    model, opt = acc.prepare(model, opt)
    for x, y in local(batches, acc):
        for xb, yb in zip(x.chunk(2), y.chunk(2), strict=True):
            with acc.accumulate(model):
                acc.backward(F.mse_loss(model(xb), yb))
                opt.step()
                opt.zero_grad()
    key = opt.optimizer.modules[0].key
    assert {s[key]["step"] for s in opt.optimizer.state.values()} == {N_STEPS}
    flat = flat_params(model)
    same_on_all_ranks(acc, flat, "accumulation params")
    torch.testing.assert_close(flat, flat_params(ref_model), rtol=1e-5, atol=1e-6)
    checks.append("accumulation")


def check_closure_accumulation() -> None:
    """A closure chain: 2 processes x 2 micro-batches of 2 rows, every micro-batch re-evaluated by the closure,
    == one process on windows of 8 rows (rtol 1e-5: float32, other summation orders)."""
    import torchzero_accelerate as tza

    acc = fresh_accelerator(gradient_accumulation_steps=2)
    batches = global_batches()
    ref_model, ref_losses = reference_run("lbfgs", batches)
    model = make_model()
    opt = tz.Modular(model.parameters(), *CHAINS["lbfgs"][1]())
    model, opt = acc.prepare(model, opt)
    losses = []
    for x, y in local(batches, acc):
        for xb, yb in zip(x.chunk(2), y.chunk(2), strict=True):
            with acc.accumulate(model):
                loss = tza.step(acc, opt, lambda a, b: F.mse_loss(model(a), b), xb, yb)
            if loss is not None:
                losses.append(loss)
    flat = flat_params(model)
    same_on_all_ranks(acc, flat, "closure accumulation params")
    torch.testing.assert_close(flat, flat_params(ref_model), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.stack(losses), torch.stack(list(ref_losses)), rtol=1e-5, atol=1e-6)
    checks.append("closure accumulation")


def check_schedulers() -> None:
    """A prepared scheduler steps once per process per call (Accelerate's rule for non-split batches);
    an ``LR(scheduler_cls=...)`` scheduler steps once per optimizer step."""
    acc = fresh_accelerator()
    model = make_model()
    opt = tz.Modular(model.parameters(), tz.m.Adam(), tz.m.LR(1e-2))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    inner_model = make_model()
    inner = tz.Modular(
        inner_model.parameters(),
        tz.m.Adam(),
        tz.m.LR(1e-2, scheduler_cls=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5)),
    )
    model, opt, sched, inner_model, inner = acc.prepare(model, opt, sched, inner_model, inner)
    for x, y in local(global_batches(), acc):
        for m, o in ((model, opt), (inner_model, inner)):
            acc.backward(F.mse_loss(m(x), y))
            o.step()
            o.zero_grad()
        sched.step()
    assert sched.scheduler.last_epoch == N_STEPS * acc.num_processes, sched.scheduler.last_epoch
    torch.testing.assert_close(opt.param_groups[0]["lr"], 1e-2 * 0.5 ** (N_STEPS * acc.num_processes))
    torch.testing.assert_close(inner.param_groups[0]["lr"], 1e-2 * 0.5**N_STEPS)
    checks.append("schedulers")


def main() -> None:
    acc = fresh_accelerator()
    assert acc.num_processes == 2, f"expected 2 processes, got {acc.num_processes}"
    for chain in CHAINS:
        check_chain(chain, "no")
    for chain in CHAINS:
        check_chain(chain, "bf16")
    check_random_directions_need_agreeing_seeds()
    check_accumulation()
    check_closure_accumulation()
    check_schedulers()
    acc = fresh_accelerator()
    acc.wait_for_everyone()
    print(f"RANK {acc.process_index} OK {len(checks)}: {', '.join(checks)}", flush=True)
    if len(sys.argv) > 1:  # the test reads this (the ranks' stdout lines may interleave)
        (Path(sys.argv[1]) / f"rank{acc.process_index}.json").write_text(json.dumps(checks))
    end_process_group()  # the checks' DDP models went with their functions' frames


if __name__ == "__main__":
    main()
