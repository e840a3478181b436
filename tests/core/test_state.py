"""state and state_dict: torch's format, weights_only loading, bit-for-bit resume, clear mismatch errors."""

import copy
import pickle

import pytest
import torch

import torchzero as tz

from .helpers import Scale, clone_params, make_params, roundtrip, set_grads


def _chain():
    return [
        tz.m.SGD(momentum=0.9),
        Scale(0.5),
        tz.m.Adam(amsgrad=True),
        tz.m.LR(1e-2, scheduler_cls=lambda o: torch.optim.lr_scheduler.StepLR(o, 3, gamma=0.5)),
    ]


def _groups(params):
    return [{"params": params[:2], "lr": 0.1, "eps": 1e-6}, {"params": params[2:], "momentum": 0.5}]


@pytest.mark.parametrize("k", [1, 5])
def test_resume_equals_uninterrupted_bit_for_bit(k):
    dtypes = (torch.float32, torch.float64, torch.complex64)
    a, b = make_params(dtypes), make_params(dtypes)
    straight = tz.Modular(_groups(a), *_chain())
    first = tz.Modular(_groups(b), *_chain())
    for i in range(k):
        set_grads(i, a, b)
        straight.step()
        first.step()
    saved = roundtrip({"opt": first.state_dict(), "params": [p.detach().clone() for p in b]})

    c = make_params(dtypes, seed=123)  # a fresh "process": different initial values, then restored
    with torch.no_grad():
        for p, s in zip(c, saved["params"], strict=True):
            p.copy_(s)
    resumed = tz.Modular(_groups(c), *_chain())
    resumed.load_state_dict(saved["opt"])
    for i in range(k, 2 * k + 3):
        set_grads(i, a, c)
        straight.step()
        resumed.step()
    for p, q in zip(a, c, strict=True):
        assert torch.equal(p, q)
    assert resumed.param_groups[0]["lr"] == straight.param_groups[0]["lr"]


def test_state_is_torch_format_and_namespaced():
    params = make_params()
    opt = tz.Modular(params, tz.m.SGD(momentum=0.9), tz.m.Adam(), tz.m.LR())
    set_grads(0, params)
    opt.step()
    st = opt.state[params[0]]
    assert set(st) == {"0", "1"}
    assert set(st["0"]) == {"momentum_buffer"} and set(st["1"]) == {"exp_avg", "exp_avg_sq", "step"}
    sd = opt.state_dict()
    assert set(sd["state"]) == {0, 1}
    assert all(isinstance(k, int) for k in sd["state"])
    assert sd["param_groups"][0]["params"] == [0, 1]
    assert sd["torchzero"]["modules"]["1"] == {}
    assert sd["state"][0]["1"]["step"] == 1  # step counts are per parameter, like torch


def test_load_fills_existing_optimizer_and_casts_like_torch():
    params = make_params((torch.float32,))
    opt = tz.Modular(params, tz.m.Adam(), tz.m.LR())
    set_grads(0, params)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    for s in sd["state"].values():
        for k, v in s["0"].items():
            if isinstance(v, torch.Tensor):
                s["0"][k] = v.double()
    ids = [id(p) for p in opt.param_groups[0]["params"]]
    opt.load_state_dict(sd)
    assert [id(p) for p in opt.param_groups[0]["params"]] == ids
    assert opt.state[params[0]]["0"]["exp_avg"].dtype == torch.float32


def test_different_chain_is_a_clear_error():
    params = make_params()
    saved = tz.Modular(params, tz.m.Adam(), tz.m.LR()).state_dict()
    with pytest.raises(ValueError, match="different chain"):
        tz.Modular(clone_params(params), tz.m.SGD(), tz.m.LR()).load_state_dict(saved)


def test_different_layout_is_a_clear_error():
    params = make_params()
    saved = tz.Modular(params, tz.m.Adam(), tz.m.LR()).state_dict()
    with pytest.raises(ValueError, match="parameter layout"):
        tz.Modular(params[:1], tz.m.Adam(), tz.m.LR()).load_state_dict(saved)


def test_foreign_state_dict_is_a_clear_error():
    params = make_params()
    saved = torch.optim.Adam(params).state_dict()
    with pytest.raises(ValueError, match="not saved by tz.Modular"):
        tz.Modular(params, tz.m.Adam(), tz.m.LR()).load_state_dict(saved)


