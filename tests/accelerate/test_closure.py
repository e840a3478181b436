"""``AcceleratedClosure``: the closure protocol on top of ``accelerator.backward``, and its errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedType

import torchzero as tz
import torchzero_accelerate as tza

from ._common import CHAINS, CLOSURE, flat_params, make_data, make_model


def _prepared(**kwargs):
    acc = Accelerator(cpu=True, **kwargs)
    model = make_model()
    opt = tz.Modular(model.parameters(), tz.m.SGD(), tz.m.LR(0.1))
    model, opt = acc.prepare(model, opt)
    return acc, model, opt


def test_backward_call_zeroes_grads_and_backpropagates_through_accelerator():
    acc, model, opt = _prepared()
    x, y = make_data(8)
    calls = []
    backward = acc.backward
    acc.backward = lambda loss, **kw: (calls.append(loss.detach()), backward(loss, **kw))
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)  # stale gradients must not be added to

    closure = tza.AcceleratedClosure(acc, opt, lambda: F.mse_loss(model(x), y))
    loss = closure(True)

    want_loss = F.mse_loss(model(x), y)
    want_grads = torch.autograd.grad(want_loss, list(model.parameters()))
    torch.testing.assert_close(loss, want_loss.detach(), rtol=0, atol=0)
    assert len(calls) == 1 and not loss.requires_grad
    for p, g in zip(model.parameters(), want_grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)
    assert closure.loss is closure.last_loss is loss and closure.calls == 1


def test_loss_only_call_builds_no_graph_and_keeps_grads():
    acc, model, opt = _prepared()
    x, y = make_data(8)
    modes = []

    def loss_fn():
        modes.append(torch.is_grad_enabled())
        return F.mse_loss(model(x), y)

    closure = tza.AcceleratedClosure(acc, opt, loss_fn)
    first = closure(True)
    grads = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    with torch.enable_grad():  # the closure must switch grad mode off itself
        second = closure(False)
    assert modes == [True, False]
    assert not second.requires_grad and second.grad_fn is None
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)
    torch.testing.assert_close(second, F.mse_loss(model(x), y).detach(), rtol=0, atol=0)
    # loss: the first value of the step; last_loss: the latest
    assert closure.loss is first and closure.last_loss is second and closure.calls == 2
    closure.reset()
    assert closure.loss is None and closure.last_loss is None and closure.calls == 0


def test_step_returns_the_loss_that_modular_step_returns():
    acc, model, opt = _prepared()
    x, y = make_data(8)
    ref = make_model()
    ref_opt = tz.Modular(ref.parameters(), tz.m.SGD(), tz.m.LR(0.1))
    for _ in range(3):

        def closure(backward=True):
            loss = F.mse_loss(ref(x), y)
            if backward:
                ref_opt.zero_grad()
                loss.backward()
            return loss

        want = ref_opt.step(closure)
        got = tza.step(acc, opt, lambda: F.mse_loss(model(x), y))
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_accelerated_optimizer_step_returns_none():
    """The fact the helper exists for: AcceleratedOptimizer.step swallows the loss."""
    acc, model, opt = _prepared()
    x, y = make_data(8)
    closure = tza.AcceleratedClosure(acc, opt, lambda: F.mse_loss(model(x), y))
    assert opt.step(closure) is None
    assert closure.loss is not None and opt.optimizer.last_info["closure_calls"] == 1


def test_gradient_accumulation_is_rejected_before_anything_changes():
    acc, model, opt = _prepared(gradient_accumulation_steps=2)
    x, y = make_data(8)
    before = flat_params(model)
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps=2.*gradient_accumulation_steps=1"):
        tza.step(acc, opt, lambda: F.mse_loss(model(x), y))
    torch.testing.assert_close(flat_params(model), before, rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kind", [DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM])
def test_sharded_or_engine_setups_are_rejected(kind):
    fake = SimpleNamespace(gradient_accumulation_steps=1, scaler=None, distributed_type=kind, num_processes=2)
    with pytest.raises(ValueError, match=f"distributed_type={kind.name}"):
        tza.check_closure_support(fake)


class DTensor(torch.Tensor):
    """Stands in for torch.distributed.tensor.DTensor: torchzero recognises a DTensor by its type's name, so the
    adapter's check needs no process group (the real FSDP2 runs are in tests/core/test_fsdp.py)."""


def test_fsdp2_closures_are_allowed_fsdp1_refused():
    """FSDP with DTensor parameters (FSDP2) reduces over the mesh, so closure chains run; FSDP1's flat shards
    (plain tensors) are still refused, with a hint to use FSDP2."""
    fake = SimpleNamespace(gradient_accumulation_steps=1, scaler=None, distributed_type=DistributedType.FSDP)
    sharded = tz.Modular([torch.zeros(3).as_subclass(DTensor).requires_grad_()], tz.m.LBFGS(), tz.m.StrongWolfe())
    tza.check_closure_support(fake, sharded)
    flat = tz.Modular([torch.zeros(3, requires_grad=True)], tz.m.LBFGS(), tz.m.StrongWolfe())
    with pytest.raises(ValueError, match=r"distributed_type=FSDP.*fsdp_version=2"):
        tza.check_closure_support(fake, flat)


