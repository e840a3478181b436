"""Closure chains with ``TorchzeroMixin``: the same parameters, losses and closure calls as a plain loop that
steps the chain with a ``closure(backward)``; loss-only evaluations run ``training_step`` under ``no_grad``
and nothing else; ``on_before_optimizer_step`` runs once per step and the logged loss is the step's."""

from __future__ import annotations

import pytest
import torch

import torchzero as tz

from ._common import (
    ManualClosureModel,
    Model,
    TzModel,
    assert_params_close,
    batches,
    fit,
    loss_fn,
    make_net,
    params,
    reference_closure_run,
)

STEPS = 4

CHAINS = {
    "lbfgs_strongwolfe": lambda p: tz.Modular(p, tz.m.LBFGS(), tz.m.StrongWolfe()),
    # trials are loss-only: the first evaluation has backward, the re-evaluations do not
    "lbfgs_backtracking": lambda p: tz.Modular(p, tz.m.LBFGS(), tz.m.Backtracking()),
    "randomized_fdm_adam": lambda p: tz.Modular(p, tz.m.RandomizedFDM(n_samples=2, seed=3), tz.m.Adam(), tz.m.LR(0.05)),
    "sam_adam": lambda p: tz.Modular(p, tz.m.SAM(rho=0.05), tz.m.Adam(), tz.m.LR(0.05)),
}


def _check_against_reference(model, make_opt, clip=None, autocast=None, exact=True):
    ref_params, ref_counts, ref_losses = reference_closure_run(make_opt, STEPS, clip=clip, autocast=autocast)
    backward, loss_only = ref_counts.get("backward", 0), ref_counts.get("loss_only", 0)
    c = model.counts
    assert c["training_step_grad"] == backward
    assert c["training_step_nograd"] == loss_only
    # backward hooks and clipping run for backward evaluations only; loss-only ones run nothing but training_step
    assert c["on_before_backward"] == c["on_after_backward"] == c["clip"] == backward
    assert c["on_before_optimizer_step"] == STEPS
    assert model.logged == pytest.approx(ref_losses), (
        "the logged loss should be the loss before each step, once per step"
    )
    assert model.step_losses == pytest.approx(ref_losses)
    tol = {} if exact else {"atol": 1e-5, "rtol": 1e-4}
    assert_params_close(params(model.net), ref_params, **tol)
    return ref_counts


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_closure_chain_matches_plain_loop(name):
    make_opt = CHAINS[name]
    clip = 0.5 if name == "sam_adam" else None
    model = TzModel(make_opt)
    fit(model, STEPS, gradient_clip_val=clip)
    counts = _check_against_reference(model, make_opt, clip=clip)
    assert counts["closure_calls"] == sum(counts.get(k, 0) for k in ("backward", "loss_only"))
    if name == "randomized_fdm_adam":  # gradient-free: no backward at all, 2 samples x central differences
        assert counts.get("backward", 0) == 0 and counts["loss_only"] == STEPS * 5
    elif name == "sam_adam":  # the gradient at x, then at the perturbed point
        assert counts["backward"] == 2 * STEPS and counts.get("loss_only", 0) == 0
    elif name == "lbfgs_backtracking":
        assert counts["backward"] == STEPS and counts["loss_only"] >= STEPS
    else:
        assert counts["backward"] > STEPS


def test_lbfgs_bf16_mixed():
    make_opt = CHAINS["lbfgs_strongwolfe"]
    model = TzModel(make_opt)
    fit(model, STEPS, precision="bf16-mixed")
    _check_against_reference(model, make_opt, autocast=torch.bfloat16)


def test_without_mixin_a_closure_chain_pays_a_backward_per_loss_evaluation():
    """What the mixin is for: Lightning's closure takes no arguments, so the core runs it in full for a
    loss-only evaluation (backward, hooks and all), and the logs see every trial point."""
    make_opt = CHAINS["randomized_fdm_adam"]
    model = Model(make_opt)
    fit(model, 2)
    assert model.counts["training_step_nograd"] == 0
    assert model.counts["on_after_backward"] == model.counts["training_step_grad"] == 2 * 5
    assert len(model.logged) == 2 * 5


def test_manual_optimization_with_closure():
    make_opt = CHAINS["lbfgs_strongwolfe"]
    model = ManualClosureModel(make_opt, manual=True)
    trainer = fit(model, STEPS)
    ref_params, ref_counts, ref_losses = reference_closure_run(make_opt, STEPS)
    assert trainer.global_step == STEPS
    assert model.step_losses == pytest.approx(ref_losses)
    assert model.counts["on_before_optimizer_step"] == STEPS
    # training_step itself + one manual_backward per backward evaluation
    assert model.counts["on_after_backward"] == ref_counts["backward"]
    assert_params_close(params(model.net), ref_params)


def _reference_accumulating_run(make_opt, windows):
    """Plain PyTorch: a closure that zeroes .grad and backpropagates loss_i / N for each micro-batch of the window
    (N = accumulate_grad_batches, as Lightning divides), returning the sum of the divided losses."""
    net = make_net()
    opt = make_opt(net.parameters())
    losses = []
    for window in windows:

        def closure(backward=True, window=window):
            total = None
            if backward:
                opt.zero_grad()
            with torch.set_grad_enabled(backward):
                for batch in window:
                    loss = loss_fn(net, batch) / 2
                    if backward:
                        loss.backward()
                    total = loss.detach() if total is None else total + loss.detach()
            return total

        losses.append(float(opt.step(closure)))
    return params(net), losses


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_closure_chain_accumulates_grad_batches_like_a_plain_loop(name):
    """accumulate_grad_batches=2: each step sees the loss and gradient of its window of two micro-batches, and
    re-evaluates both; bit for bit what a plain loop doing the same gives (the same operations in the same order).
    """
    make_opt = CHAINS[name]
    model = TzModel(make_opt)
    fit(model, STEPS, accumulate_grad_batches=2)
    micro = batches(2 * STEPS)
    ref_params, _ = _reference_accumulating_run(make_opt, [micro[i : i + 2] for i in range(0, len(micro), 2)])
    assert model.counts["on_before_optimizer_step"] == STEPS
    assert_params_close(params(model.net), ref_params, rtol=0, atol=0)
