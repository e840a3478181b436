"""One process: every chain through ``accelerator.prepare`` equals the same loop without Accelerate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

import torchzero as tz
import torchzero_accelerate as tza

from ._common import (
    CHAINS,
    CLOSURE,
    PLAIN,
    accelerate_run,
    flat_params,
    make_data,
    make_model,
    reference_run,
    reset_accelerate,
)


def _batches(n_steps: int = 4, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = make_data(n_steps * size)
    return list(zip(x.split(size), y.split(size), strict=True))


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
@pytest.mark.parametrize("chain", list(CHAINS))
def test_chain_matches_loop_without_accelerate(chain, mixed_precision):
    batches = _batches()
    ref_model, ref_losses = reference_run(chain, batches, bf16=mixed_precision == "bf16")
    acc = Accelerator(cpu=True, mixed_precision=mixed_precision)
    model, opt, losses = accelerate_run(acc, chain, batches)

    assert not torch.equal(flat_params(model), flat_params(make_model())), "the run did not train"
    torch.testing.assert_close(flat_params(model), flat_params(ref_model), rtol=0, atol=0)
    # the loss tz.Modular.step returns is what the closure helper hands back, although
    # AcceleratedOptimizer.step returns None
    for got, want in zip(losses, ref_losses, strict=True):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_bf16_autocast_reaches_the_closure():
    """Under bf16 the forward passes of closure evaluations run in bfloat16 (so the parity above is not vacuous)."""
    acc = Accelerator(cpu=True, mixed_precision="bf16")
    model = make_model()
    opt = tz.Modular(model.parameters(), tz.m.SGD(), tz.m.LR(0.1))
    model, opt = acc.prepare(model, opt)
    x, y = make_data(8)
    dtypes = []
    handle = model[0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    tza.step(acc, opt, lambda: F.mse_loss(model(x), y))
    handle.remove()
    assert dtypes == [torch.bfloat16]
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("chain", PLAIN)
def test_gradient_accumulation_plain_chain_steps_once_per_window(chain):
    """Accumulation 2 over batches of 4 == one step per batch of 8: the chain sees the window's mean gradient."""
    x, y = make_data(24)

    ref = make_model()
    ref_probe = _Probe()
    ref_opt = tz.Modular(ref.parameters(), ref_probe, *CHAINS[chain][1]())
    for xb, yb in zip(x.split(8), y.split(8), strict=True):
        F.mse_loss(ref(xb), yb).backward()
        ref_opt.step()
        ref_opt.zero_grad()

    acc = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = make_model()
    probe = _Probe()
    opt = tz.Modular(model.parameters(), probe, *CHAINS[chain][1]())
    model, opt = acc.prepare(model, opt)
    changed = []
    for xb, yb in zip(x.split(4), y.split(4), strict=True):
        with acc.accumulate(model):
            acc.backward(F.mse_loss(model(xb), yb))
            before = flat_params(model)
            opt.step()
            opt.zero_grad()
            changed.append(not torch.equal(before, flat_params(model)))
    assert changed == [False, True] * 3, "the parameters must change once per window, on its last batch"
    assert len(probe.seen) == 3
    for got, want in zip(probe.seen, ref_probe.seen, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(flat_params(model), flat_params(ref), rtol=1e-5, atol=1e-6)


class _Probe(tz.Module):
    """Records the update it receives (placed first, that is the gradient the chain sees)."""

    def __init__(self) -> None:
        super().__init__({})
        self.seen: list[list[torch.Tensor]] = []

    def step(self, ctx) -> None:
        self.seen.append([u.clone() for u in ctx.update])


def _grad_scaler(init_scale: float) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1000)


def test_fp16_on_cpu_gives_no_grad_scaler():
    """What Accelerate 1.15 does with fp16 on CPU: no autocast and no GradScaler (the tests below inject one)."""
    acc = Accelerator(cpu=True, mixed_precision="fp16")
    assert acc.scaler is None
    assert not acc.native_amp


