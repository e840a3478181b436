"""DDP on two CPU processes (``torchrun``, gloo): closure chains with ``TorchzeroMixin`` do not hang, end
with identical parameters on both ranks after the same closure calls, and agree with one process stepping
the chain on the concatenated batch.  Every loss a line search or a finite difference sees is averaged over
processes, so every rank takes the same branch even though the local losses differ."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import torchzero as tz
from tests.distributed import torchrun

from ._common import assert_params_close, data, loader, reference_closure_run

N_DDP, STEPS_DDP = 16, 5
CHAINS = {
    "lbfgs_strongwolfe": lambda p: tz.Modular(p, tz.m.LBFGS(), tz.m.StrongWolfe()),
    "randomized_fdm_adam": lambda p: tz.Modular(p, tz.m.RandomizedFDM(n_samples=2, seed=7), tz.m.Adam(), tz.m.LR(0.05)),
    # manual optimization: the user's closure(backward) calls self.manual_backward
    "manual_lbfgs_strongwolfe": lambda p: tz.Modular(p, tz.m.LBFGS(), tz.m.StrongWolfe()),
    # accumulate_grad_batches=2 over two micro-batches per rank: the window is the whole batch again
    "accumulate_lbfgs_strongwolfe": lambda p: tz.Modular(p, tz.m.LBFGS(), tz.m.StrongWolfe()),
}


@pytest.mark.distributed
def test_ddp_two_processes_match_one_process(tmp_path):
    torchrun(Path(__file__).with_name("_ddp_worker.py"), str(tmp_path), nproc=2, timeout=150)
    for name, make_opt in CHAINS.items():
        r0, r1 = (torch.load(tmp_path / f"{name}_rank{r}.pt", weights_only=True) for r in (0, 1))
        for p, q in zip(r0["params"], r1["params"], strict=True):
            assert torch.equal(p, q), f"{name}: the ranks' parameters differ"
        assert r0["counts"] == r1["counts"], (
            f"{name}: the ranks evaluated differently: {r0['counts']} vs {r1['counts']}"
        )
        assert r0["local_losses"] != r1["local_losses"], "each rank should see its own half of the data"

        full = loader(data(N_DDP, torch.float64), batch_size=N_DDP)
        ref_params, ref_counts, _ = reference_closure_run(make_opt, STEPS_DDP, dl=full, dtype=torch.float64)
        if name.startswith("manual"):
            assert r0["counts"]["on_after_backward"] == ref_counts["backward"], name
        elif name.startswith("accumulate"):  # every evaluation runs training_step on both micro-batches
            assert r0["counts"].get("training_step_grad", 0) == 2 * ref_counts.get("backward", 0), name
            assert r0["counts"].get("training_step_nograd", 0) == 2 * ref_counts.get("loss_only", 0), name
        else:
            assert r0["counts"].get("training_step_grad", 0) == ref_counts.get("backward", 0), name
            assert r0["counts"].get("training_step_nograd", 0) == ref_counts.get("loss_only", 0), name
        assert_params_close(r0["params"], ref_params, atol=1e-9, rtol=1e-7)