def test_bad_arguments_say_what_to_pass():
    acc, model, opt = _prepared()
    x, y = make_data(8)
    with pytest.raises(TypeError, match="loss_fn must be a callable"):
        tza.AcceleratedClosure(acc, opt, F.mse_loss(model(x), y))
    with pytest.raises(TypeError, match="optimizer must be the optimizer returned by accelerator.prepare"):
        tza.AcceleratedClosure(acc, model, lambda: F.mse_loss(model(x), y))
    before = flat_params(model)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with pytest.raises(TypeError, match=r"shape \(8, 1\).*scalar"):
        tza.step(acc, opt, lambda: (model(x) - y) ** 2)
    torch.testing.assert_close(flat_params(model), before, rtol=0, atol=0)
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())


# ------------------------------------------------------------------------------------------ accumulation
def _plain_accumulating_run(chain, windows):
    """The reference: plain PyTorch, a closure that zeroes .grad and backpropagates loss_i / N per micro-batch."""
    model = make_model()
    opt = tz.Modular(model.parameters(), *CHAINS[chain][1]())
    losses = []
    for window in windows:

        def closure(backward=True, window=window):
            total = None
            if backward:
                opt.zero_grad()
            with torch.set_grad_enabled(backward):
                for xb, yb in window:
                    loss = F.mse_loss(model(xb), yb)
                    if backward:
                        (loss / len(window)).backward()
                    total = loss.detach() if total is None else total + loss.detach()
            return total / len(window)

        losses.append(opt.step(closure))
    return model, losses


@pytest.mark.parametrize("chain", CLOSURE)
def test_closure_chain_accumulates_the_micro_batches_of_each_step(chain):
    """gradient_accumulation_steps=2: tza.step keeps the window's micro-batches and the closure evaluates them
    all; equal (bit for bit: the same operations in the same order) to a plain loop whose closure does that."""
    x, y = make_data(24)
    micro = list(zip(x.split(4), y.split(4), strict=True))
    windows = [micro[i : i + 2] for i in range(0, len(micro), 2)]
    ref, ref_losses = _plain_accumulating_run(chain, windows)

    acc = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = make_model()
    model, opt = acc.prepare(model, tz.Modular(model.parameters(), *CHAINS[chain][1]()))
    losses, changed = [], []
    for xb, yb in micro:
        with acc.accumulate(model):
            before = flat_params(model)
            grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
            loss = tza.step(acc, opt, lambda a, b: F.mse_loss(model(a), b), xb, yb)
            changed.append(not torch.equal(before, flat_params(model)))
            if loss is None:  # a micro-batch that is only kept: nothing computed, .grad untouched
                for p, g in zip(model.parameters(), grads, strict=True):
                    assert (p.grad is None and g is None) or torch.equal(p.grad, g)
            else:
                losses.append(loss)
    assert changed == [False, True] * 3, "the parameters must change once per window, on its last micro-batch"
    assert len(losses) == len(ref_losses) == 3
    for got, want in zip(losses, ref_losses, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(flat_params(model), flat_params(ref), rtol=0, atol=0)


def test_accumulating_closure_takes_micro_batches_as_argument_tuples():
    acc, model, opt = _prepared(gradient_accumulation_steps=2)
    x, y = make_data(8)
    with pytest.raises(TypeError, match="micro_batches must be a list of argument tuples"):
        tza.AcceleratedClosure(acc, opt, lambda a, b: F.mse_loss(model(a), b), micro_batches=[x, y])
    closure = tza.AcceleratedClosure(acc, opt, lambda a, b: F.mse_loss(model(a), b), micro_batches=[(x, y)])
    # one micro-batch of a window of 2 (the end of a dataloader): its gradient is divided by 2, as Accelerate does
    loss = closure(True)
    want = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(want / 2, list(model.parameters()))
    torch.testing.assert_close(loss, want.detach() / 2, rtol=0, atol=0)
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)


def test_a_different_loss_function_within_one_step_is_refused():
    acc, model, opt = _prepared(gradient_accumulation_steps=2)
    x, y = make_data(8)
    with acc.accumulate(model):
        assert tza.step(acc, opt, lambda a, b: F.mse_loss(model(a), b), x, y) is None
    before = flat_params(model)
    with acc.accumulate(model), pytest.raises(ValueError, match="another loss function"):
        tza.step(acc, opt, lambda a, b: F.l1_loss(model(a), b), x, y)
    torch.testing.assert_close(flat_params(model), before, rtol=0, atol=0)
