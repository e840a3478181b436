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


@pytest.mark.parametrize("fused", [None, False])
def test_update_rms_on_cpu_and_cuda_without_a_host_sync(fused):
    # one group over cpu and cuda, float32 and bfloat16: one update_rms per segment, named by what differs,
    # each equal to the RMS of that segment's step over lr, and the step with update_rms makes no host sync
    params = _cpu_and_cuda()
    lr = 1.0  # a step as large as the parameters: bfloat16 parameters still hold it to ~0.4%
    opt = tz.Modular(params, tz.m.Adam(fused=fused), tz.m.LR(lr), update_rms=True)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    before = [p.detach().float().clone() for p in params]
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
        raw = opt.metrics(sync=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    m = opt.metrics()
    segments = {"cpu.float32": [0], "cpu.float64": [1], "cuda0.float32": [2], "cuda0.bfloat16": [3]}
    assert {k for k in raw if k.endswith("update_rms")} == {f"0/0.Adam.{t}/update_rms" for t in segments}
    for tag, idx in segments.items():
        moved = torch.cat([((before[i] - params[i].detach().float()) / lr).flatten().cpu() for i in idx])
        want = float(moved.square().mean().sqrt())
        # bfloat16 parameters keep 8 bits: the step read back from them is good to ~0.4% per element
        rel = 2e-2 if tag.endswith("bfloat16") else 1e-4
        assert m[f"0/0.Adam.{tag}/update_rms"] == pytest.approx(want, rel=rel), tag
