"""tz.m.WrapClosure: closure-based optimizers (torch.optim.LBFGS) with the chain's update in .grad."""

from __future__ import annotations

import pytest
import torch

import torchzero as tz

from .helpers import assert_same, closure_for, params_and_copy, rosenbrock, roundtrip

LBFGS_SETTINGS = [
    {"lr": 0.5, "max_iter": 4, "history_size": 5},
    {"lr": 1.0, "max_iter": 6, "line_search_fn": "strong_wolfe"},
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kw", LBFGS_SETTINGS, ids=["fixed-step", "strong-wolfe"])
def test_alone_equals_torch_lbfgs(kw, dtype):
    ps, qs = params_and_copy(dtype)
    opt = tz.Modular(ps, tz.m.WrapClosure(torch.optim.LBFGS, **kw))
    ref = torch.optim.LBFGS(qs, **kw)
    for t in range(4):
        evals_before = ref.state[qs[0]].get("func_evals", 0)
        loss = opt.step(closure_for(ps, opt))
        ref_loss = ref.step(closure_for(qs, ref))
        torch.testing.assert_close(loss, ref_loss.detach())
        assert_same(ps, qs, msg=lambda m, t=t: f"step {t}: {m}")
        # the Modular's first evaluation is LBFGS's first: no extra closure call
        assert opt.last_info["closure_calls"] == ref.state[qs[0]]["func_evals"] - evals_before
    assert opt.state[ps[0]]["0"]["n_iter"] == ref.state[qs[0]]["n_iter"]


def test_every_closure_evaluation_passes_through_the_modules_before_it():
    ps, qs = params_and_copy(torch.float64)
    opt = tz.Modular(ps, tz.m.ClipNorm(1.0), tz.m.WrapClosure(torch.optim.LBFGS, lr=0.5, max_iter=5))
    ref = torch.optim.LBFGS(qs, lr=0.5, max_iter=5)
    for t in range(4):
        opt.step(closure_for(ps, opt))
        ref.step(closure_for(qs, ref, clip=1.0))
        assert_same(ps, qs, msg=lambda m, t=t: f"step {t}: {m}")
        assert opt.last_info["closure_calls"] > 1  # LBFGS re-evaluated, each time through ClipNorm


def test_not_last_measures_and_undoes_and_accepts_a_backward_argument_closure():
    ps, qs = params_and_copy(torch.float64)
    opt = tz.Modular(ps, tz.m.WrapClosure(torch.optim.LBFGS, lr=1.0, max_iter=3), tz.m.LR(0.5))
    ref = torch.optim.LBFGS(qs, lr=1.0, max_iter=3)

    def closure(backward=True):
        loss = rosenbrock(ps)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for t in range(4):
        opt.step(closure)
        before = [q.detach().clone() for q in qs]
        ref.step(closure_for(qs, ref))
        with torch.no_grad():
            for q, b in zip(qs, before, strict=True):
                q.copy_(b + 0.5 * (q - b))  # LR(0.5) halves the measured step
        assert_same(ps, qs, msg=lambda m, t=t: f"step {t}: {m}")


def test_without_closure_fails_before_anything_changes():
    ps, _ = params_and_copy()
    opt = tz.Modular(ps, tz.m.WrapClosure(torch.optim.LBFGS))
    for p in ps:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in ps]
    with pytest.raises(RuntimeError, match="needs a closure|step\\(\\) needs a closure|must re-evaluate"):
        opt.step()
    assert_same(ps, before)
    assert len(opt.state) == 0


def test_state_dict_round_trip_mid_run():
    ps, qs = params_and_copy(torch.float64)
    kw = {"lr": 0.5, "max_iter": 3, "history_size": 4}
    opt = tz.Modular(ps, tz.m.WrapClosure(torch.optim.LBFGS, **kw))
    ref = torch.optim.LBFGS(qs, **kw)
    for _ in range(3):
        opt.step(closure_for(ps, opt))
        ref.step(closure_for(qs, ref))
    sd = roundtrip(opt.state_dict())
    fresh = [p.detach().clone().requires_grad_() for p in ps]
    opt2 = tz.Modular(fresh, tz.m.WrapClosure(torch.optim.LBFGS, **kw))
    opt2.load_state_dict(sd)
    for t in range(3):
        opt2.step(closure_for(fresh, opt2))
        ref.step(closure_for(qs, ref))
        assert_same(fresh, qs, msg=lambda m, t=t: f"step {t} after reload: {m}")


def test_after_a_gradient_approximation_each_evaluation_reruns_it():
    # FDM builds the update from scratch with the closure; LBFGS on its central differences tracks
    # LBFGS on exact gradients closely (the first loss is the same, later ones agree to FD accuracy)
    ps, qs = params_and_copy(torch.float64)
    opt = tz.Modular(ps, tz.m.FDM(), tz.m.WrapClosure(torch.optim.LBFGS, lr=1.0, max_iter=3))
    ref = torch.optim.LBFGS(qs, lr=1.0, max_iter=3)

    def closure(backward=True):
        loss = rosenbrock(ps)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(3):
        loss = opt.step(closure)
        ref_loss = ref.step(closure_for(qs, ref))
        torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-3, atol=1e-3)
        assert opt.last_info["closure_calls"] > 2 * sum(p.numel() for p in ps)  # FDM ran more than once
    assert_same(ps, qs, rtol=1e-3, atol=1e-3)


class _LoaderDied(Exception):
    pass


@pytest.mark.parametrize("last", [True, False])
def test_closure_error_at_a_trial_point_restores_the_start(last):
    """torch.optim.LBFGS moves the parameters before each evaluation: an error there leaves them at x0, bit for bit."""
    ps, _ = params_and_copy(torch.float64)
    chain = [tz.m.WrapClosure(torch.optim.LBFGS, max_iter=5)] + ([] if last else [tz.m.LR(0.5)])
    opt = tz.Modular(ps, *chain)
    calls = [0]

    def closure(backward=True):
        calls[0] += 1
        if calls[0] > 1:
            raise _LoaderDied("data loader died")
        loss = rosenbrock(ps)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    before = [p.detach().clone() for p in ps]
    with pytest.raises(_LoaderDied):
        opt.step(closure)
    assert calls[0] == 2
    assert_same(ps, before, rtol=0, atol=0)