def test_counters_coming_back_as_tensors_are_restored():
    # Accelerate's device placement may turn numbers into tensors
    params = make_params()
    opt = tz.Modular(params, tz.m.Adam(), tz.m.LR())
    set_grads(0, params)
    opt.step()
    sd = opt.state_dict()
    opt.modules[0].global_state["count"] = 1
    sd = opt.state_dict()
    sd["torchzero"]["modules"]["0"]["count"] = torch.tensor(1.0)
    opt.load_state_dict(sd)
    assert opt.modules[0].global_state["count"] == 1 and isinstance(opt.modules[0].global_state["count"], int)


def test_deepcopy_and_pickle_of_optimizer():
    """A deep copy and a pickle round trip own their tensors and continue exactly like the original."""
    params = make_params()
    opt = tz.Modular(params, tz.m.Adam(), tz.m.LR())
    set_grads(0, params)
    opt.step()
    copies = [copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))]
    runs = [opt, *copies]
    for clone in copies:
        mine = clone.param_groups[0]["params"]
        assert [clone.state[p]["0"]["step"] for p in mine] == [1, 1]
        assert not {t.data_ptr() for p in mine for t in (p, *clone.state[p]["0"].values()) if torch.is_tensor(t)} & {
            t.data_ptr() for p in params for t in (p, *opt.state[p]["0"].values()) if torch.is_tensor(t)
        }, "the copy shares tensors with the original"
    for t in range(1, 4):
        for run in runs:
            set_grads(t, run.param_groups[0]["params"])
            run.step()
    for clone in copies:
        for a, b in zip(clone.param_groups[0]["params"], params, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fresh_round_trip_then_swapped_params_saves_like_torch():
    """Accelerate's FSDP2 prepare round-trips a fresh optimizer's state dict (device placement), then puts new
    tensors in the groups.  The empty per-parameter entries state_dict writes for DCP must not come back as
    state keyed to the old tensors: torch's state_dict would meet keys in no group.  Reference: the same chain
    never round-tripped, stepped on the new tensors (bit for bit)."""
    old, new, ref = make_params(), make_params(seed=1), make_params(seed=1)
    opt = tz.Modular(old, tz.m.NAdam(), tz.m.LR(1e-2))
    plain = tz.Modular(ref, tz.m.NAdam(), tz.m.LR(1e-2))
    opt.load_state_dict(opt.state_dict())
    assert not any(p in opt.state for p in old)
    opt.param_groups[0]["params"] = new
    for i in range(2):
        set_grads(i, new, ref)
        opt.step()
        plain.step()
    sd, want = opt.state_dict(), plain.state_dict()
    assert sd["state"].keys() == want["state"].keys()
    for p, q in zip(new, ref, strict=True):
        assert torch.equal(p, q)


def test_parameters_joining_mid_run_count_their_own_steps_like_torch():
    """A parameter whose first gradient comes at step 3, and one whose state was deleted in between, start their
    step counts (and Adam's bias correction) at 1 while the others go on, as in ``torch.optim.Adam``.  The
    state entries are read once per step and shared by the state, step-count and commit loops: this checks they
    see entries made and dropped between steps.  Same kernels on both sides up to rounding: rtol 1e-6."""
    torch.manual_seed(0)
    ours = [torch.randn(3, requires_grad=True) for _ in range(4)]
    ref = [p.detach().clone().requires_grad_() for p in ours]
    opt = tz.Modular(ours, tz.m.Adam(), tz.m.LR(0.1))
    torch_opt = torch.optim.Adam(ref, lr=0.1, foreach=False)
    for step in range(6):
        for i, (p, q) in enumerate(zip(ours, ref, strict=True)):
            if i == 3 and step < 2:
                p.grad = q.grad = None
            else:
                g = torch.randn(3)
                p.grad, q.grad = g.clone(), g.clone()
        if step == 4:  # a host drops one parameter's state: it starts over in both
            del opt.state[ours[1]]
            del torch_opt.state[ref[1]]
        opt.step()
        torch_opt.step()
        for p, q in zip(ours, ref, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert [opt.state[p][opt.modules[0].key]["step"] for p in ours] == [6, 2, 6, 4]
