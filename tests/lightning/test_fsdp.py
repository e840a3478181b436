"""FSDP2 under Lightning (``ModelParallelStrategy`` with ``fully_shard``; two CPU processes, gloo): tz chains on
the sharded model equal one process stepping the chain on the concatenated batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import torchzero as tz
from tests.distributed import torchrun

from ._common import assert_params_close, data, loader, reference_closure_run

N_FSDP, STEPS_FSDP = 16, 4
CHAINS = {
    "adam": lambda p: tz.Modular(p, tz.m.Adam(), tz.m.LR(1e-2)),
    "muon": lambda p: tz.Modular(p, tz.m.Muon(), tz.m.LR(1e-2)),
    "lbfgs_strongwolfe": lambda p: tz.Modular(p, tz.m.LBFGS(), tz.m.StrongWolfe()),
    # a per-group scalar in global_state (the momentum product): the state DCP must carry in the param group
    "nadam": lambda p: tz.Modular(p, tz.m.NAdam(), tz.m.LR(1e-2)),
}


@pytest.mark.distributed
@pytest.mark.parametrize(
    "name",
    [
        "adam",
        "muon",
        "lbfgs_strongwolfe",
    ],
)
def test_model_parallel_fsdp2_matches_one_process(tmp_path, name):
    """float64; the sharded run reduces the gradient in another order than one process: rtol 1e-9."""
    torchrun(Path(__file__).with_name("_fsdp_worker.py"), str(tmp_path), name, nproc=2, timeout=120)
    got = torch.load(tmp_path / f"{name}.pt", weights_only=True)
    full = loader(data(N_FSDP, torch.float64), batch_size=N_FSDP)
    want, _, _ = reference_closure_run(CHAINS[name], STEPS_FSDP, dl=full, dtype=torch.float64)
    assert_params_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["nadam", "lbfgs_strongwolfe"])
def test_model_parallel_checkpoint_resumes_like_one_process(tmp_path, name):
    """Lightning saves ModelParallelStrategy checkpoints with DCP (get_optimizer_state_dict): half the steps,
    save, resume in a new Trainer; equal to one uninterrupted process on the whole batch (float64, rtol 1e-9)."""
    torchrun(Path(__file__).with_name("_fsdp_worker.py"), str(tmp_path), f"{name}_resume", nproc=2, timeout=120)
    got = torch.load(tmp_path / f"{name}_resume.pt", weights_only=True)
    full = loader(data(N_FSDP, torch.float64), batch_size=N_FSDP)
    want, _, _ = reference_closure_run(CHAINS[name], STEPS_FSDP, dl=full, dtype=torch.float64)
    assert_params_close(got, want, rtol=1e-9, atol=1e-12)
