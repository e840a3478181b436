"""Split: Muon on the matrices and Adam on the rest equals torch.optim.Muon plus torch.optim.Adam."""

from __future__ import annotations

import copy

import pytest
import torch

import torchzero as tz


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()


def _batches(n: int):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randn(16, 3, generator=g, dtype=torch.float64)) for _ in range(n)]  # fmt: skip


def _loss(model, x, y):
    return ((model(x) - y) ** 2).mean()


def _torch_pair(model, lr):
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return [torch.optim.Muon(matrices, lr=lr, weight_decay=0.0), torch.optim.Adam(rest, lr=lr)]


def _split_chain(model, lr, filter=lambda p: p.ndim >= 2):
    return tz.Modular(model.parameters(), tz.m.Split(filter, true=[tz.m.Muon()], false=[tz.m.Adam()]), tz.m.LR(lr))


def _train(model, opts, batches, scheds=()):
    for x, y in batches:
        for o in opts:
            o.zero_grad()
        _loss(model, x, y).backward()
        for o in opts:
            o.step()
        for s in scheds:
            s.step()


def _close(a, b):
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("how", ["predicate", "params", "group_key"])
def test_muon_on_matrices_adam_on_the_rest_equals_torch(how):
    batches = _batches(6)
    ref, ours = _model(), _model()
    _train(ref, _torch_pair(ref, 0.02), batches)
    if how == "predicate":
        opt = _split_chain(ours, 0.02)
    elif how == "params":
        opt = _split_chain(ours, 0.02, [p for p in ours.parameters() if p.ndim >= 2])
    else:
        groups = [
            {"params": [p for p in ours.parameters() if p.ndim >= 2], "hidden": True},
            {"params": [p for p in ours.parameters() if p.ndim < 2]},
        ]
        opt = tz.Modular(groups, tz.m.Split("hidden", true=[tz.m.Muon()], false=[tz.m.Adam()]), tz.m.LR(0.02))
    _train(ours, [opt], batches)
    _close(ours, ref)
    # one state namespace per branch: Muon's buffer on the matrices only, Adam's moments on the rest only
    for p in ours.parameters():
        keys = {k for k, v in opt.state[p].items() if v}
        assert len(keys) == 1, keys
        assert ("momentum_buffer" in opt.state[p][keys.pop()]) == (p.ndim >= 2)


def test_state_dict_round_trip_mid_run_resumes_exactly():
    batches = _batches(6)
    a, b = _model(), _model()
    opt_a = _split_chain(a, 0.02)
    _train(a, [opt_a], batches[:3])
    b.load_state_dict(a.state_dict())
    opt_b = _split_chain(b, 0.02)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    _train(a, [opt_a], batches[3:])
    _train(b, [opt_b], batches[3:])
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_scheduler_on_the_shared_lr_reaches_both_branches():
    batches = _batches(6)
    ref, ours = _model(), _model()
    ref_opts = _torch_pair(ref, 0.05)
    _train(ref, ref_opts, batches, [torch.optim.lr_scheduler.StepLR(o, 2, gamma=0.5) for o in ref_opts])
    opt = _split_chain(ours, 0.05)
    _train(ours, [opt], batches, [torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5)])
    _close(ours, ref)


def test_whole_vector_modules_are_refused_inside_a_branch():
    with pytest.raises(TypeError, match="cannot run inside a Split branch"):
        tz.m.Split(lambda p: True, true=[tz.m.LBFGS()])
    with pytest.raises(TypeError, match="cannot run inside a Split branch"):
        tz.m.Split(lambda p: True, true=[tz.m.ClipNorm(1.0)])


def test_an_empty_branch_passes_its_parameters_through():
    """false=[] leaves the update of those parameters as it is: plain SGD there."""
    batches = _batches(3)
    ref, ours = _model(), _model()
    matrices = [p for p in ref.parameters() if p.ndim >= 2]
    rest = [p for p in ref.parameters() if p.ndim < 2]
    _train(ref, [torch.optim.Adam(matrices, lr=0.01), torch.optim.SGD(rest, lr=0.01)], batches)
    opt = tz.Modular(ours.parameters(), tz.m.Split(lambda p: p.ndim >= 2, true=[tz.m.Adam()]), tz.m.LR(0.01))
    _train(ours, [opt], batches)
    _close(ours, ref)
