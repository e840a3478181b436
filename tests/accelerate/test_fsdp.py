"""FSDP2 through Accelerate's own plugin (``FullyShardedDataParallelPlugin(fsdp_version=2)``,
``accelerator.prepare``; two CPU processes, gloo): a closure chain (LBFGS + StrongWolfe through ``tza.step``),
Muon and Adam on the sharded model equal one process stepping the same chain on the concatenated batches, and
``save_state`` / ``load_state`` halfway resumes like an uninterrupted run.  The runs are in ``_fsdp_worker.py``.

Accelerate 1.15 sets ``DistributedType.FSDP`` only for accelerators: in ``AcceleratorState.__init__``
(``accelerate/state.py``) the ``fsdp_plugin is not None`` test (~line 1010) sits under
``elif self.distributed_type in [MULTI_GPU, MULTI_MLU, ..., MULTI_NEURON]`` (~line 986), a list without
``MULTI_CPU``; on CPU it keeps ``MULTI_CPU`` and silently drops the plugin.  Its FSDP2 preparation
(``Accelerator._prepare_fsdp2``, ``fsdp2_prepare_model``, ``fsdp2_switch_optimizer_parameters``) and its FSDP2
checkpointing (``save_fsdp_model`` / ``save_fsdp_optimizer`` with DCP) run on CPU with gloo, so the worker
sets the state to FSDP with the plugin before ``prepare`` (only where Accelerate left it at MULTI_CPU).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import torchzero as tz
from tests.distributed import torchrun

from ._common import make_data, make_model

WORKER = Path(__file__).with_name("_fsdp_worker.py")
STEPS, GLOBAL_BATCH = 4, 8
CHAINS = {
    "adam": lambda p: tz.Modular(p, tz.m.Adam(), tz.m.LR(1e-2)),
    "muon": lambda p: tz.Modular(p, tz.m.Muon(), tz.m.LR(1e-2)),
    "lbfgs_strongwolfe": lambda p: tz.Modular(p, tz.m.LBFGS(), tz.m.StrongWolfe()),
    # a per-group scalar in global_state (the momentum product) that the checkpoint must carry
    "nadam": lambda p: tz.Modular(p, tz.m.NAdam(), tz.m.LR(1e-2)),
}


def needs_closure(opt: tz.Modular) -> bool:
    return any(m.needs_closure or m.creates_update for m in opt.modules)


def global_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One batch of ``GLOBAL_BATCH`` rows per step, float64; each rank of the sharded run takes half of it."""
    x, y = make_data(STEPS * GLOBAL_BATCH)
    return list(zip(x.double().split(GLOBAL_BATCH), y.double().split(GLOBAL_BATCH), strict=True))


def reference_run(name: str) -> tuple[list[torch.Tensor], list[float]]:
    """One process, unsharded, float64, the whole batch of each step: the parameters and the losses."""
    model = make_model().double()
    opt = CHAINS[name](model.parameters())
    losses = []
    for x, y in global_batches():
        if needs_closure(opt):

            def closure(backward: bool = True, x=x, y=y) -> torch.Tensor:
                loss = F.mse_loss(model(x), y)
                if backward:
                    opt.zero_grad()
                    loss.backward()
                return loss

            losses.append(float(opt.step(closure)))
        else:
            F.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    return [p.detach() for p in model.parameters()], losses


def check(tmp_path: Path, run: str, chain: str) -> None:
    torchrun(WORKER, str(tmp_path), run, nproc=2, timeout=120)
    got = torch.load(tmp_path / f"{run}.pt", weights_only=True)
    want, want_losses = reference_run(chain)
    assert len(got["params"]) == len(want)
    for p, q in zip(got["params"], want, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
    assert not all(torch.equal(p, q) for p, q in zip(want, make_model().double().parameters(), strict=True))
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(want_losses), rtol=1e-9, atol=1e-12)


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["lbfgs_strongwolfe", "muon", "adam"])
def test_fsdp2_plugin_matches_one_process(tmp_path, name):
    """float64; the sharded run sums the gradient over ranks in another order than one process: rtol 1e-9."""
    check(tmp_path, name, name)


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["nadam", "lbfgs_strongwolfe"])
def test_fsdp2_plugin_save_state_resumes_like_one_process(tmp_path, name):
    """``accelerator.save_state`` after half the steps, a new Accelerator, model and chain ``load_state`` it and
    take the rest: equal to one uninterrupted unsharded process (float64, rtol 1e-9)."""
    check(tmp_path, f"{name}_resume", name)
