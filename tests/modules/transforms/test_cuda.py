"""Transforms on CUDA: same results as on CPU and no host sync on the step path (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

import torchzero as tz

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)"),
]

CHAINS = [
    lambda: [tz.m.ClipNorm(1.0), tz.m.Adam(), tz.m.Cautious(normalize=True), tz.m.LR(1e-2), tz.m.WeightDecay(1e-3)],
    lambda: [tz.m.Normalize(), tz.m.EMA(0.9, debiased=True), tz.m.LR(1e-2), tz.m.WeightDecay(1e-2, scale_by_lr=True)],
    lambda: [tz.m.ClipNorm(1.0, per_tensor=True), tz.m.ClipValue(0.1), tz.m.Centralize(), tz.m.Sign(), tz.m.LR(1e-2)],
    lambda: [tz.m.Adam(), tz.m.Lerp(tz.m.Grad(), 0.1), tz.m.WeightDecay(), tz.m.LR(1e-2)],
]


@pytest.mark.parametrize("chain", CHAINS)
def test_cuda_equals_cpu_and_never_syncs(chain):
    cpu = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in ((8, 4), (5,), (3, 3, 2))]
    gpu = [p.detach().cuda().requires_grad_() for p in cpu]
    opt_cpu, opt_gpu = tz.Modular(cpu, *chain()), tz.Modular(gpu, *chain())
    for t in range(4):
        grads = [torch.randn_like(p) for p in cpu]
        for p, q, g in zip(cpu, gpu, grads, strict=True):
            p.grad, q.grad = g.clone(), g.cuda()
        opt_cpu.step()
        if t > 0:
            torch.cuda.set_sync_debug_mode("error")
        try:
            opt_gpu.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for p, q in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(q.detach().cpu(), p.detach())
