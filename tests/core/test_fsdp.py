"""FSDP2 (``fully_shard``): chains on sharded DTensor parameters equal torch.optim, or the same chain, on the
unsharded model; modules that cannot work on shards are refused up front; faults end or agree on every rank.

Each test is one torchrun launch (2 CPU processes, gloo; HSDP 4) running several chains, with a hard timeout."""

import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from tests.core.dcp_chains import CHAINS, ELEMENTWISE, REPLICATED, STEPS, data, model, train
from tests.distributed import torchrun, torchrun_nodes

pytestmark = pytest.mark.distributed


def test_fsdp2_chains_match_unsharded_torch():
    out = torchrun(Path(__file__).with_name("_fsdp_worker.py"), nproc=2, timeout=240)
    for name in ("adam_fused", "adam_foreach", "sgd_nesterov", "adam_bf16_state", "sgd_kahan", "clipnorm_global"):
        assert out.count(f"{name} OK") == 2, out[-3000:]


def test_dcp_checkpoints_of_sharded_chains_resume_exactly_and_reshard_to_one_process(tmp_path):
    """2 ranks save with dcp and resume exactly (``_dcp_worker.py``); one process then loads that checkpoint."""
    out = torchrun(Path(__file__).with_name("_dcp_worker.py"), str(tmp_path), nproc=2, timeout=240)
    for name in CHAINS:
        assert out.count(f": {name} OK") == 2, out[-3000:]
    for name in CHAINS:
        _check_reshard_to_one_process(name, tmp_path)


def test_dcp_checkpoints_of_lbfgs_and_prodigy_on_shards(tmp_path):
    """The chains that run on a replicated model above, on FSDP2 shards (they fail in the step for now)."""
    names = [name for name in CHAINS if name in REPLICATED]
    out = torchrun(Path(__file__).with_name("_dcp_worker.py"), str(tmp_path), *names, "--shard-all", timeout=120)
    for name in names:
        assert out.count(f": {name} OK") == 2, out[-3000:]
        _check_reshard_to_one_process(name, tmp_path)


def _check_reshard_to_one_process(name, out):
    """The 2-rank checkpoint loads into an unsharded model and optimizer in one process (DCP reshards).

    The loaded state equals the state gathered at the save exactly. A continuation on the full batch equals the
    2-rank continuation up to the order of the gradient reduction (rtol 1e-5 in float32) where the rule is
    elementwise; the others (Muon, LBFGS, Prodigy) reduce over their local shards until the reductions are
    shard-aware, so only their state is compared.
    """
    net = model(1)
    opt = CHAINS[name](net.parameters())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled")  # one process, no group: by design
        target = {"model": get_model_state_dict(net), "optim": get_optimizer_state_dict(net, opt)}
        dcp.load(target, checkpoint_id=out / name)
        set_model_state_dict(net, target["model"])
        set_optimizer_state_dict(net, opt, target["optim"])
        loaded = get_optimizer_state_dict(net, opt)
    full = torch.load(out / f"{name}_optim_full.pt", weights_only=True)
    _assert_same_state(full["state"], loaded["state"], f"{name}: state")
    for saved, group in zip(full["param_groups"], loaded["param_groups"], strict=True):
        # torch's load_state_dict adds "differentiable: False" to a group that lacks it; every saved key matches
        assert saved == {k: group[k] for k in saved}, name
    if name not in ELEMENTWISE:
        return
    X, Y = data()
    train(net, opt, X, Y, STEPS)
    final = torch.load(out / f"{name}_final.pt", weights_only=True)
    for a, b in zip(final, net.parameters(), strict=True):
        torch.testing.assert_close(b.detach(), a, rtol=1e-5, atol=1e-6)


def _assert_same_state(a, b, where):
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), f"{where} differs"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


CHAIN_NAMES = (
    "adam", "clipnorm_adam", "muon", "split_muon_adam", "shampoo", "psgd_kron", "lbfgs_strong_wolfe", "fdm_adam",
    "soap", "sophia_refused",
)  # fmt: skip


