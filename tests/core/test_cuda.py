"""CUDA checks: parameters spread over CPU and CUDA, the fused path on CUDA, and no host sync there."""

import pytest
import torch

import torchzero as tz

from .helpers import clone_params

pytestmark = pytest.mark.cuda


def _cpu_and_cuda():
    g = torch.Generator().manual_seed(0)
    cpu = [
        torch.randn(5, 3, generator=g).requires_grad_(),
        torch.randn(4, generator=g, dtype=torch.float64).requires_grad_(),
    ]
    gpu = [
        torch.randn(6, generator=g).cuda().requires_grad_(),
        torch.randn(3, 3, generator=g).cuda().to(torch.bfloat16).requires_grad_(),
    ]
    return cpu + gpu


@pytest.mark.parametrize("fused", [None, False])
def test_cpu_and_cuda_params_in_one_optimizer_match_torch(fused):
    params = _cpu_and_cuda()
    ref = clone_params(params)
    opt = tz.Modular(
        [{"params": params[:3], "lr": 1e-2}, {"params": params[3:]}], tz.m.Adam(fused=fused), tz.m.LR(1e-3)
    )
    refs = [torch.optim.Adam([q], lr=1e-2 if i < 3 else 1e-3) for i, q in enumerate(ref)]
    for i in range(10):
        g = torch.Generator().manual_seed(i)
        for p, q in zip(params, ref, strict=True):
            gr = torch.randn(p.shape, generator=g).to(p.device, p.dtype)
            p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        for r in refs:
            r.step()
    for p, q in zip(params, ref, strict=True):
        tol = {"atol": 1e-2, "rtol": 1e-2} if p.dtype == torch.bfloat16 else {}
        torch.testing.assert_close(p, q, **tol)
    assert len(opt.plan._layouts[None].buckets) == 4  # (cpu, f32), (cpu, f64), (cuda, f32), (cuda, bf16)


def test_no_host_sync_on_cuda_step():
    params = [torch.randn(100, device="cuda", requires_grad=True) for _ in range(4)]
    opt = tz.Modular(params, tz.m.Adam(), tz.m.LR(1e-3))
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