@pytest.mark.parametrize("chain", PLAIN)
def test_grad_scaler_plain_chain_sees_unscaled_grads(chain):
    """With Accelerate's fp16 path (``accelerator.scaler``, injected here because CPU has none) the grads a
    module sees are the true ones: same run as without a scaler."""
    batches = _batches()

    def run(scaler):
        reset_accelerate()
        acc = Accelerator(cpu=True)
        acc.scaler = scaler
        model = make_model()
        probe = _Probe()
        opt = tz.Modular(model.parameters(), probe, *CHAINS[chain][1]())
        model, opt = acc.prepare(model, opt)
        assert opt.scaler is scaler
        raw = []  # .grad between backward and step
        for x, y in batches:
            acc.backward(F.mse_loss(model(x), y))
            raw.append(next(model.parameters()).grad.clone())
            opt.step()
            opt.zero_grad()
        return model, probe.seen, raw

    ref_model, ref_seen, ref_raw = run(None)
    model, seen, raw = run(_grad_scaler(2.0**12))
    # the scaler was active: .grad held scaled values until step() unscaled them
    torch.testing.assert_close(raw[0], ref_raw[0] * 2.0**12, rtol=1e-6, atol=1e-7)
    assert len(seen) == len(ref_seen) == len(batches)
    for got, want in zip(seen, ref_seen, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(flat_params(model), flat_params(ref_model), rtol=1e-6, atol=1e-7)


def test_grad_scaler_overflow_skips_the_step_and_the_scheduler():
    acc = Accelerator(cpu=True)
    acc.scaler = _grad_scaler(2.0**12)
    model = make_model()
    opt = tz.Modular(model.parameters(), tz.m.Adam(), tz.m.LR(1e-2))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    model, opt, sched = acc.prepare(model, opt, sched)
    x, y = make_data(8)
    acc.backward(F.mse_loss(model(x), y))
    next(model.parameters()).grad[0, 0] = float("inf")
    before = flat_params(model)
    opt.step()
    sched.step()
    assert opt.step_was_skipped
    torch.testing.assert_close(flat_params(model), before, rtol=0, atol=0)
    key = opt.optimizer.modules[0].key  # Adam's per-parameter step counts did not advance
    assert all(s.get(key, {}).get("step", 0) == 0 for s in opt.optimizer.state.values())
    assert opt.param_groups[0]["lr"] == 1e-2


@pytest.mark.parametrize("chain", CLOSURE)
def test_grad_scaler_closure_chain_raises_before_anything_changes(chain):
    acc = Accelerator(cpu=True)
    acc.scaler = _grad_scaler(2.0**12)
    model = make_model()
    opt = tz.Modular(model.parameters(), *CHAINS[chain][1]())
    model, opt = acc.prepare(model, opt)
    x, y = make_data(8)
    before = flat_params(model)
    with pytest.raises(ValueError, match="GradScaler.*mixed_precision='bf16'"):
        tza.step(acc, opt, lambda: F.mse_loss(model(x), y))
    torch.testing.assert_close(flat_params(model), before, rtol=0, atol=0)
    assert all(not s for s in opt.state.values())


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="real fp16 autocast + GradScaler needs CUDA (Accelerate has no fp16 on CPU)"
)
def test_fp16_cuda_plain_chain_matches_torch_adam():
    acc = Accelerator(mixed_precision="fp16")
    model = make_model().cuda()
    ref = make_model().cuda()
    opt = tz.Modular(model.parameters(), tz.m.Adam(), tz.m.LR(1e-2))
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cuda")
    model, opt = acc.prepare(model, opt)
    assert acc.scaler is not None
    for x, y in _batches():
        x, y = x.cuda(), y.cuda()
        acc.backward(F.mse_loss(model(x), y))
        opt.step()
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.mse_loss(ref(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(ref_opt)
        scaler.update()
        ref_opt.zero_grad()
    torch.testing.assert_close(flat_params(model), flat_params(ref), rtol=1e-4, atol=1e-5)