@pytest.mark.parametrize(("mesh", "nproc"), [("1d", 2), ("hsdp", 4), ("partial", 2)])
def test_fsdp2_chains_match_the_unsharded_chain(mesh, nproc):
    """Every chain on fully_shard'ed parameters (a 1-D mesh, HSDP's (replicate, shard) mesh, and a model sharded
    only in part, where shards and plain tensors meet in one optimizer) equals the same
    chain on an unsharded copy after 5 steps: global norms, dot products and the line search's slopes are
    reduced over the mesh, FDM's directions are the unsharded ones, matrix modules gather each matrix on one
    owner rank (SOAP's whole step runs there).  Sophia, which cannot run on shards, is refused before anything
    changes."""
    out = torchrun(Path(__file__).with_name("_fsdp_chains_worker.py"), mesh, nproc=nproc, timeout=150)
    for name in CHAIN_NAMES if mesh != "partial" else [n for n in CHAIN_NAMES if n != "sophia_refused"]:
        assert out.count(f": {name} OK") == nproc, out[-3000:]


# modules that declare supports_sharding = False (each with its reason), refused before anything changes
REFUSED_ON_SHARDS = {
    "ExactNewton", "NewtonCG", "Sophia", "ForwardGradient", "WrapClosure",
    "WrapClosure-measured",
}  # fmt: skip


def test_every_registry_chain_runs_sharded_or_is_refused():
    """Every contract-registry chain, 3 closure steps on fully_shard'ed float64 parameters, equals the same chain
    unsharded (relative difference under 1e-6: float64 sums in another order), or is refused with a clear
    error before anything changes; the refused ones are exactly those that declare it."""
    from tests.modules.contract_registry import REGISTRY

    out = torchrun(Path(__file__).with_name("_fsdp_registry_worker.py"), nproc=2, timeout=150)
    for entry in REGISTRY:
        expected = "REFUSED" if entry.id in REFUSED_ON_SHARDS else "OK"
        for rank in (0, 1):
            assert f"rank {rank}: {entry.id} {expected}" in out, (entry.id, out[-3000:])


def test_fsdp2_nonfinite_or_differing_losses_are_rejected_alike_on_every_rank():
    """A NaN loss on one rank only: every rank rejects the step (Adam) or the trial point (LBFGS + StrongWolfe, which
    then equals an unsharded run with the same NaN evaluation); losses that differ between ranks raise on all."""
    out = torchrun(Path(__file__).with_name("_fsdp_faults_worker.py"), "nan", nproc=2, timeout=120)
    for name in ("nan_first_order", "nan_line_search", "differing"):
        assert out.count(f": {name} OK") == 2, out[-3000:]


def test_fsdp2_closure_error_on_one_rank_ends_every_rank():
    """Rank 1's closure raises inside a line search: rank 1 exits with its error, rank 0 fails in its next
    collective (gloo: connection closed) or is ended by torchrun; no rank hangs (torchrun's hard timeout)."""
    out = torchrun(
        Path(__file__).with_name("_fsdp_faults_worker.py"), "raise", nproc=2, timeout=120, expect_failure=True
    )
    assert "boom from rank 1's closure" in out, out[-3000:]
    assert "finished without an error" not in out, out[-3000:]


def test_fsdp2_two_nodes_match_the_unsharded_chain():
    """Two torchrun launches ("nodes", one process each) meeting at a c10d rendezvous on localhost: a first-order
    and a closure chain on the 2-rank mesh equal the same chains unsharded (as in the one-launch test)."""
    out = torchrun_nodes(Path(__file__).with_name("_fsdp_chains_worker.py"), "1d", "adam,lbfgs_strong_wolfe")
    for name in ("adam", "lbfgs_strong_wolfe"):
        assert out.count(f": {name} OK") == 2, out[-3000:]
